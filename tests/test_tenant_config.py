"""A repo's .github/cibot.yml is untrusted: bounded before parsing, and it may only narrow egress."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from policies.evidence import Evidence, FileChange
from policies.loading import (
    REPO_MAX_BYTES,
    REPO_MAX_DEPTH,
    REPO_MAX_PATTERNS,
    build_policy,
    default_policy_text,
    load_policy,
    merge_repo_config,
    parse_yaml,
    risky_regex,
)
from policies.routing import is_external, route

ROOT = Path(__file__).resolve().parents[1]
PLAIN = Evidence((FileChange("app/render.py", None, "modified", False, added=((3, "x = 1"),)),))
JWT = Evidence(
    (FileChange("app/login.py", None, "modified", False, added=((9, "jwt.decode(t, key)"),)),)
)


def only_error(text: str) -> str:
    """Merge text onto the default policy; return its one error, checking nothing merged."""
    policy = load_policy()
    result = merge_repo_config(policy, text)
    assert result.policy == policy, "a refused config must leave the operator's policy"
    (error,) = result.errors
    return str(error)


def test_a_deeply_nested_config_is_refused_before_the_composer_recurses() -> None:
    message = only_error("x: " + "[" * 5_000 + "]" * 5_000)
    assert f"nested more than {REPO_MAX_DEPTH} levels deep" in message
    assert message.startswith(".github/cibot.yml:")


def test_an_alias_bomb_counts_what_each_alias_copies() -> None:
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for name, prev in zip("bcdef", "abcde", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    message = only_error("\n".join(lines) + "\n")
    assert "aliases counted as what they copy" in message


def test_a_few_aliases_are_still_fine() -> None:
    text = "private_only: {labels: &l [hush]}\nreview: {auto: true}\nx_note: *l\n"
    result = merge_repo_config(load_policy(), text)
    assert [e.key for e in result.errors] == ["x_note"]  # the unknown key, not the alias
    assert "hush" in result.policy.private_only.labels


def test_a_megabyte_of_globs_is_refused_by_size() -> None:
    globs = "".join(f"      - 'src/m{i}/**'\n" for i in range(57_000))
    message = only_error("sensitive:\n  auth:\n    paths:\n" + globs)
    assert f"{REPO_MAX_BYTES:,}-byte limit" in message


def test_too_many_patterns_under_the_size_limit_are_refused() -> None:
    globs = ", ".join(f"'p{i}/**'" for i in range(REPO_MAX_PATTERNS + 1))
    message = only_error(f"sensitive: {{auth: {{paths: [{globs}]}}}}\n")
    assert f"over the limit of {REPO_MAX_PATTERNS}" in message


@pytest.mark.parametrize(
    "pattern",
    [r"((a+))+$", r"(a+)+", r"(?:(\w+\s?))*$", r"(a|aa)+b", r"(?=(x+)+)y", ".*a.*b.*c.*d.*e.*f.*g"],
)
def test_patterns_that_can_backtrack_badly_are_refused(pattern: str) -> None:
    assert risky_regex(pattern) is not None
    escaped = pattern.replace("\\", "\\\\")
    message = only_error(f'sensitive: {{auth: {{content: [{{pattern: "{escaped}"}}]}}}}\n')
    assert "sensitive.auth.content" in message


@pytest.mark.parametrize(
    "pattern",
    [r"\bjwt\.(encode|decode)\(", r"(?i)secret_key\s*=", r"[a-z]{2,8}\d+", r"(ab){1,3}c+"],
)
def test_ordinary_patterns_are_accepted(pattern: str) -> None:
    assert risky_regex(pattern) is None
    result = merge_repo_config(
        load_policy(), f"sensitive: {{auth: {{content: [{{pattern: '{pattern}'}}]}}}}"
    )
    assert result.errors == ()


def test_a_glob_with_too_many_wildcards_is_refused() -> None:
    message = only_error("sensitive: {auth: {paths: ['*a*a*a*a*a*a*a*a*a*a*a*a*b']}}\n")
    assert "wildcards" in message and "sensitive.auth.paths" in message


def test_a_repo_rule_matching_everything_escalates_only_within_private_tiers() -> None:
    policy = load_policy()
    merged = merge_repo_config(policy, "sensitive: {auth: {paths: ['**']}}").policy
    before, after = route("summary", PLAIN, policy), route("summary", PLAIN, merged)
    assert before.tier == "local" and not is_external(after.tier, merged)
    assert after.categories == ("auth",)  # still labelled, still reported
    assert "repo_rule" in [r["trigger"] for r in after.to_json()["reasons"]]
    for task in ("review", "tests", "ci", "deps"):  # never more external than the operator's
        assert route(task, PLAIN, merged).tier == route(task, PLAIN, policy).tier


def test_the_operators_own_rules_still_escalate_when_a_repo_adds_some() -> None:
    policy = load_policy()
    merged = merge_repo_config(policy, "sensitive: {auth: {paths: ['**']}}").policy
    assert route("summary", JWT, merged).tier == route("summary", JWT, policy).tier == "mid"


def test_an_operator_may_let_repo_rules_reach_external_tiers() -> None:
    data = parse_yaml(default_policy_text(), source="default")
    data.setdefault("behaviour", {})["repo_rules_reach_external"] = True
    policy = build_policy(data, source="operator")
    merged = merge_repo_config(policy, "sensitive: {auth: {paths: ['**']}}").policy
    assert route("summary", PLAIN, merged).tier == "mid"


def test_repo_packages_escalate_only_within_private_tiers_too() -> None:
    policy = load_policy()
    text = "dependencies: {packages: {pypi: {auth: [leftpad]}}}"
    merged = merge_repo_config(policy, text).policy
    bump = Evidence(
        (
            FileChange(
                "requirements.txt",
                None,
                "modified",
                False,
                added=((1, "leftpad==2.0.1"),),
                removed=((1, "leftpad==2.0.0"),),
            ),
        )
    )
    assert route("summary", bump, merged).tier == "local"


@pytest.mark.parametrize("lower", ["read", "triage"])
def test_a_repo_may_raise_the_command_permission_but_never_lower_it(lower: str) -> None:
    policy = load_policy()
    assert policy.behaviour.command_permission == "write"
    lowered = merge_repo_config(policy, f"commands: {{permission: {lower}}}").policy
    raised = merge_repo_config(policy, "commands: {permission: admin}").policy
    assert lowered.behaviour.command_permission == "write"
    assert raised.behaviour.command_permission == "admin"


def test_cibot_route_exits_2_with_one_line_for_a_hostile_config(tmp_path: Path) -> None:
    config = tmp_path / "cibot.yml"
    config.write_text("x: " + "[" * 5_000 + "]" * 5_000, encoding="utf-8")
    diff = ROOT / "tests" / "fixtures" / "diffs" / "plain.diff"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "route",
            "--diff",
            str(diff),
            "--task",
            "review",
            "--config",
            str(config),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.strip().splitlines()
    assert "nested more than" in line and "Traceback" not in result.stderr


def test_repo_content_patterns_run_under_a_time_budget_and_the_operators_do_not() -> None:
    """A repo's pattern searches with a timeout; the operator's keep the plain engine."""
    import re
    import time

    from policies import semantic

    policy = load_policy()
    repo_rule = "sensitive: {payments: {content: [{pattern: 'acme_ledger_\\w+'}]}}"
    merged = merge_repo_config(policy, repo_rule).policy
    engines = {d.pattern.pattern: d.pattern for d in semantic.rules(merged).detectors}
    assert isinstance(engines["acme_ledger_\\w+"], semantic.BudgetedPattern)
    operator_rules = [r.pattern for c in policy.sensitive.values() for r in c.content]
    assert all(isinstance(engines[p], re.Pattern) for p in operator_rules)
    # One that backtracks (the load check refuses it; the budget bounds what it misses).
    slow = semantic.BudgetedPattern(r"(a|aa)+$")
    started = time.monotonic()
    assert slow.search("a" * 40 + "b") is None and slow.tripped
    assert slow.search("aaaa") is None  # dropped for good
    assert time.monotonic() - started < 1.0
    assert semantic.BudgetedPattern(r"acme_\w+").search("x = acme_ledger") is not None
