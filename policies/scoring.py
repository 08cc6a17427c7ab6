"""Score routing decisions against labelled cases: recall, false escalation, detector accuracy.

Pure: the caller routes each case and measures the time it took; this module only counts.
A row's *positives* are the cases whose label says the router should act (a sensitive
change, a category, a breaking bump, two or more services). *Recall* is the share of
positives it acted on; *false escalation* is the share of the other cases it acted on
anyway (for category rows: the cases flagged with a category they are not labelled with).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from policies.deps import Bump
from policies.model import CATEGORIES, Policy
from policies.reasons import Reason
from policies.routing import Decision, rank

EVAL_TASKS: tuple[str, ...] = ("summary", "review", "deps", "ci")
SENSITIVE_TASKS: tuple[str, ...] = ("summary", "review")
# The reasons each scored task's own trigger writes; ci's recall counts only these.
CI_TRIGGER = "multi_service_failure"
NOT_FIRED = frozenset({"task_default"})
VERSION_PREFIX = re.compile(r"^[vV](?=\d)")
NAME_SEPARATORS = re.compile(r"[-_.]+")
GO_MAJOR = re.compile(r"/v\d+$")


@dataclass(frozen=True)
class LabelledBump:
    """Hold the bump a case's label says the change is about."""

    package: str
    old: str
    new: str
    breaking: bool


@dataclass(frozen=True)
class Case:
    """Hold one labelled case, as read from a line of a cases file."""

    id: str
    diff: str
    sensitive: bool
    categories: tuple[str, ...]
    services_touched: tuple[str, ...]
    bump: LabelledBump | None
    tree: str | None = None
    repo: str = ""
    commit: str = ""
    note: str = ""


@dataclass(frozen=True)
class CaseOutcome:
    """Hold what the router made of one case.

    ``ci_services`` maps each service the simulated CI failure was traced to; ``touched``
    is what service discovery says the diff touches, or None when discovery is unavailable.
    """

    case: Case
    decisions: Mapping[str, Decision]
    bumps: tuple[Bump, ...] = ()
    ci_services: Mapping[str, str] | None = None
    touched: Mapping[str, str] | None = None
    seconds: float = 0.0


@dataclass(frozen=True)
class Ratio:
    """Count hits out of a total."""

    hits: int
    of: int

    @property
    def pct(self) -> float | None:
        """Return the share in percent, one decimal, or None when there is nothing to count."""
        return round(100 * self.hits / self.of, 1) if self.of else None

    def text(self) -> str:
        """Render as ``k/n (pct)``."""
        pct = "-" if self.pct is None else f"{self.pct:.1f}%"
        return f"{self.hits}/{self.of} ({pct})"

    def to_json(self) -> dict[str, Any]:
        """Return hits, of and pct."""
        return {"hits": self.hits, "of": self.of, "pct": self.pct}


@dataclass(frozen=True)
class Entry:
    """Name one case a row got wrong, what its label says, and the reasons behind it."""

    id: str
    label: str
    note: str
    reasons: tuple[Reason, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the entry as plain JSON."""
        return {
            "id": self.id,
            "label": self.label,
            "note": self.note,
            "reasons": [{"trigger": r.trigger, "evidence": r.evidence} for r in self.reasons],
        }


@dataclass(frozen=True)
class Row:
    """Score one task or category: recall on positives, false escalation on the rest."""

    name: str
    kind: str  # task | category
    cases: int
    positives: int
    recall: Ratio
    false: Ratio
    missed: tuple[Entry, ...]
    false_hits: tuple[Entry, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the row with its figures and lists."""
        return {
            "name": self.name,
            "kind": self.kind,
            "cases": self.cases,
            "positives": self.positives,
            "recall": self.recall.to_json(),
            "false_escalation": self.false.to_json(),
            "missed": [e.to_json() for e in self.missed],
            "false_escalations": [e.to_json() for e in self.false_hits],
        }


@dataclass(frozen=True)
class Check:
    """Score a detector's accuracy against labels: right cases out of those checked."""

    name: str
    ratio: Ratio
    wrong: tuple[Entry, ...]

    def to_json(self) -> dict[str, Any]:
        """Return the accuracy and the cases it got wrong."""
        return {**self.ratio.to_json(), "wrong": [e.to_json() for e in self.wrong]}


@dataclass(frozen=True)
class Timing:
    """Summarise per-case time (parse plus routing every task) in milliseconds."""

    median_ms: float
    p95_ms: float
    total_ms: float

    def to_json(self) -> dict[str, float]:
        """Return median, p95 and total, rounded to microseconds."""
        return {
            "median": round(self.median_ms, 3),
            "p95": round(self.p95_ms, 3),
            "total": round(self.total_ms, 3),
        }


@dataclass(frozen=True)
class Report:
    """Hold every figure and list an evaluation produces."""

    cases: int
    tasks: tuple[str, ...]
    rows: tuple[Row, ...]
    checks: Mapping[str, Check | None]
    timing: Timing
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """Say, for one row, which cases are positive, which the router caught or flagged, and why."""

    positive: Callable[[CaseOutcome], bool]
    caught: Callable[[CaseOutcome], bool]
    flagged: Callable[[CaseOutcome], bool]
    label: Callable[[Case], str]
    why: Callable[[CaseOutcome], tuple[Reason, ...]]


def escalated(decision: Decision, policy: Policy) -> bool:
    """Tell whether a decision's tier is above its task's default tier in the policy."""
    return rank(decision.tier) > rank(policy.tasks[decision.task].tier)  # type: ignore[index]


def fired(decision: Decision) -> tuple[Reason, ...]:
    """Return the reasons a trigger or rule fired, leaving out the policy's default note."""
    return tuple(r for r in decision.reasons if r.trigger not in NOT_FIRED)


def same_package(found: str, labelled: str) -> bool:
    """Compare package names after folding case, separators and a Go module's /vN suffix."""
    return _package_key(found) == _package_key(labelled)


def _package_key(name: str) -> str:
    """Fold a name the way PyPI (PEP 503) and Go modules compare them."""
    name = GO_MAJOR.sub("", name.strip()).casefold()
    return name if "/" in name else NAME_SEPARATORS.sub("-", name)


def same_version(found: str, labelled: str) -> bool:
    """Compare versions, tolerating a leading ``v`` on either side."""
    return VERSION_PREFIX.sub("", found.strip()) == VERSION_PREFIX.sub("", labelled.strip())


def bump_found(case: Case, bumps: Iterable[Bump]) -> bool:
    """Tell whether the detected bumps include the labelled package with its from and to."""
    want = case.bump
    return want is not None and any(
        same_package(b.name, want.package)
        and same_version(b.old, want.old)
        and same_version(b.new, want.new)
        for b in bumps
    )


def _sensitive_label(case: Case) -> str:
    """Describe a case's sensitivity label."""
    if not case.sensitive:
        return "routine"
    return f"sensitive ({', '.join(case.categories)})" if case.categories else "sensitive"


def _categories_label(case: Case) -> str:
    """Describe a case's category labels."""
    return ", ".join(case.categories) or "no category"


def _bump_label(case: Case) -> str:
    """Describe a case's bump label."""
    bump = case.bump
    if bump is None:
        return "no bump"
    kind = "breaking" if bump.breaking else "non-breaking"
    return f"{kind} bump {bump.package} {bump.old} → {bump.new}"


def _services_label(case: Case) -> str:
    """Describe a case's services label."""
    return f"services: {', '.join(case.services_touched) or 'none'}"


def _detected(bumps: Iterable[Bump]) -> tuple[Reason, ...]:
    """Describe the bumps the detector found, or that it found none."""
    found = tuple(
        Reason("detected_bump", f"{b.path}:{b.line} {b.name} {b.old} → {b.new}") for b in bumps
    )
    return found or (Reason("detected_bump", "no bump detected"),)


def _ci_seen(outcome: CaseOutcome) -> tuple[Reason, ...]:
    """Describe the services the simulated CI failure was traced to."""
    seen = outcome.ci_services or {}
    where = ", ".join(f"{name} ({path})" for name, path in sorted(seen.items()))
    return (Reason("ci_services", f"failed paths trace to: {where or 'no service'}"),)


def sensitive_rule(task: str, policy: Policy) -> Rule:
    """Score the sensitive-change trigger on one task."""

    def hit(o: CaseOutcome) -> bool:
        return escalated(o.decisions[task], policy)

    return Rule(
        positive=lambda o: o.case.sensitive,
        caught=hit,
        flagged=hit,
        label=_sensitive_label,
        why=lambda o: fired(o.decisions[task]),
    )


def category_rule(category: str, task: str) -> Rule:
    """Score one category against the categories of ``task``'s decision."""

    def hit(o: CaseOutcome) -> bool:
        return category in o.decisions[task].categories

    return Rule(
        positive=lambda o: category in o.case.categories,
        caught=hit,
        flagged=hit,
        label=_categories_label,
        why=lambda o: tuple(r for r in fired(o.decisions[task]) if r.category == category),
    )


def deps_rule(policy: Policy) -> Rule:
    """Score the deps task's escalation on breaking bumps."""

    def hit(o: CaseOutcome) -> bool:
        return escalated(o.decisions["deps"], policy)

    return Rule(
        positive=lambda o: o.case.bump is not None and o.case.bump.breaking,
        caught=hit,
        flagged=hit,
        label=_bump_label,
        why=lambda o: fired(o.decisions["deps"]) + _detected(o.bumps),
    )


def ci_rule(policy: Policy) -> Rule:
    """Score the ci task's escalation on failures spanning two or more services."""

    def flagged(o: CaseOutcome) -> bool:
        return escalated(o.decisions["ci"], policy)

    def caught(o: CaseOutcome) -> bool:
        return flagged(o) and any(r.trigger == CI_TRIGGER for r in o.decisions["ci"].reasons)

    return Rule(
        positive=lambda o: len(o.case.services_touched) >= 2,
        caught=caught,
        flagged=flagged,
        label=_services_label,
        why=lambda o: fired(o.decisions["ci"]) + _ci_seen(o),
    )


def row(name: str, kind: str, outcomes: Sequence[CaseOutcome], rule: Rule) -> Row:
    """Count one row and list its misses and false escalations."""
    positives = [o for o in outcomes if rule.positive(o)]
    negatives = [o for o in outcomes if not rule.positive(o)]
    missed = [o for o in positives if not rule.caught(o)]
    flagged = [o for o in negatives if rule.flagged(o)]
    return Row(
        name=name,
        kind=kind,
        cases=len(outcomes),
        positives=len(positives),
        recall=Ratio(len(positives) - len(missed), len(positives)),
        false=Ratio(len(flagged), len(negatives)),
        missed=tuple(_entry(o, rule) for o in missed),
        false_hits=tuple(_entry(o, rule) for o in flagged),
    )


def _entry(outcome: CaseOutcome, rule: Rule) -> Entry:
    """List one case with its label, note and reasons."""
    case = outcome.case
    return Entry(case.id, rule.label(case), case.note, rule.why(outcome))


def task_rule(task: str, policy: Policy) -> Rule:
    """Return the rule that scores ``task``."""
    if task in SENSITIVE_TASKS:
        return sensitive_rule(task, policy)
    return deps_rule(policy) if task == "deps" else ci_rule(policy)


def rows(outcomes: Sequence[CaseOutcome], policy: Policy, tasks: Sequence[str]) -> tuple[Row, ...]:
    """Score each chosen task, with the category rows after the sensitive-change tasks."""
    scored = [row(task, "task", outcomes, task_rule(task, policy)) for task in tasks]
    sensitive = [i for i, task in enumerate(tasks) if task in SENSITIVE_TASKS]
    if sensitive:
        # Categories come from the shared sensitive detector, the same for every task.
        source = tasks[sensitive[0]]
        categories = [row(c, "category", outcomes, category_rule(c, source)) for c in CATEGORIES]
        scored[sensitive[-1] + 1 : sensitive[-1] + 1] = categories
    return tuple(scored)


def bump_check(outcomes: Sequence[CaseOutcome]) -> Check:
    """Score bump detection on the cases whose label names a bump."""
    labelled = [o for o in outcomes if o.case.bump is not None]
    wrong = [o for o in labelled if not bump_found(o.case, o.bumps)]
    return Check(
        "bump detection",
        Ratio(len(labelled) - len(wrong), len(labelled)),
        tuple(
            Entry(o.case.id, _bump_label(o.case), o.case.note, _detected(o.bumps)) for o in wrong
        ),
    )


def services_check(outcomes: Sequence[CaseOutcome]) -> Check | None:
    """Score service discovery: cases whose touched services equal the label; None if absent."""
    if not outcomes or any(o.touched is None for o in outcomes):
        return None
    wrong = [o for o in outcomes if set(o.touched or {}) != set(o.case.services_touched)]
    return Check(
        "services_touched",
        Ratio(len(outcomes) - len(wrong), len(outcomes)),
        tuple(_touched_entry(o) for o in wrong),
    )


def _touched_entry(outcome: CaseOutcome) -> Entry:
    """List a case whose touched services differ from the label, with discovery's reasons."""
    touched = outcome.touched or {}
    reasons = tuple(Reason("touched", f"{name}: {why}") for name, why in sorted(touched.items()))
    case = outcome.case
    return Entry(
        case.id,
        _services_label(case),
        case.note,
        reasons or (Reason("touched", "no service touched"),),
    )


def timing(seconds: Sequence[float]) -> Timing:
    """Return the median, 95th percentile (nearest rank) and total, in milliseconds."""
    if not seconds:
        return Timing(0.0, 0.0, 0.0)
    ordered = sorted(seconds)
    p95 = ordered[math.ceil(0.95 * len(ordered)) - 1]
    return Timing(1000 * statistics.median(ordered), 1000 * p95, 1000 * sum(ordered))


def score(
    outcomes: Sequence[CaseOutcome],
    policy: Policy,
    tasks: Sequence[str] = EVAL_TASKS,
    *,
    notes: Sequence[str] = (),
) -> Report:
    """Score every chosen task, category and detector over the outcomes."""
    checks: dict[str, Check | None] = {}
    if "deps" in tasks:
        checks["bump_detection"] = bump_check(outcomes)
    if "ci" in tasks:
        checks["services_touched"] = services_check(outcomes)
    return Report(
        cases=len(outcomes),
        tasks=tuple(tasks),
        rows=rows(outcomes, policy, tasks),
        checks=checks,
        timing=timing([o.seconds for o in outcomes]),
        notes=tuple(notes),
    )


def report_json(report: Report) -> dict[str, Any]:
    """Return the report as one JSON object."""
    return {
        "cases": report.cases,
        "tasks": list(report.tasks),
        "rows": [r.to_json() for r in report.rows],
        **{name: None if c is None else c.to_json() for name, c in report.checks.items()},
        "timing_ms": report.timing.to_json(),
        "notes": list(report.notes),
    }
