"""Test the router: the routing table, every escalation rule, residency, budget and history."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.kernel.errors import InputError
from policies.evidence import CiFacts, Evidence, FileChange
from policies.evidence import TestFacts as RunFacts
from policies.loading import build_policy, default_policy_text, parse_yaml
from policies.model import TASKS, Policy
from policies.routing import MAX_REASONS_PER_TRIGGER, Decision, cap, route, route_many


def policy_with(**changes: Any) -> Policy:
    """Return the default policy with top-level keys replaced."""
    data = parse_yaml(default_policy_text(), source="default")
    data.update(changes)
    return build_policy(data, source="test")


POLICY = policy_with(
    private_only={
        "repos": ["acme/vault"],
        "paths": ["secret/**"],
        "labels": ["cibot:private-only"],
    },
    services={"api": {"paths": ["backend/api/**"]}, "web": {"paths": ["frontend/**"]}},
)


def mid_private_policy() -> Policy:
    """Return a policy whose mid tier is Qwen3-235B on the 2xH200 rung, so mid is private."""
    data = parse_yaml(default_policy_text(), source="default")
    data["tiers"]["mid"] = {
        "models": ["hosted_vllm/Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"],
        "private": True,
        "api_base": "http://10.0.0.7:8000/v1",
        "rung": "2xH200",
    }
    data["private_only"] = {"labels": ["cibot:private-only"]}
    return build_policy(data, source="mid-private")


def change(path: str, *added: str) -> FileChange:
    """Build a modified-file change adding these lines."""
    return FileChange(path, None, "modified", False, added=tuple(enumerate(added, 1)), hunks=1)


PLAIN = change("src/app/format.py", "def money(value):", "    return f'{value:.2f}'")
AUTH = change("src/auth/session.py", "SESSION_TTL = 3600")
PRIVATE = frozenset({"cibot:private-only"})


def ev(*files: FileChange, **facts: Any) -> Evidence:
    """Build evidence from changes (default: one ordinary change) and facts."""
    return Evidence(files=files or (PLAIN,), **facts)


def triggers(decision: Decision) -> list[str]:
    """Return the decision's reason triggers in order."""
    return [r.trigger for r in decision.reasons]


# ---- the routing table ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("task", "tier"),
    [
        ("summary", "local"),
        ("review", "mid"),
        ("ci", "local"),
        ("tests", "local"),
        ("deps", "local"),
        ("refactor", "frontier"),
        ("incident", "frontier"),
    ],
)
def test_default_tier_for_ordinary_work(task: str, tier: str) -> None:
    decision = route(task, ev(), POLICY)
    assert decision.tier == tier
    assert decision.model == POLICY.tiers[tier].models[0]
    assert decision.categories == () and not decision.private_only
    if tier == "local":
        assert decision.reasons == ()
    else:
        assert triggers(decision)[0] == "task_default"


def test_refactor_goes_to_frontier_always() -> None:
    decision = route("refactor", ev(), POLICY)
    assert (decision.tier, decision.external, decision.human_review) == ("frontier", True, False)
    assert decision.reasons[0].evidence == "refactor runs on frontier by policy"


def test_incident_goes_to_frontier_plus_human() -> None:
    decision = route("incident", ev(), POLICY)
    assert (decision.tier, decision.human_review) == ("frontier", True)
    assert triggers(decision) == ["task_default", "human_review"]
    assert decision.reasons[1].evidence == "incident always gets a human reviewer"


@pytest.mark.parametrize(
    ("category", "file"),
    [
        ("auth", change("src/auth/session.py", "x = 1")),
        ("auth", change("src/app/views.py", "token = jwt.encode(claims, key)")),
        ("crypto", change("pkg/crypto/box.go", "x := 1")),
        ("crypto", change("src/app/sign.py", "sig = hmac.new(key, msg, 'sha256')")),
        ("payments", change("src/billing/plans.py", "x = 1")),
        ("payments", change("src/app/shop.py", "stripe.Refund.create(charge=c)")),
        ("infra", change("infra/main.tf", "x = 1")),
        ("infra", change("ops/app.yaml", "kind: Deployment")),
    ],
)
def test_review_of_sensitive_change_goes_to_frontier(category: str, file: FileChange) -> None:
    decision = route("review", ev(file), POLICY)
    assert decision.tier == "frontier"
    assert decision.categories == (category,)
    assert triggers(decision)[0] == "task_default"
    assert triggers(decision)[1] in {"sensitive_path", "sensitive_content"}


def test_review_of_ordinary_change_stays_mid() -> None:
    decision = route("review", ev(PLAIN, change("src/app/author.py", "x = 1")), POLICY)
    assert decision.tier == "mid" and decision.categories == ()


def test_summary_of_sensitive_change_goes_above_local() -> None:
    decision = route("summary", ev(PLAIN, AUTH), POLICY)
    assert decision.tier == "mid"
    assert decision.reasons[0].evidence == "src/auth/session.py matches '**/auth/**'"


def test_categories_are_sorted_and_complete() -> None:
    files = (
        change("infra/main.tf", "x"),
        change("src/auth/a.py", "x"),
        change("src/billing/b.py", "x"),
        change("src/crypto/c.py", "x"),
    )
    assert route("summary", ev(*files), POLICY).categories == (
        "auth",
        "crypto",
        "infra",
        "payments",
    )


@pytest.mark.parametrize(
    ("ci", "tier"),
    [
        (CiFacts(failed_paths=("backend/api/a.py", "frontend/b.ts")), "frontier"),
        (CiFacts(failed_paths=("services/pay/a.py", "services/ship/b.py")), "frontier"),
        (CiFacts(failed_paths=("backend/api/a.py", "backend/api/b.py")), "local"),
        (CiFacts(failed_jobs=("lint",)), "local"),
        (None, "local"),
    ],
)
def test_ci_with_two_or_more_failing_services_goes_above_local(
    ci: CiFacts | None, tier: str
) -> None:
    decision = route("ci", ev(ci=ci), POLICY)
    assert decision.tier == tier
    if tier != "local":
        assert set(triggers(decision)) == {"multi_service_failure"}


def bump(old: str, new: str) -> FileChange:
    """Return a requirements.txt change from old to new django."""
    return FileChange(
        "requirements.txt",
        None,
        "modified",
        False,
        added=((1, f"django=={new}"),),
        removed=((1, f"django=={old}"),),
        hunks=1,
    )


@pytest.mark.parametrize(
    ("evidence", "tier", "trigger"),
    [
        (ev(bump("4.2.1", "5.0.1")), "frontier", "major_version_bump"),
        (ev(bump("4.2.1", "4.3.0")), "local", None),
        (ev(bump("4.2.1", "4.2.2")), "local", None),
        (ev(PLAIN, removed_symbols=("django.utils.six",)), "frontier", "removed_api"),
    ],
)
def test_deps_with_major_bump_or_removed_api_goes_above_local(
    evidence: Evidence, tier: str, trigger: str | None
) -> None:
    decision = route("deps", evidence, POLICY)
    assert decision.tier == tier
    assert triggers(decision) == ([trigger] if trigger else [])


@pytest.mark.parametrize(
    ("facts", "tier", "fired"),
    [
        (RunFacts(failed_rounds=2), "frontier", ["tests_failed_twice"]),
        (RunFacts(failed_rounds=3, coverage=0.95), "frontier", ["tests_failed_twice"]),
        (RunFacts(failed_rounds=1), "local", []),
        (RunFacts(coverage=0.5), "mid", ["coverage_below_target"]),
        (RunFacts(coverage=0.7), "local", []),
        (
            RunFacts(failed_rounds=2, coverage=0.1),
            "frontier",
            ["tests_failed_twice", "coverage_below_target"],
        ),
        (None, "local", []),
    ],
)
def test_tests_failing_twice_or_under_coverage_go_above_local(
    facts: RunFacts | None, tier: str, fired: list[str]
) -> None:
    decision = route("tests", ev(tests=facts), POLICY)
    assert decision.tier == tier
    assert triggers(decision) == fired


def test_triggers_only_fire_for_the_tasks_that_list_them() -> None:
    evidence = ev(
        bump("1.0", "2.0"),
        ci=CiFacts(failed_paths=("backend/api/a.py", "frontend/b.ts")),
        tests=RunFacts(failed_rounds=5, coverage=0.0),
    )
    assert route("summary", evidence, POLICY).tier == "local"
    assert route("review", evidence, POLICY).tier == "mid"


# ---- context window ---------------------------------------------------------------------------


def fits(policy: Policy, tier: str, task: str) -> int:
    """Return the largest packed size that still fits the tier for this task."""
    reserve = policy.behaviour.context_reserve_tokens
    return policy.tiers[tier].context_window - reserve - policy.tasks[task].expected_output_tokens  # type: ignore[index]


def test_work_that_fits_exactly_stays_local() -> None:
    edge = fits(POLICY, "local", "summary")
    assert route("summary", ev(packed_tokens=edge), POLICY).tier == "local"


def test_work_too_large_for_local_goes_to_the_next_tier() -> None:
    size = fits(POLICY, "local", "summary") + 1
    decision = route("summary", ev(packed_tokens=size), POLICY)
    assert decision.tier == "mid"
    (reason,) = decision.reasons
    assert reason.trigger == "context_too_large"
    assert reason.evidence == (
        f"about {size} tokens after packing exceed local's 131072-token window"
    )


def test_work_too_large_for_every_tier_says_it_is_chunked() -> None:
    decision = route("review", ev(packed_tokens=10_000_000), POLICY)
    assert decision.tier == "mid"
    assert decision.reasons[-1].trigger == "context_too_large"
    assert "fit no tier" in decision.reasons[-1].evidence


def test_too_large_private_work_stays_private() -> None:
    size = fits(POLICY, "local", "summary") + 1
    decision = route("summary", ev(packed_tokens=size, labels=PRIVATE), POLICY)
    assert decision.tier == "local" and decision.human_review
    assert triggers(decision) == ["context_too_large", "private_only", "human_review"]


# ---- data residency -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "facts",
    [
        {"labels": PRIVATE},
        {"repo": "acme/vault"},
        {"repo": "ACME/Vault"},
    ],
)
@pytest.mark.parametrize("task", ["review", "refactor", "incident"])
def test_private_only_never_yields_an_external_tier(task: str, facts: dict[str, Any]) -> None:
    decision = route(task, ev(AUTH, **facts), POLICY)
    assert decision.tier == "local" and not decision.external
    assert decision.private_only and decision.human_review
    reason = decision.reasons[-1]
    assert reason.trigger == "human_review"
    assert reason.evidence.startswith("private_only data would have gone to ")
    assert "private_only" in triggers(decision)


def test_private_only_path_pins_the_whole_change() -> None:
    decision = route("review", ev(PLAIN, change("secret/roadmap.md", "q3 plan")), POLICY)
    assert decision.tier == "local" and decision.private_only
    assert "secret/roadmap.md matches private_only path 'secret/**'" in [
        r.evidence for r in decision.reasons
    ]


def test_private_only_on_local_work_needs_no_human() -> None:
    decision = route("summary", ev(labels=PRIVATE), POLICY)
    assert (decision.tier, decision.private_only, decision.human_review) == ("local", True, False)
    assert triggers(decision) == ["private_only"]


def test_mid_private_policy_keeps_work_on_mid() -> None:
    policy = mid_private_policy()
    assert policy.private_tiers() == ["local", "mid"]
    assert policy.best_private_tier() == "mid"
    review = route("review", ev(AUTH, labels=PRIVATE), policy)
    assert review.tier == "mid" and review.human_review and not review.external
    assert review.model == "hosted_vllm/Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"
    plain_review = route("review", ev(labels=PRIVATE), policy)
    assert (plain_review.tier, plain_review.human_review) == ("mid", False)


# ---- budget, history, explicit requests --------------------------------------------------------


def test_budget_exhausted_keeps_work_private() -> None:
    budget = POLICY.budgets.monthly_frontier_usd
    decision = route("review", ev(AUTH, frontier_spend_usd=budget), POLICY)
    assert decision.tier == "local" and not decision.external
    assert decision.reasons[-1].trigger == "budget_exhausted"
    assert decision.reasons[-1].evidence == (
        "frontier spend $500.00 has reached this month's $500.00 budget; staying on local"
    )
    under = route("review", ev(AUTH, frontier_spend_usd=budget - 0.01), POLICY)
    assert under.tier == "frontier"


def test_budget_exhausted_does_not_touch_private_work() -> None:
    decision = route("summary", ev(frontier_spend_usd=10_000), POLICY)
    assert decision.tier == "local" and decision.reasons == ()


def test_budget_exhausted_on_mid_private_policy_stays_on_mid() -> None:
    decision = route("refactor", ev(frontier_spend_usd=10_000), mid_private_policy())
    assert decision.tier == "mid"
    assert "budget_exhausted" in triggers(decision)


def test_residency_wins_over_budget() -> None:
    decision = route("refactor", ev(labels=PRIVATE, frontier_spend_usd=10_000), POLICY)
    assert decision.tier == "local"
    assert "budget_exhausted" not in triggers(decision)
    assert triggers(decision)[-1] == "human_review"


@pytest.mark.parametrize(
    ("acceptance", "tier"),
    [
        ({"summary": (5, 30)}, "mid"),
        ({"summary": (9, 20)}, "mid"),
        ({"summary": (10, 20)}, "local"),  # exactly at the floor
        ({"summary": (0, 19)}, "local"),  # too few samples
        ({"review": (0, 100)}, "local"),  # another task's history
        ({}, "local"),
    ],
)
def test_low_acceptance_history_routes_up(
    acceptance: dict[str, tuple[int, int]], tier: str
) -> None:
    decision = route("summary", ev(acceptance=acceptance), POLICY)
    assert decision.tier == tier
    if tier == "mid":
        (reason,) = decision.reasons
        assert reason.trigger == "low_acceptance"
        assert "under the 50% floor" in reason.evidence


def test_low_acceptance_does_not_touch_work_already_above_local() -> None:
    decision = route("review", ev(acceptance={"review": (0, 50)}), POLICY)
    assert decision.tier == "mid" and "low_acceptance" not in triggers(decision)


@pytest.mark.parametrize(
    ("task", "wanted", "tier"),
    [
        ("summary", "frontier", "frontier"),
        ("summary", "mid", "mid"),
        ("review", "local", "mid"),  # a request never moves work down
        ("summary", "human", "human"),
        ("summary", "warp", "local"),  # unknown tiers are ignored by the pure router
        ("summary", None, "local"),
    ],
)
def test_force_tier_request(task: str, wanted: str | None, tier: str) -> None:
    decision = route(task, ev(force_tier=wanted), POLICY)
    assert decision.tier == tier
    assert ("requested" in triggers(decision)) == (tier != POLICY.tasks[task].tier)  # type: ignore[index]
    if tier == "human":
        assert decision.model == "human" and not decision.external


def test_force_tier_cannot_break_residency() -> None:
    decision = route("summary", ev(force_tier="frontier", labels=PRIVATE), POLICY)
    assert decision.tier == "local" and decision.human_review
    assert triggers(decision) == ["requested", "private_only", "human_review"]


# ---- reasons and the decision object -----------------------------------------------------------


def test_reasons_are_capped_with_and_n_more() -> None:
    files = [change(f"src/auth/m{i}.py", "x = 1") for i in range(12)]
    decision = route("review", ev(*files), POLICY)
    paths = [r for r in decision.reasons if r.trigger == "sensitive_path"]
    assert len(paths) == MAX_REASONS_PER_TRIGGER + 1
    assert paths[-1].evidence == "and 7 more (auth)"


def test_cap_counts_per_trigger_and_category() -> None:
    from policies.reasons import Reason

    reasons = [Reason("a", str(i), "auth") for i in range(7)]
    reasons += [Reason("a", str(i), "crypto") for i in range(3)]
    reasons += [Reason("b", str(i)) for i in range(6)]
    kept = cap(reasons)
    assert [r.evidence for r in kept if r.evidence.startswith("and")] == [
        "and 2 more (auth)",
        "and 1 more",
    ]
    assert len(kept) == 5 + 3 + 5 + 2


def test_private_only_reasons_are_capped_too() -> None:
    files = [change(f"secret/doc{i}.md", "x") for i in range(9)]
    decision = route("summary", ev(*files), POLICY)
    assert decision.reasons[-1].evidence == "and 4 more"


def test_to_json_has_exactly_the_documented_keys() -> None:
    decision = route("review", ev(AUTH, labels=PRIVATE), POLICY)
    data = decision.to_json()
    assert list(data) == ["task", "tier", "model", "private_only", "reasons", "categories"]
    assert all(list(r) == ["trigger", "evidence"] for r in data["reasons"])
    assert data["tier"] in {"local", "mid", "frontier", "human"}
    assert set(data["categories"]) <= {"auth", "crypto", "payments", "infra"}
    assert json.loads(json.dumps(data)) == data
    assert data["private_only"] is True and data["categories"] == ["auth"]


def test_route_many_matches_route_for_every_task() -> None:
    evidence = ev(AUTH, bump("1.0", "2.0"), tests=RunFacts(coverage=0.2))
    assert route_many(TASKS, evidence, POLICY) == [route(t, evidence, POLICY) for t in TASKS]


def test_routing_is_deterministic() -> None:
    evidence = ev(AUTH, PLAIN, change("infra/x.tf", 'resource "aws_s3_bucket" "b" {'))
    assert route("review", evidence, POLICY) == route("review", evidence, POLICY)


@pytest.mark.parametrize("task", ["summarise", "", "REVIEW", "human"])
def test_unknown_task_is_an_input_error(task: str) -> None:
    with pytest.raises(InputError, match="unknown task"):
        route(task, ev(), POLICY)
    with pytest.raises(InputError, match="unknown task"):
        route_many(["summary", task], ev(), POLICY)
