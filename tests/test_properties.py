"""Property tests: data residency holds for any evidence, overrides and repo config."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bot.kernel.errors import InputError
from bot.kernel.settings import TierOverride
from policies import deps
from policies.evidence import CiFacts, Evidence, FileChange, parse_diff
from policies.evidence import TestFacts as RunFacts
from policies.loading import (
    build_policy,
    default_policy_text,
    load_policy,
    merge_repo_config,
    parse_yaml,
)
from policies.model import TASKS, TIER_ORDER, Policy, Residency
from policies.routing import route

RESIDENCY = {
    "repos": ["acme/vault-*"],
    "paths": ["secret/**", "**/*.sealed"],
    "labels": ["cibot:private-only"],
}


def variant(name: str) -> Policy:
    """Build one of the operator policies the properties run under."""
    data = parse_yaml(default_policy_text(), source="default")
    data["private_only"] = RESIDENCY
    data["services"] = {"api": {"paths": ["backend/api/**"]}, "web": {"paths": ["frontend/**"]}}
    if name == "mid-private":
        data["tiers"]["mid"] = {
            "models": ["hosted_vllm/Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"],
            "private": True,
            "api_base": "http://10.0.0.7:8000/v1",
            "rung": "2xH200",
        }
    if name == "gateway":
        # Operator overrides point the API tiers at a company gateway; they stay external.
        data["tiers"]["mid"]["api_base"] = "http://127.0.0.1:4000/v1"
        data["tiers"]["frontier"]["models"] = ["openai/gpt-5.5"]
    if name == "tiny-windows":
        for tier in ("local", "mid", "frontier"):
            data["tiers"][tier]["context_window"] = 4096
    return build_policy(data, source=name)


POLICIES = {name: variant(name) for name in ("default", "mid-private", "gateway", "tiny-windows")}

SENSITIVE_PATHS = [
    "src/auth/session.py",
    "app/login.py",
    "pkg/crypto/box.go",
    "certs/server.pem",
    "src/billing/plans.py",
    "shop/checkout/cart.ts",
    "Dockerfile",
    "infra/main.tf",
    ".github/workflows/ci.yml",
    "k8s/deploy.yaml",
]
ORDINARY_PATHS = [
    "src/app/author.py",
    "src/nlp/tokenizer.py",
    "README.md",
    "backend/api/views.py",
    "frontend/src/App.tsx",
    "requirements.txt",
    "package.json",
    "docs/guide.md",
]
RESIDENT_PATHS = ["secret/roadmap.md", "data/customers.sealed"]
LINES = [
    "x = 1",
    "hashed = bcrypt.hashpw(pw, salt)",
    "claims = jwt.decode(raw, key)",
    "cipher = AES.new(key, AES.MODE_GCM)",
    "stripe.Charge.create(amount=100)",
    'resource "aws_iam_role" "r" {',
    "django==5.0.1",
    "django==4.2.1",
    "tokens = tokenizer.encode(text)",
    "",
]

paths = st.one_of(
    st.sampled_from(SENSITIVE_PATHS + ORDINARY_PATHS),
    st.from_regex(r"[a-z]{1,8}(/[a-z_]{1,8}){0,3}\.(py|go|ts|md|yml|tf)", fullmatch=True),
)
lines = st.lists(
    st.tuples(st.integers(1, 500), st.one_of(st.sampled_from(LINES), st.text(max_size=40))),
    max_size=4,
).map(tuple)


@st.composite
def file_changes(draw: st.DrawFn, path: st.SearchStrategy[str] = paths) -> FileChange:
    """Draw one file change of any status."""
    status = draw(st.sampled_from(["added", "modified", "deleted", "renamed"]))
    return FileChange(
        path=draw(path),
        old_path=draw(paths) if status == "renamed" else None,
        status=status,
        binary=draw(st.booleans()),
        added=draw(lines),
        removed=draw(lines),
        hunks=draw(st.integers(0, 3)),
    )


tiers_or_junk = st.sampled_from([None, *TIER_ORDER, "warp", ""])
ci_facts = st.none() | st.builds(
    CiFacts,
    failed_jobs=st.lists(st.sampled_from(["test-api", "test-web", "lint"]), max_size=3).map(tuple),
    failed_paths=st.lists(
        st.sampled_from(["backend/api/a.py", "frontend/b.ts", "services/pay/x.py", "README.md"]),
        max_size=3,
    ).map(tuple),
)
test_facts = st.none() | st.builds(
    RunFacts,
    failed_rounds=st.integers(0, 4),
    coverage=st.none() | st.floats(0, 1),
)


@st.composite
def evidence(draw: st.DrawFn) -> Evidence:
    """Draw evidence of every kind the router reads."""
    return Evidence(
        files=tuple(draw(st.lists(file_changes(), max_size=6))),
        repo=draw(st.sampled_from(["", "acme/app", "acme/vault-prod", "other/thing"])),
        labels=frozenset(
            draw(st.lists(st.sampled_from(["bug", "deps", "needs-review"]), max_size=2))
        ),
        ci=draw(ci_facts),
        tests=draw(test_facts),
        removed_symbols=tuple(
            draw(st.lists(st.sampled_from(["six.moves", "np.float"]), max_size=2))
        ),
        packed_tokens=draw(st.integers(0, 400_000)),
        acceptance={
            task: (draw(st.integers(0, 50)), draw(st.integers(50, 100)))
            for task in draw(st.lists(st.sampled_from(TASKS), max_size=3, unique=True))
        },
        frontier_spend_usd=draw(st.sampled_from([0.0, 10.0, 499.99, 500.0, 1e6])),
        force_tier=draw(tiers_or_junk),
    )


@st.composite
def residency_hit(draw: st.DrawFn, base: Evidence) -> Evidence:
    """Add one operator residency hit (label, repo or path) to the evidence."""
    kind = draw(st.sampled_from(["label", "repo", "path"]))
    if kind == "label":
        label = draw(st.sampled_from(["cibot:private-only", "CIBOT:Private-Only"]))
        return Evidence(**{**base.__dict__, "labels": base.labels | {label}})
    if kind == "repo":
        return Evidence(
            **{
                **base.__dict__,
                "repo": draw(st.sampled_from(["acme/vault-prod", "Acme/Vault-Dev"])),
            }
        )
    resident = draw(file_changes(st.sampled_from(RESIDENT_PATHS)))
    return Evidence(**{**base.__dict__, "files": (*base.files, resident)})


EVIL_KEYS: dict[str, st.SearchStrategy[Any]] = {
    "private_only": st.fixed_dictionaries(
        {},
        optional={
            "repo": st.booleans(),
            "paths": st.lists(
                st.sampled_from(["!**", "!secret/**", "public/**", "**"]), max_size=2
            ),
            "labels": st.lists(st.sampled_from(["", "x", "cibot:private-only"]), max_size=2),
        },
    )
    | st.sampled_from([None, False, [], "off"]),
    "tiers": st.just(
        {
            "local": {
                "models": ["openai/gpt-5.5"],
                "private": True,
                "api_base": "https://x.example/v1",
            },
            "mid": {"private": True},
            "frontier": {"private": True},
        }
    ),
    "budgets": st.just({"monthly_frontier_usd": 1e9}),
    "budget": st.fixed_dictionaries({"monthly_frontier_usd": st.sampled_from([0, 5, 1e9])}),
    "history": st.just({"acceptance_floor": 0.0}),
    "rungs": st.just({}),
    "version": st.integers(),
    "tasks": st.dictionaries(
        st.sampled_from([*TASKS, "moon"]),
        st.fixed_dictionaries(
            {}, optional={"enabled": st.booleans(), "tier": st.sampled_from(TIER_ORDER)}
        ),
        max_size=3,
    ),
    "sensitive": st.dictionaries(
        st.sampled_from(["auth", "infra", "lasers"]),
        st.fixed_dictionaries(
            {}, optional={"paths": st.lists(st.sampled_from(["!**", "x/**", "a\\"]), max_size=2)}
        ),
        max_size=2,
    ),
    "tests": st.fixed_dictionaries({"coverage_target": st.floats(0, 1)}),
    "review": st.fixed_dictionaries({}, optional={"auto": st.booleans()}),
    "services": st.just({"api": {"paths": ["**"]}}),
    "Private_Only": st.just({"repo": False}),
}


@st.composite
def repo_configs(draw: st.DrawFn) -> str | None:
    """Draw a .github/cibot.yml text, friendly or hostile, or none at all."""
    if draw(st.integers(0, 9)) == 0:
        return None
    keys = draw(st.lists(st.sampled_from(sorted(EVIL_KEYS)), unique=True, max_size=6))
    return yaml.safe_dump({key: draw(EVIL_KEYS[key]) for key in keys})


def external(tier: str, policy: Policy) -> bool:
    """Tell whether a tier leaves the private hardware."""
    return tier != "human" and not policy.tiers[tier].private


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(POLICIES)),
    task=st.sampled_from(TASKS),
    base=evidence(),
    config=repo_configs(),
    data=st.data(),
)
def test_private_only_never_yields_an_external_tier(
    name: str, task: str, base: Evidence, config: str | None, data: st.DataObject
) -> None:
    policy = merge_repo_config(POLICIES[name], config, repo=base.repo or "acme/app").policy
    assert set(POLICIES[name].private_only.labels) <= set(policy.private_only.labels)
    assert policy.tiers == POLICIES[name].tiers
    pinned = data.draw(residency_hit(base))
    decision = route(task, pinned, policy)
    assert decision.private_only
    assert not external(decision.tier, policy), decision
    assert decision.tier == "human" or policy.tiers[decision.tier].private
    assert not decision.external
    unpinned = route(task, pinned, policy.model_copy(update={"private_only": Residency()}))
    if unpinned.external:
        assert decision.human_review
        assert decision.tier == policy.best_private_tier()
        assert decision.reasons[-1].trigger == "human_review"


@settings(max_examples=100, deadline=None)
@given(name=st.sampled_from(sorted(POLICIES)), task=st.sampled_from(TASKS), base=evidence())
def test_best_private_tier_of_each_variant(name: str, task: str, base: Evidence) -> None:
    policy = POLICIES[name]
    pinned = Evidence(**{**base.__dict__, "labels": base.labels | {"cibot:private-only"}})
    decision = route(task, pinned, policy)
    expected_best = "mid" if name == "mid-private" else "local"
    assert policy.best_private_tier() == expected_best
    assert decision.tier in {*policy.private_tiers(), "human"}


@settings(max_examples=50, deadline=None)
@given(
    task=st.sampled_from(TASKS),
    base=evidence(),
    local=st.sampled_from([None, "hosted_vllm/other", "openai/gpt-5.5"]),
    api_base=st.sampled_from([None, "https://api.example.com/v1", "http://127.0.0.1:1/v1"]),
)
def test_operator_overrides_never_change_privacy(
    task: str, base: Evidence, local: str | None, api_base: str | None
) -> None:
    override = TierOverride(model=local, api_base=api_base)
    policy = load_policy(overrides={"local": override, "mid": override, "frontier": override})
    assert [policy.tiers[t].private for t in ("local", "mid", "frontier")] == [True, False, False]
    pinned = Evidence(**{**base.__dict__, "labels": base.labels | {"cibot:private-only"}})
    assert route(task, pinned, policy).tier in {"local", "human"}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_parse_diff_raises_only_input_error(data: bytes) -> None:
    try:
        files = parse_diff(data)
    except InputError:
        return
    assert files and all(isinstance(f, FileChange) for f in files)


@settings(max_examples=300, deadline=None)
@given(
    a=st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
    b=st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
)
def test_classify_is_consistent(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    old, new = ".".join(map(str, a)), ".".join(map(str, b))
    kind = deps.classify(old, new)
    assert (kind == "downgrade") == (b < a)
    assert (kind == "other") == (a == b)
    if kind in {"major", "minor", "patch"}:
        assert deps.classify(new, old) == "downgrade"
    if a[0] != b[0] and b > a:
        assert kind == "major"
    assume(a[0] > 0)
    if a[0] == b[0] and a[1] < b[1]:
        assert kind == "minor"
