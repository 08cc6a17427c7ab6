"""Test policy loading, operator overrides and the merge of a repo's `.github/cibot.yml`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.kernel.errors import ConfigError
from bot.kernel.settings import Settings
from policies.evidence import Evidence, FileChange
from policies.loading import (
    build_policy,
    default_policy_text,
    load_policy,
    merge_repo_config,
    parse_yaml,
)
from policies.model import CATEGORIES, TASKS, Policy
from policies.routing import route

CONFIG = Path(__file__).parent / "fixtures" / "config"


def default_data() -> dict[str, Any]:
    """Return the packaged policy as a fresh mapping to edit."""
    return parse_yaml(default_policy_text(), source="default")


def write(tmp_path: Path, data: Any, name: str = "policy.yml") -> Path:
    """Write data as YAML (or text as-is) and return the path."""
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data), encoding="utf-8")
    return path


def residency_policy() -> Policy:
    """Return the default policy with operator residency entries."""
    data = default_data()
    data["private_only"] = {
        "repos": ["acme/vault"],
        "paths": ["secret/**"],
        "labels": ["cibot:private-only"],
    }
    return build_policy(data, source="operator")


# ---- the operator policy --------------------------------------------------------------------


def test_default_policy_states_the_routing_table() -> None:
    policy = load_policy()
    assert {t: policy.tasks[t].tier for t in TASKS} == {  # type: ignore[index]
        "summary": "local",
        "review": "mid",
        "ci": "local",
        "tests": "local",
        "deps": "local",
        "refactor": "frontier",
        "incident": "frontier",
    }
    assert policy.tasks["incident"].human_review
    assert set(policy.sensitive) == set(CATEGORIES)
    assert policy.private_tiers() == ["local"]
    assert policy.best_private_tier() == "local"
    assert policy.tiers["local"].api_base == "http://127.0.0.1:8000/v1"
    assert "cibot:private-only" in policy.private_only.labels


def test_policy_file_on_disk_loads(tmp_path: Path) -> None:
    data = default_data()
    data["budgets"] = {"monthly_frontier_usd": 12.5}
    policy = load_policy(write(tmp_path, data))
    assert policy.budgets.monthly_frontier_usd == 12.5


def test_bad_policy_fixture_names_key_and_file() -> None:
    path = CONFIG / "bad-policy.yml"
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert caught.value.key == "tasks.review.tier"
    assert caught.value.source == str(path)
    assert str(caught.value).startswith(f"{path}: key 'tasks.review.tier': ")


def edit(path: str, value: Any) -> dict[str, Any]:
    """Return the default policy with one dotted key set (or deleted when value is ...)."""
    data = default_data()
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[part]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return data


@pytest.mark.parametrize(
    ("dotted", "value", "key", "words"),
    [
        ("tiers.mid.context_window", 10, "tiers.mid.context_window", "greater than or equal"),
        ("tiers.local.private", False, "(top level)", "tiers.local.private must be true"),
        ("tiers.local.rung", "3xH200", "(top level)", "unknown rung '3xH200'"),
        ("tiers.frontier", ..., "(top level)", "tiers.frontier is missing"),
        ("tasks.deps", ..., "(top level)", "tasks.deps is missing"),
        (
            "tasks.review.escalate",
            [{"trigger": "moon_phase", "to": "frontier"}],
            "tasks.review.escalate.0.trigger",
            "Input should be",
        ),
        ("tasks.summary.surprise", True, "tasks.summary.surprise", "Extra inputs"),
        ("budgets.monthly_frontier_usd", -1, "budgets.monthly_frontier_usd", "greater than"),
        ("history.acceptance_floor", 1.5, "history.acceptance_floor", "less than"),
        ("sensitive.auth.paths", ["ok/**", "a\\"], "sensitive.auth.paths", "'a\\\\'"),
        (
            "sensitive.crypto.content",
            [{"pattern": "(unclosed"}],
            "sensitive.crypto.content.0.pattern",
            "not a valid regex",
        ),
        ("private_only.paths", ["[z-a]"], "private_only.paths", "not a valid gitignore"),
        ("services", {"api": {"paths": ["api\\"]}}, "services.api.paths", "not a valid gitignore"),
        ("behaviour.command_permission", "root", "behaviour.command_permission", "Input should be"),
    ],
)
def test_policy_errors_name_key_and_file(
    tmp_path: Path, dotted: str, value: Any, key: str, words: str
) -> None:
    path = write(tmp_path, edit(dotted, value))
    with pytest.raises(ConfigError) as caught:
        load_policy(path)
    assert caught.value.key == key
    assert str(caught.value).startswith(f"{path}: key '{key}'")
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_content_patterns_may_share_group_names(tmp_path: Path) -> None:
    """Each content rule runs on its own, so two rules may name their groups alike."""
    data = default_data()
    data["sensitive"]["auth"]["content"] = [
        {"pattern": "(?P<word>enrol_user)"},
        {"pattern": "(?P<word>offboard_user)"},
    ]
    policy = load_policy(write(tmp_path, data))
    for line in ("enrol_user(x)", "offboard_user(x)"):
        change = FileChange("src/app/x.py", None, "modified", False, added=((1, line),))
        assert route("review", Evidence((change,)), policy).categories == ("auth",)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("tiers: [unclosed\n", "not valid YAML at line 2"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("!!python/object/apply:os.system ['true']\n", "not valid YAML"),
        ("", "tiers"),
    ],
)
def test_malformed_policy_text(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=words) as caught:
        load_policy(path)
    assert str(path) in str(caught.value)


def test_unreadable_policy_says_which_variable_to_fix(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yml"
    with pytest.raises(ConfigError, match="cannot read the policy") as caught:
        load_policy(missing)
    assert caught.value.key == "CIBOT_POLICY"
    with pytest.raises(ConfigError, match="cannot read the policy"):
        load_policy(tmp_path)  # a directory


# ---- CIBOT_* overrides ----------------------------------------------------------------------


def test_tier_overrides_from_the_environment_go_first() -> None:
    settings = Settings.from_env(
        {
            "CIBOT_FRONTIER_MODEL": "openai/gpt-5.5",
            "CIBOT_FRONTIER_API_BASE": "http://127.0.0.1:9999/v1",
            "CIBOT_MID_MODEL": "openai/my-gateway-model",
            "CIBOT_LOCAL_API_BASE": "http://10.0.0.5:8000/v1",
        }
    )
    policy = load_policy(overrides=settings.tier_overrides)
    assert policy.tiers["frontier"].models == ("openai/gpt-5.5", "anthropic/claude-opus-4-7")
    assert policy.tiers["frontier"].api_base == "http://127.0.0.1:9999/v1"
    assert policy.tiers["mid"].models[0] == "openai/my-gateway-model"
    assert len(policy.tiers["mid"].models) == 3
    assert policy.tiers["local"].api_base == "http://10.0.0.5:8000/v1"
    assert policy.tiers["local"].private  # overrides never change privacy


def test_local_model_override_and_no_overrides_change_nothing() -> None:
    plain = load_policy()
    assert load_policy(overrides=Settings.from_env({}).tier_overrides) == plain
    settings = Settings.from_env({"CIBOT_LOCAL_MODEL": "hosted_vllm/Qwen/Qwen3-235B"})
    assert load_policy(overrides=settings.tier_overrides).tiers["local"].models == (
        "hosted_vllm/Qwen/Qwen3-235B",
        "hosted_vllm/openai/gpt-oss-120b",
    )


def test_override_for_a_tier_the_policy_lacks_is_ignored_not_invented() -> None:
    class Override:
        model = "x/y"
        api_base = "http://127.0.0.1:1/v1"

    policy = load_policy(overrides={"shadow": Override()})
    assert set(policy.tiers) == {"local", "mid", "frontier"}


# ---- .github/cibot.yml ----------------------------------------------------------------------


def test_malformed_repo_config_is_reported_and_the_policy_stays() -> None:
    policy = residency_policy()
    result = merge_repo_config(policy, (CONFIG / "malformed.yml").read_text(), repo="acme/x")
    assert result.policy is policy
    (error,) = result.errors
    assert (
        str(error)
        == ".github/cibot.yml: not valid YAML at line 6: fix the syntax or remove the file"
    )


@pytest.mark.parametrize("text", [None, "", "  \n", "# only a comment\n", "null\n"])
def test_empty_repo_config_changes_nothing(text: str | None) -> None:
    policy = load_policy()
    result = merge_repo_config(policy, text)
    assert result.policy == policy and result.errors == ()


def test_evil_repo_config_cannot_weaken_residency_or_move_tiers() -> None:
    policy = residency_policy()
    result = merge_repo_config(policy, (CONFIG / "evil.yml").read_text(), repo="acme/vault")
    merged = result.policy
    assert {e.key for e in result.errors} == {
        "tiers",
        "rungs",
        "budgets",
        "history",
        "version",
        "tasks.review.tier",
        "Private_Only",
    }
    assert all(
        str(e).startswith(".github/cibot.yml: key '") or "unknown key" in str(e)
        for e in result.errors
    )
    assert merged.tiers == policy.tiers
    assert merged.rungs == policy.rungs
    assert merged.budgets == policy.budgets
    assert merged.history == policy.history
    assert merged.tasks["review"].tier == "mid"
    assert merged.private_only.repos == policy.private_only.repos
    assert set(policy.private_only.paths) <= set(merged.private_only.paths)
    assert merged.private_only.labels == policy.private_only.labels
    # Routing under the merged policy still pins every residency hit, and auth still counts.
    for evidence in [
        Evidence((), repo="acme/vault"),
        Evidence((FileChange("secret/plan.md", None, "modified", False),)),
        Evidence((), labels=frozenset({"cibot:private-only"})),
    ]:
        decision = route("refactor", evidence, merged)
        assert (decision.tier, decision.private_only, decision.human_review) == (
            "local",
            True,
            True,
        )
    edit = ((1, "if not user.active: raise Denied"),)
    auth = Evidence((FileChange("src/auth/session.py", None, "modified", False, added=edit),))
    assert route("review", auth, merged).categories == ("auth",)


def test_good_repo_config_applies_every_allowed_key() -> None:
    policy = residency_policy()
    result = merge_repo_config(policy, (CONFIG / "good.yml").read_text(), repo="acme/shop")
    assert result.errors == ()
    merged = result.policy
    assert merged.private_only.paths == ("secret/**",)  # the repo repeats the operator's glob
    assert merged.private_only.labels == ("cibot:private-only", "no-cloud")
    assert (merged.review.auto, merged.review.min_severity, merged.review.max_findings) == (
        True,
        "major",
        3,
    )
    assert (merged.behaviour.skip_drafts, merged.behaviour.skip_bots) == (False, False)
    assert merged.behaviour.command_permission == "maintain"
    assert merged.behaviour.coverage_target == 0.9
    assert merged.budgets.monthly_frontier_usd == 50
    assert not merged.tasks["incident"].enabled
    assert merged.sensitive["payments"].paths[-1] == "**/ledger/**"
    assert merged.sensitive["payments"].content[-1].pattern == r"\bpostings?\.(create|reverse)\b"
    assert set(merged.sensitive["auth"].paths) == set(policy.sensitive["auth"].paths)
    assert set(merged.services) == {"api", "web"}
    edit = ((1, "entry.post(journal)"),)
    ledger = Evidence((FileChange("core/ledger/post.py", None, "modified", False, added=edit),))
    assert route("review", ledger, merged).categories == ("payments",)


def test_repo_budget_can_lower_but_never_raise() -> None:
    policy = load_policy()
    lower = merge_repo_config(policy, "budget: {monthly_frontier_usd: 10}")
    higher = merge_repo_config(policy, "budget: {monthly_frontier_usd: 100000}")
    assert lower.policy.budgets.monthly_frontier_usd == 10
    assert higher.policy.budgets.monthly_frontier_usd == policy.budgets.monthly_frontier_usd


@pytest.mark.parametrize("repo", ["acme/widgets", ""])
def test_repo_can_pin_itself_private_even_without_a_name(repo: str) -> None:
    result = merge_repo_config(load_policy(), "private_only: {repo: true}", repo=repo)
    assert result.errors == ()
    decision = route("review", Evidence((), repo=repo), result.policy)
    assert (decision.tier, decision.private_only, decision.human_review) == ("local", True, True)


def test_a_bad_key_is_skipped_and_the_good_keys_still_merge() -> None:
    text = "private_only: {labels: [hush]}\nreview: {max_findings: 500}\nskip: {drafts: maybe}\n"
    result = merge_repo_config(load_policy(), text)
    assert [e.key for e in result.errors] == ["review.max_findings", "skip.drafts"]
    assert "hush" in result.policy.private_only.labels
    assert result.policy.review.max_findings == 8


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (
            "sensitive: {auth: {content: [{pattern: '(a+)+$'}]}}",
            "sensitive.auth.content",
            "nested quantifiers",
        ),
        (
            "sensitive: {auth: {content: [{pattern: '(\\w+\\s?)+$'}]}}",
            "sensitive.auth.content",
            "nested quantifiers",
        ),
        (
            "sensitive: {auth: {content: [{pattern: '(unclosed'}]}}",
            "sensitive.auth.content",
            "not a valid regex",
        ),
        (
            "sensitive: {auth: {content: [{pattern: 'x', paths: ['a\\']}]}}",
            "sensitive.auth.content.0.paths",
            "not a valid gitignore",
        ),
        ("sensitive: {auth: {paths: ['[z-a]']}}", "sensitive.auth.paths", "not a valid gitignore"),
        ("sensitive: {lasers: {paths: ['x/**']}}", "sensitive.lasers", "Input should be"),
        ("private_only: {paths: ['ok/**', 'x\\']}", "private_only.paths", "not a valid gitignore"),
        ("private_only: null", "private_only", "valid dictionary"),
        ("services: {api: {paths: ['a\\']}}", "services.api.paths", "not a valid gitignore"),
        ("tasks: {moonshot: {enabled: false}}", "tasks.moonshot", "Input should be"),
        ("tests: {coverage_target: 2}", "tests.coverage_target", "less than or equal"),
    ],
)
def test_repo_key_errors_name_the_key(text: str, key: str, words: str) -> None:
    policy = load_policy()
    result = merge_repo_config(policy, text, source="acme/.github/cibot.yml")
    (error,) = result.errors
    assert error.key.startswith(key)
    assert error.source == "acme/.github/cibot.yml"
    assert words in str(error)
    assert result.policy == policy


def test_repo_patterns_that_do_not_compile_fall_back_to_the_policy() -> None:
    text = "sensitive:\n  auth:\n    content:\n      - pattern: '(unclosed'\n"
    policy = load_policy()
    result = merge_repo_config(policy, text)
    assert result.policy.sensitive == policy.sensitive
    assert [e.key for e in result.errors] == ["sensitive.auth.content"]


def test_a_repo_cannot_unset_operator_residency_with_negated_globs() -> None:
    policy = residency_policy()
    result = merge_repo_config(policy, "private_only: {paths: ['!secret/**', '!**']}")
    assert result.errors == ()
    evidence = Evidence((FileChange("secret/a.txt", None, "modified", False),))
    assert route("review", evidence, result.policy).private_only
