"""Decide which tier runs a task: ``route(task, evidence, policy) -> Decision``, pure."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bot.kernel.errors import InputError
from policies import detectors
from policies.evidence import Evidence
from policies.model import TASKS, TIER_ORDER, Policy
from policies.reasons import Reason

MAX_REASONS_PER_TRIGGER = 5


@dataclass(frozen=True)
class Decision:
    """Say which tier and model run a task, and every reason why."""

    task: str
    tier: str
    model: str
    private_only: bool
    categories: tuple[str, ...]
    reasons: tuple[Reason, ...]
    human_review: bool = False

    def to_json(self) -> dict[str, Any]:
        """Return exactly the documented decision object."""
        return {
            "task": self.task,
            "tier": self.tier,
            "model": self.model,
            "private_only": self.private_only,
            "reasons": [{"trigger": r.trigger, "evidence": r.evidence} for r in self.reasons],
            "categories": list(self.categories),
        }

    external: bool = False


def rank(tier: str) -> int:
    """Return a tier's position in local < mid < frontier < human."""
    return TIER_ORDER.index(tier)


def higher(a: str, b: str) -> str:
    """Return the more capable of two tiers."""
    return a if rank(a) >= rank(b) else b


def is_external(tier: str, policy: Policy) -> bool:
    """Tell whether a tier sends data outside the private hardware."""
    return tier in policy.tiers and not policy.tiers[tier].private


def cap(reasons: Iterable[Reason]) -> list[Reason]:
    """Keep at most a few reasons per (trigger, category) and count the rest."""
    kept: list[Reason] = []
    seen: dict[tuple[str, str | None], int] = {}
    for reason in reasons:
        key = (reason.trigger, reason.category)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] <= MAX_REASONS_PER_TRIGGER:
            kept.append(reason)
    for (trigger, category), count in seen.items():
        if count > MAX_REASONS_PER_TRIGGER:
            extra = count - MAX_REASONS_PER_TRIGGER
            label = f" ({category})" if category else ""
            kept.append(Reason(trigger, f"and {extra} more{label}", category))
    return kept


@dataclass
class _Draft:
    """Accumulate a decision while the rules run in order."""

    task: str
    tier: str
    reasons: list[Reason] = field(default_factory=list)
    human: bool = False

    def raise_to(self, tier: str, reasons: Iterable[Reason]) -> None:
        """Move up to ``tier`` (never down) and keep the reasons."""
        self.tier = higher(self.tier, tier)
        self.reasons.extend(reasons)


def route(task: str, evidence: Evidence, policy: Policy) -> Decision:
    """Route one task on this evidence under this policy; no I/O, deterministic."""
    return route_many((task,), evidence, policy)[0]


def route_many(tasks: Iterable[str], evidence: Evidence, policy: Policy) -> list[Decision]:
    """Route several tasks on the same evidence, running the shared detectors once."""
    tasks = tuple(tasks)
    for task in tasks:
        if task not in TASKS:
            raise InputError(f"unknown task '{task}': choose one of {', '.join(TASKS)}")
    found = list(detectors.sensitive(evidence, policy))
    residency = list(detectors.private_only(evidence, policy))
    repo_only = _repo_only(found, evidence, policy)
    return [_route_one(task, evidence, policy, found, residency, repo_only) for task in tasks]


def _repo_only(found: list[Reason], evidence: Evidence, policy: Policy) -> frozenset[Reason]:
    """Return the sensitive reasons that only a repo's own rules produced.

    A repo's .github/cibot.yml may add sensitive rules, but it may not send more of its
    code to external tiers than the operator's policy would; those reasons escalate only
    within the private tiers unless the operator allows more.
    """
    if policy.operator_sensitive is None or policy.behaviour.repo_rules_reach_external:
        return frozenset()
    operator = operator_view(policy)
    return frozenset(found) - frozenset(detectors.sensitive(evidence, operator))


_OPERATOR_VIEWS: dict[int, tuple[Policy, Policy]] = {}


def operator_view(policy: Policy) -> Policy:
    """Return the policy with the operator's sensitive rules only (cached per policy)."""
    hit = _OPERATOR_VIEWS.get(id(policy))
    if hit is not None and hit[0] is policy:
        return hit[1]
    view = policy.model_copy(
        update={
            "sensitive": policy.operator_sensitive,
            "dependencies": policy.operator_dependencies or policy.dependencies,
            "operator_sensitive": None,
            "operator_dependencies": None,
        }
    )
    if len(_OPERATOR_VIEWS) > 16:
        _OPERATOR_VIEWS.clear()
    _OPERATOR_VIEWS[id(policy)] = (policy, view)
    return view


def _route_one(
    task: str,
    evidence: Evidence,
    policy: Policy,
    found: list[Reason],
    residency: list[Reason],
    repo_only: frozenset[Reason] = frozenset(),
) -> Decision:
    """Apply the routing table's rules, in order, to one task."""
    spec = policy.tasks[task]  # type: ignore[index]
    draft = _Draft(task=task, tier=spec.tier, human=spec.human_review)
    if spec.tier != "local":
        draft.reasons.append(Reason("task_default", f"{task} runs on {spec.tier} by policy"))
    categories = tuple(sorted({r.category for r in found if r.category}))
    for escalation in spec.escalate:
        fired = (
            found
            if escalation.trigger == "sensitive_change"
            else list(detectors.TRIGGERS[escalation.trigger](evidence, policy))
        )
        if fired and escalation.trigger == "sensitive_change" and repo_only:
            _raise_for_sensitive(draft, escalation.to, fired, repo_only, policy)
        elif fired:
            draft.raise_to(escalation.to, cap(fired))
    _apply_request(draft, evidence)
    _apply_history(draft, evidence, policy)
    _apply_context(draft, evidence, policy)
    _apply_budget(draft, evidence, policy, pinned=bool(residency))
    _apply_residency(draft, policy, residency)
    return _finish(draft, policy, categories, private=bool(residency))


def _raise_for_sensitive(
    draft: _Draft, to: str, fired: list[Reason], repo_only: frozenset[Reason], policy: Policy
) -> None:
    """Escalate on sensitive reasons, keeping repo-only reasons within the private tiers."""
    if any(reason not in repo_only for reason in fired) or not is_external(to, policy):
        draft.raise_to(to, cap(fired))
        return
    private = policy.best_private_tier()
    target = private if rank(private) < rank(to) else to
    note = Reason(
        "repo_rule",
        f"only the repo's own .github/cibot.yml rules matched, so this stays on {target} "
        f"instead of {to}: a repo's rules escalate within the private tiers",
    )
    draft.raise_to(target, [*cap(fired), note])


def _apply_request(draft: _Draft, evidence: Evidence) -> None:
    """Honour an explicit `/cibot escalate <tier>` request."""
    wanted = evidence.force_tier
    if wanted in TIER_ORDER and rank(wanted) > rank(draft.tier):
        draft.raise_to(wanted, [Reason("requested", f"escalation to {wanted} was requested")])


def _apply_history(draft: _Draft, evidence: Evidence, policy: Policy) -> None:
    """Route a task up one tier while its local acceptance rate sits under the floor."""
    accepted, total = evidence.acceptance.get(draft.task, (0, 0))
    floor = policy.history.acceptance_floor
    if draft.tier == "local" and total >= policy.history.min_samples and accepted / total < floor:
        draft.raise_to(
            "mid",
            [
                Reason(
                    "low_acceptance",
                    f"{draft.task} accepted {accepted}/{total} on local, under the {floor:.0%} floor",
                )
            ],
        )


def _fits(tier: str, evidence: Evidence, policy: Policy, output: int) -> bool:
    """Tell whether the packed work fits the tier's context window."""
    if tier == "human":
        return True
    window = policy.tiers[tier].context_window
    return evidence.packed_tokens + output + policy.behaviour.context_reserve_tokens <= window


def _apply_context(draft: _Draft, evidence: Evidence, policy: Policy) -> None:
    """Move up to the first tier whose window holds the packed work."""
    output = policy.tasks[draft.task].expected_output_tokens  # type: ignore[index]
    if _fits(draft.tier, evidence, policy, output):
        return
    start = draft.tier
    for tier in TIER_ORDER[rank(start) + 1 : 3]:
        if _fits(tier, evidence, policy, output):
            window = policy.tiers[start].context_window
            draft.raise_to(
                tier,
                [
                    Reason(
                        "context_too_large",
                        f"about {evidence.packed_tokens} tokens after packing exceed {start}'s "
                        f"{window}-token window",
                    )
                ],
            )
            return
    draft.reasons.append(
        Reason(
            "context_too_large",
            f"about {evidence.packed_tokens} tokens after packing fit no tier: "
            "the work is split into chunks and combined",
        )
    )


def _apply_budget(draft: _Draft, evidence: Evidence, policy: Policy, *, pinned: bool) -> None:
    """Keep work private once the installation's frontier budget is spent."""
    budget = policy.budgets.monthly_frontier_usd
    if pinned or not is_external(draft.tier, policy) or evidence.frontier_spend_usd < budget:
        return
    draft.tier = policy.best_private_tier()
    draft.reasons.append(
        Reason(
            "budget_exhausted",
            f"frontier spend ${evidence.frontier_spend_usd:,.2f} has reached this month's "
            f"${budget:,.2f} budget; staying on {draft.tier}",
        )
    )


def _apply_residency(draft: _Draft, policy: Policy, residency: list[Reason]) -> None:
    """Never let private_only data reach an external tier; ask a human instead."""
    if not residency:
        return
    draft.reasons.extend(cap(residency))
    if is_external(draft.tier, policy):
        wanted = draft.tier
        draft.tier = policy.best_private_tier()
        draft.human = True
        draft.reasons.append(
            Reason(
                "human_review",
                f"private_only data would have gone to {wanted}; kept on {draft.tier} and a human "
                "is asked to review",
            )
        )


def _finish(
    draft: _Draft, policy: Policy, categories: tuple[str, ...], *, private: bool
) -> Decision:
    """Freeze the draft into a Decision with the tier's first model."""
    if draft.human and not any(r.trigger == "human_review" for r in draft.reasons):
        draft.reasons.append(Reason("human_review", f"{draft.task} always gets a human reviewer"))
    model = "human" if draft.tier == "human" else policy.tiers[draft.tier].models[0]
    return Decision(
        task=draft.task,
        tier=draft.tier,
        model=model,
        private_only=private,
        categories=categories,
        reasons=tuple(draft.reasons),
        human_review=draft.human,
        external=is_external(draft.tier, policy),
    )
