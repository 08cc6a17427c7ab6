"""Print the ledger's figures: spend by tier, PRs worked and merged, cost per accepted PR.

``compute_report`` is pure: it takes ledger rows and the policy and does no I/O. Private
tiers are priced two ways. *Fully loaded*: the rung's monthly cost for the window's share of
a month, allocated over the private tokens actually served in the window, so idle GPUs show
up as cost. *Marginal*: the rung's cost per token at full utilization. The fallback rate is
the share of finished jobs that changed tier at least once; the top reasons count the
steps of those walks (``fallback_steps`` in the ledger).

Acceptance. Cost per accepted PR divides the spend on the window's PRs by those of them
that were merged. A bot result (a job that succeeded and posted) is accepted when any
feedback row on it has a positive value: a 👍 on a sticky or a review comment, a suggestion
applied, a thread resolved, generated tests merged, a person's edit or reply. A feedback row
belongs to the latest job, at the time of the signal, of its PR and task; a row that names
no task and is on no sticky comment is on a review comment, so it belongs to the PR's
review job; with no such job it counts for the PR alone.

Shadow jobs (``jobs.shadow``: routed, run, priced and recorded, but never posted) are kept
apart. Their tokens count in the rung's allocation, since they used it, but they are in none
of the PR, acceptance, fallback or tier-split figures; ``Report.shadow`` says how many ran,
on which tiers, and what they cost.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import IO, Any

from bot.kernel.errors import ConfigError, InputError
from policies.costs import (
    SECONDS_PER_MONTH,
    bought_monthly,
    capacity_tokens_per_month,
    private_call_cost,
    rung_economics,
)
from policies.model import Policy
from workers.ledger import (
    DROPPED,
    FAILED,
    QUEUED,
    SUCCEEDED,
    TIER_ORDER,
    CallRow,
    JobRow,
    OutcomeRow,
    StepRow,
)

PrKey = tuple[str, int]
TOP_REASONS = 5
REVIEW_TASK = "review"  # review comments carry no sticky marker: the review job posts them
TESTS_TASK = "tests"
TESTS_MERGED = "tests_merged"
VIEWS = ("repo", "task", "week")
DEFAULT_PROMPT_SHARE = 0.8  # prompt share of private tokens when none were served to measure


@dataclass(frozen=True)
class TierSpend:
    """Spend on one tier in the window (for the repo filter, when one is given)."""

    tier: str
    private: bool
    calls: int
    tokens: int
    api_usd: float
    marginal_usd: float
    fully_loaded_usd: float
    # Private tiers only: the rung's cost for the window and the share no work used.
    window_cost_usd: float = 0.0
    idle_usd: float = 0.0


@dataclass(frozen=True)
class FeedbackRow:
    """An acceptance signal as the report sees it; ``task`` comes from its job when known."""

    repo: str
    pr_number: int | None
    task: str
    signal: str
    value: int
    at: datetime


@dataclass(frozen=True)
class SignalCount:
    """Count one kind of signal: rows for and against, and the bot results it accepted."""

    positive: int = 0
    negative: int = 0
    results: int = 0
    neutral: int = 0  # a reply, say: engagement, neither for nor against


@dataclass(frozen=True)
class AcceptanceCell:
    """Say how many of one task's results on one tier were posted and accepted."""

    task: str
    tier: str
    posted: int
    accepted: int
    rate: float | None


@dataclass(frozen=True)
class TestsFigures:
    """Count generated-test jobs: finished, passed in the sandbox, merged by people.

    A tests job succeeds only when its tests ran green in the sandbox, so ``passed`` is
    what the ledger can tell; whether CI passed after the commit is not recorded.
    """

    finished: int = 0
    passed: int = 0
    merged: int = 0


@dataclass(frozen=True)
class ShadowSummary:
    """Describe the shadow jobs of the window: how many, on which tiers, at what cost."""

    jobs: int = 0
    by_tier: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    api_usd: float = 0.0
    marginal_usd: float = 0.0
    fully_loaded_usd: float = 0.0


@dataclass(frozen=True)
class Report:
    """Hold every figure ``cibot report`` prints."""

    since: datetime
    until: datetime
    repo: str | None
    spend: tuple[TierSpend, ...]
    prs_worked: int
    prs_merged: int
    pr_spend_fully_loaded_usd: float
    pr_spend_marginal_usd: float
    cost_per_accepted_pr_fully_loaded: float | None
    cost_per_accepted_pr_marginal: float | None
    tier_split: dict[str, float]
    jobs_finished: int
    fallback_rate: float | None
    success_rate: float | None
    success_by_task: dict[str, float] = field(default_factory=dict)
    fallback_steps: int = 0
    fallback_reasons: dict[str, int] = field(default_factory=dict)  # the most common first
    task: str | None = None
    spend_fully_loaded_usd: float = 0.0  # every tier, idle rung time and shadow jobs included
    idle_usd: float = 0.0
    spend_by_task: dict[str, float] = field(default_factory=dict)  # fully loaded, idle apart
    results_posted: int = 0
    results_accepted: int = 0
    acceptance_rate: float | None = None
    acceptance_by_signal: dict[str, SignalCount] = field(default_factory=dict)
    acceptance_by_task_tier: tuple[AcceptanceCell, ...] = ()
    prs_signalled: int = 0  # PRs worked on with a positive signal on some bot result
    tests: TestsFigures = TestsFigures()
    shadow: ShadowSummary = ShadowSummary()

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-safe data."""
        data = asdict(self)
        data["since"] = self.since.isoformat()
        data["until"] = self.until.isoformat()
        data["spend"] = {
            s.tier: {k: v for k, v in asdict(s).items() if k != "tier"} for s in self.spend
        }
        return data


@dataclass(frozen=True)
class Rows:
    """Hold what the report reads from the ledger for a window."""

    jobs: Sequence[JobRow]
    calls: Sequence[CallRow]
    outcomes: Sequence[OutcomeRow]
    steps: Sequence[StepRow] = ()
    feedback: Sequence[FeedbackRow] = ()


@dataclass(frozen=True)
class Scope:
    """Narrow the report to one repo and/or one task (None: all)."""

    repo: str | None = None
    task: str | None = None

    def holds(self, repo: str, task: str) -> bool:
        """Tell whether a row of this repo and task is in scope."""
        return self.repo in (None, repo) and self.task in (None, task)

    @property
    def narrowed(self) -> bool:
        """Tell whether any filter is set (idle rung time then belongs to no one)."""
        return self.repo is not None or self.task is not None


@dataclass(frozen=True)
class Priced:
    """Hold the window's calls with each one's fully loaded and marginal price."""

    calls: Sequence[CallRow]
    months: float
    allocated: dict[int, float]
    marginal: dict[int, float]

    def full(self, calls: Iterable[CallRow]) -> float:
        """Return the fully loaded cost of ``calls``."""
        return sum(self.allocated.get(id(c), c.cost_usd) for c in calls)

    def low(self, calls: Iterable[CallRow]) -> float:
        """Return the marginal cost of ``calls``."""
        return sum(self.marginal.get(id(c), c.cost_usd) for c in calls)


def compute_report(
    jobs: Sequence[JobRow],
    calls: Sequence[CallRow],
    outcomes: Sequence[OutcomeRow],
    policy: Policy,
    since: datetime | None,
    until: datetime,
    *,
    repo: str | None = None,
    steps: Sequence[StepRow] = (),
    feedback: Sequence[FeedbackRow] = (),
    task: str | None = None,
    merged_by: datetime | None = None,
) -> Report:
    """Compute the report for [since, until); rows may cover every repo (allocation needs it).

    ``merged_by`` (default ``until``) is when a PR must be merged by to count as accepted: a
    week's report passes the whole window's end, so a PR merged the week after still counts.
    """
    start = _start(jobs, calls, since, until)
    scope = Scope(repo, task)
    shadows = {j.job_key for j in jobs if j.shadow}
    jobs = [j for j in jobs if _in(j.created_at, start, until) and scope.holds(j.repo, j.task)]
    priced = _price([c for c in calls if _in(c.created_at, start, until)], policy, start, until)
    mine = [c for c in priced.calls if scope.holds(c.repo, c.task)]
    live = [c for c in mine if c.job_key not in shadows]
    posted = [j for j in jobs if not j.shadow]
    finished = [j for j in posted if j.status in (SUCCEEDED, FAILED)]
    spend = _spend(live, priced, policy, shadows, filtered=scope.narrowed)
    shadow = _shadow(
        [j for j in jobs if j.shadow], [c for c in mine if c.job_key in shadows], priced
    )
    walked = _steps_of(finished, steps)
    return Report(
        since=start,
        until=until,
        repo=repo,
        task=task,
        spend=spend,
        **_pr_figures(posted, live, outcomes, priced, merged_by or until),
        tier_split=_shares(Counter(j.tier for j in finished)),
        jobs_finished=len(finished),
        fallback_rate=_rate(sum(1 for j in finished if j.fallbacks > 0), len(finished)),
        success_rate=_rate(sum(1 for j in finished if j.status == SUCCEEDED), len(finished)),
        success_by_task=_success_by_task(finished),
        fallback_steps=len(walked),
        fallback_reasons=dict(Counter(s.reason for s in walked).most_common(TOP_REASONS)),
        spend_fully_loaded_usd=sum(s.fully_loaded_usd for s in spend) + shadow.fully_loaded_usd,
        idle_usd=0.0 if scope.narrowed else sum(s.idle_usd for s in spend),
        spend_by_task=_by_task(live, priced),
        shadow=shadow,
        **_acceptance(finished, feedback, scope),
    )


def _start(
    jobs: Sequence[JobRow], calls: Sequence[CallRow], since: datetime | None, until: datetime
) -> datetime:
    """Return the window's start: ``since``, or the earliest row (all time)."""
    stamps = [j.created_at for j in jobs] + [c.created_at for c in calls]
    return since or min(stamps, default=until)


def _price(calls: Sequence[CallRow], policy: Policy, start: datetime, until: datetime) -> Priced:
    """Price the window's calls: the rung's window cost allocated, and the marginal rate."""
    months = max((until - start).total_seconds(), 0.0) / SECONDS_PER_MONTH
    return Priced(
        calls=calls,
        months=months,
        allocated=_allocate(calls, policy, months),
        marginal={id(c): _marginal(c, policy) for c in calls},
    )


def _pr_figures(
    jobs: Sequence[JobRow],
    calls: Sequence[CallRow],
    outcomes: Iterable[OutcomeRow],
    priced: Priced,
    merged_by: datetime,
) -> dict[str, Any]:
    """Return the PRs worked on and merged, their spend and the cost per accepted PR."""
    worked = {
        (j.repo, j.pr_number)
        for j in jobs
        if j.pr_number is not None and j.status not in (DROPPED, QUEUED)
    }
    merged = worked & _merged(outcomes, merged_by)
    on_prs = [c for c in calls if (c.repo, c.pr_number) in worked]
    full, low = priced.full(on_prs), priced.low(on_prs)
    return {
        "prs_worked": len(worked),
        "prs_merged": len(merged),
        "pr_spend_fully_loaded_usd": full,
        "pr_spend_marginal_usd": low,
        "cost_per_accepted_pr_fully_loaded": full / len(merged) if merged else None,
        "cost_per_accepted_pr_marginal": low / len(merged) if merged else None,
    }


def _steps_of(finished: Sequence[JobRow], steps: Sequence[StepRow]) -> list[StepRow]:
    """Return the fallback steps of the finished jobs."""
    keys = {j.job_key for j in finished}
    return [s for s in steps if s.job_key in keys]


def _in(at: datetime, start: datetime, until: datetime) -> bool:
    """Tell whether ``at`` falls in [start, until)."""
    return start <= at < until


def _rung_monthly(tier: str, policy: Policy) -> float | None:
    """Return the monthly cost of the rung behind a private tier, or None."""
    spec = policy.tiers.get(tier)
    if spec is None or not spec.private or spec.rung is None:
        return None
    return bought_monthly(policy.rungs[spec.rung])


def _allocate(calls: Sequence[CallRow], policy: Policy, months: float) -> dict[int, float]:
    """Spread each private rung's window cost over its calls in proportion to tokens."""
    tokens: dict[str, int] = defaultdict(int)
    for call in calls:
        if call.private:
            tokens[call.tier] += call.tokens
    out: dict[int, float] = {}
    for call in calls:
        monthly = _rung_monthly(call.tier, policy) if call.private else None
        if monthly is None:
            continue
        total = tokens[call.tier]
        out[id(call)] = monthly * months * call.tokens / total if total else 0.0
    return out


def _marginal(call: CallRow, policy: Policy) -> float:
    """Price a private call at its rung's full-utilization rate; an API call at its cost."""
    spec = policy.tiers.get(call.tier)
    if not call.private or spec is None or spec.rung is None:
        return call.cost_usd
    return private_call_cost(policy.rungs[spec.rung], call.tokens)


def _spend(
    mine: Sequence[CallRow],
    priced: Priced,
    policy: Policy,
    shadows: set[str],
    *,
    filtered: bool,
) -> tuple[TierSpend, ...]:
    """Sum spend per tier; a private rung that served nothing shows its whole cost as idle."""
    out = []
    for tier in policy.tiers:
        rows = [c for c in mine if c.tier == tier]
        monthly = _rung_monthly(tier, policy)
        if not rows and monthly is None:
            continue
        window = (monthly or 0.0) * priced.months
        used = any(c.tier == tier for c in priced.calls)
        idle = window if monthly is not None and not used else 0.0
        out.append(
            TierSpend(
                tier=tier,
                private=policy.tiers[tier].private,
                calls=len(rows),
                tokens=sum(c.tokens for c in rows),
                api_usd=sum(c.cost_usd for c in rows if not c.private),
                marginal_usd=priced.low(rows),
                fully_loaded_usd=priced.full(rows) + (0.0 if filtered else idle),
                window_cost_usd=window,
                idle_usd=idle,
            )
        )
    return tuple(out)


def _by_task(calls: Sequence[CallRow], priced: Priced) -> dict[str, float]:
    """Return the fully loaded spend of each task's calls (idle rung time belongs to none)."""
    out: dict[str, float] = defaultdict(float)
    for call in calls:
        out[call.task] += priced.full([call])
    return dict(sorted(out.items()))


def _shadow(jobs: Sequence[JobRow], calls: Sequence[CallRow], priced: Priced) -> ShadowSummary:
    """Sum what the shadow jobs of the window ran and cost."""
    return ShadowSummary(
        jobs=len(jobs),
        by_tier=dict(sorted(Counter(j.tier for j in jobs).items())),
        tokens=sum(c.tokens for c in calls),
        api_usd=sum(c.cost_usd for c in calls if not c.private),
        marginal_usd=priced.low(calls),
        fully_loaded_usd=priced.full(calls),
    )


def _merged(outcomes: Iterable[OutcomeRow], until: datetime) -> set[PrKey]:
    """Return the PRs whose latest outcome before ``until`` is merged."""
    latest: dict[PrKey, OutcomeRow] = {}
    for row in sorted(outcomes, key=lambda r: r.at):
        if row.at < until:
            latest[(row.repo, row.pr_number)] = row
    return {key for key, row in latest.items() if row.outcome == "merged"}


def _rate(part: int, whole: int) -> float | None:
    """Return part / whole, or None when there is nothing to divide."""
    return part / whole if whole else None


def _shares(counts: Counter[str]) -> dict[str, float]:
    """Turn counts into shares that sum to 1."""
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def _success_by_task(finished: Sequence[JobRow]) -> dict[str, float]:
    """Return each task's success rate."""
    by_task: dict[str, list[JobRow]] = defaultdict(list)
    for job in finished:
        by_task[job.task].append(job)
    return {
        task: sum(1 for j in rows if j.status == SUCCEEDED) / len(rows)
        for task, rows in sorted(by_task.items())
    }


# ---- acceptance ------------------------------------------------------------------------------


def _acceptance(
    finished: Sequence[JobRow], feedback: Sequence[FeedbackRow], scope: Scope
) -> dict[str, Any]:
    """Return the acceptance figures: results accepted, by signal, by task and tier, tests."""
    posted = [j for j in finished if j.status == SUCCEEDED]
    owners = _owners(posted)
    worked = {(j.repo, j.pr_number) for j in finished if j.pr_number is not None}
    signals: dict[str, set[str]] = defaultdict(set)  # job key -> its positive signal kinds
    tally: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])  # for, against, neither
    results: dict[str, set[str]] = defaultdict(set)
    prs: set[PrKey] = set()
    for row in feedback:
        task = row.task or REVIEW_TASK
        if row.pr_number is None or not scope.holds(row.repo, task):
            continue
        owner = _owner(owners.get((row.repo, row.pr_number, task), []), row.at)
        if owner is None and (row.repo, row.pr_number) not in worked:
            continue  # a signal on work outside the window
        tally[row.signal][0 if row.value > 0 else 1 if row.value < 0 else 2] += 1
        if row.value > 0:
            prs.add((row.repo, row.pr_number))
            if owner is not None:
                signals[owner.job_key].add(row.signal)
                results[row.signal].add(owner.job_key)
    return {
        "results_posted": len(posted),
        "results_accepted": sum(1 for j in posted if signals.get(j.job_key)),
        "acceptance_rate": _rate(sum(1 for j in posted if signals.get(j.job_key)), len(posted)),
        "acceptance_by_signal": {
            kind: SignalCount(pos, neg, len(results[kind]), neutral)
            for kind, (pos, neg, neutral) in sorted(tally.items())
        },
        "acceptance_by_task_tier": _cells(posted, signals),
        "prs_signalled": len(prs & worked),
        "tests": _tests(finished, signals),
    }


def _owners(posted: Sequence[JobRow]) -> dict[tuple[str, int, str], list[JobRow]]:
    """Index the posted jobs by (repo, PR, task), oldest first."""
    out: dict[tuple[str, int, str], list[JobRow]] = defaultdict(list)
    for job in sorted(posted, key=lambda j: j.created_at):
        if job.pr_number is not None:
            out[(job.repo, job.pr_number, job.task)].append(job)
    return out


def _owner(candidates: Sequence[JobRow], at: datetime) -> JobRow | None:
    """Return the latest job made before the signal (the result people saw), else the first."""
    before = [j for j in candidates if j.created_at <= at]
    return before[-1] if before else (candidates[0] if candidates else None)


def _cells(posted: Sequence[JobRow], signals: Mapping[str, set[str]]) -> tuple[AcceptanceCell, ...]:
    """Return acceptance per (task, tier)."""
    groups: dict[tuple[str, str], list[JobRow]] = defaultdict(list)
    for job in posted:
        groups[(job.task, job.tier)].append(job)
    out = []
    for (task, tier), rows in sorted(groups.items(), key=lambda kv: (kv[0][0], _rank(kv[0][1]))):
        accepted = sum(1 for j in rows if signals.get(j.job_key))
        out.append(AcceptanceCell(task, tier, len(rows), accepted, _rate(accepted, len(rows))))
    return tuple(out)


def _rank(tier: str) -> int:
    """Return a tier's place in the ladder, unknown tiers last."""
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER)


def _tests(finished: Sequence[JobRow], signals: Mapping[str, set[str]]) -> TestsFigures:
    """Count the generated-test jobs that finished, passed in the sandbox, and were merged."""
    rows = [j for j in finished if j.task == TESTS_TASK]
    return TestsFigures(
        finished=len(rows),
        passed=sum(1 for j in rows if j.status == SUCCEEDED),
        merged=sum(1 for j in rows if TESTS_MERGED in signals.get(j.job_key, set())),
    )


# ---- views: by repo, task or week; utilisation; the frontier budget --------------------------


@dataclass(frozen=True)
class Line:
    """One row of a ``--by`` view (and of ``--csv``)."""

    key: str
    jobs_finished: int
    prs_worked: int
    prs_merged: int
    spend_fully_loaded_usd: float
    api_usd: float
    pr_spend_fully_loaded_usd: float
    pr_spend_marginal_usd: float
    cost_per_accepted_pr_fully_loaded: float | None
    cost_per_accepted_pr_marginal: float | None
    acceptance_rate: float | None
    fallback_rate: float | None
    shadow_jobs: int


def line_of(key: str, report: Report) -> Line:
    """Return a report's headline figures as one row named ``key``."""
    return Line(
        key=key,
        jobs_finished=report.jobs_finished,
        prs_worked=report.prs_worked,
        prs_merged=report.prs_merged,
        spend_fully_loaded_usd=report.spend_fully_loaded_usd,
        api_usd=sum(s.api_usd for s in report.spend) + report.shadow.api_usd,
        pr_spend_fully_loaded_usd=report.pr_spend_fully_loaded_usd,
        pr_spend_marginal_usd=report.pr_spend_marginal_usd,
        cost_per_accepted_pr_fully_loaded=report.cost_per_accepted_pr_fully_loaded,
        cost_per_accepted_pr_marginal=report.cost_per_accepted_pr_marginal,
        acceptance_rate=report.acceptance_rate,
        fallback_rate=report.fallback_rate,
        shadow_jobs=report.shadow.jobs,
    )


def report_of(
    rows: Rows,
    policy: Policy,
    since: datetime | None,
    until: datetime,
    *,
    scope: Scope = Scope(),
    merged_by: datetime | None = None,
) -> Report:
    """Compute the report for one window and scope from loaded rows."""
    return compute_report(
        rows.jobs,
        rows.calls,
        rows.outcomes,
        policy,
        since,
        until,
        repo=scope.repo,
        task=scope.task,
        steps=rows.steps,
        feedback=rows.feedback,
        merged_by=merged_by,
    )


def weeks(start: datetime, until: datetime) -> list[tuple[str, datetime, datetime]]:
    """Return the ISO weeks that [start, until) touches, each clipped to the window."""
    monday = datetime.combine(start.date() - timedelta(days=start.weekday()), datetime.min.time())
    at = monday.replace(tzinfo=UTC)
    out = []
    while at < until:
        end = at + timedelta(days=7)
        year, week, _ = at.isocalendar()
        out.append((f"{year}-W{week:02d}", max(at, start), min(end, until)))
        at = end
    return out


def weekly(
    rows: Rows, policy: Policy, since: datetime | None, until: datetime, *, scope: Scope = Scope()
) -> list[tuple[str, Report]]:
    """Return one report per ISO week of the window; a PR merged later in the window counts."""
    start = _start(rows.jobs, rows.calls, since, until)
    return [
        (label, report_of(rows, policy, low, high, scope=scope, merged_by=until))
        for label, low, high in weeks(start, until)
    ]


def breakdown(
    by: str, rows: Rows, policy: Policy, since: datetime | None, until: datetime, *, scope: Scope
) -> list[Line]:
    """Return the ``--by repo|task|week`` rows of the window, in key order."""
    if by == "week":
        return [line_of(label, r) for label, r in weekly(rows, policy, since, until, scope=scope)]
    start = _start(rows.jobs, rows.calls, since, until)
    keys = sorted(
        {
            getattr(j, by)
            for j in rows.jobs
            if _in(j.created_at, start, until) and scope.holds(j.repo, j.task)
        }
        | {
            getattr(c, by)
            for c in rows.calls
            if _in(c.created_at, start, until) and scope.holds(c.repo, c.task)
        }
    )
    out = []
    for key in keys:
        if getattr(scope, by) in (None, key):  # --repo X --by repo: X's row only
            narrowed = dataclasses.replace(scope, **{by: key})
            out.append(line_of(key, report_of(rows, policy, since, until, scope=narrowed)))
    return out


@dataclass(frozen=True)
class RungUse:
    """Say how busy a private tier's rung was and where it breaks even with the API."""

    tier: str
    rung: str
    tokens: int
    capacity_tokens: float
    utilisation: float
    breakeven_bought: float | None  # None: no API price to compare with
    breakeven_rented: float | None


def rung_use(
    calls: Sequence[CallRow],
    policy: Policy,
    start: datetime,
    until: datetime,
    *,
    api_usd_per_token: float | None,
) -> tuple[RungUse, ...]:
    """Return each rung-backed private tier's utilisation in [start, until), shadow work in.

    Break-even is the utilisation at which the same tokens bought from the API would cost
    what the rung costs (``policies.costs.rung_economics``).
    """
    months = max((until - start).total_seconds(), 0.0) / SECONDS_PER_MONTH
    out = []
    for name, tier in policy.tiers.items():
        if not tier.private or tier.rung is None:
            continue
        rung = policy.rungs[tier.rung]
        tokens = sum(c.tokens for c in calls if c.tier == name and _in(c.created_at, start, until))
        capacity = capacity_tokens_per_month(rung) * months
        econ = rung_economics(
            tier.rung, rung, tokens_per_month=0.0, api_usd_per_token=api_usd_per_token or 0.0
        )
        priced = api_usd_per_token is not None and api_usd_per_token > 0
        out.append(
            RungUse(
                tier=name,
                rung=tier.rung,
                tokens=tokens,
                capacity_tokens=capacity,
                utilisation=tokens / capacity if capacity else 0.0,
                breakeven_bought=econ.breakeven_utilization_bought if priced else None,
                breakeven_rented=econ.breakeven_utilization_rented if priced else None,
            )
        )
    return tuple(out)


def displaced_price(policy: Policy, calls: Sequence[CallRow]) -> tuple[float | None, str]:
    """Return USD per token that the private work would cost on the first API tier, and how.

    The tier's policy prices, blended at the private calls' own prompt share; else what the
    window's calls on that tier cost per token; else litellm's price map (a slow import,
    so last). None, with the reason, when no API tier has a price.
    """
    name, api = next(((n, t) for n, t in policy.tiers.items() if not t.private), ("", None))
    if api is None:
        return None, "no API tier in the policy to compare with"
    private = [c for c in calls if c.private]
    total = sum(c.tokens for c in private)
    share = sum(c.prompt_tokens for c in private) / total if total else DEFAULT_PROMPT_SHARE
    if api.price.input_per_mtok is not None and api.price.output_per_mtok is not None:
        blended = share * api.price.input_per_mtok + (1 - share) * api.price.output_per_mtok
        return blended / 1e6, f"{name}'s policy price"
    seen = [c for c in calls if c.tier == name and c.tokens]
    if seen:
        observed = sum(c.cost_usd for c in seen) / sum(c.tokens for c in seen)
        return observed, f"what {name} calls cost per token in the window"
    from workers.llm import price_per_token

    try:
        prompt_price, completion_price = price_per_token(api.models[0], api.price)
    except ConfigError as exc:
        return None, str(exc)
    return share * prompt_price + (1 - share) * completion_price, f"{name}'s list price"


@dataclass(frozen=True)
class BudgetStatus:
    """Say what one installation spent on external tiers this month, and where it is heading."""

    installation_id: int
    month: str
    budget_usd: float
    spent_usd: float
    left_usd: float
    projected_usd: float


def month_start(at: datetime) -> datetime:
    """Return midnight UTC on the first day of ``at``'s month."""
    return at.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def budget_status(
    jobs: Sequence[JobRow], calls: Sequence[CallRow], policy: Policy, at: datetime
) -> tuple[BudgetStatus, ...]:
    """Return each installation's external spend this month, what is left, and the projection.

    The budget caps every call that leaves the private tiers, shadow jobs' too, as the
    budget gate does; the projection extends the month so far at the same daily rate.
    """
    start = month_start(at)
    following = (start + timedelta(days=32)).replace(day=1)
    elapsed = (at - start) / (following - start)
    owner = {j.job_key: j.installation_id for j in jobs}
    spent: dict[int, float] = defaultdict(float)
    for job in jobs:  # every installation with work this month shows, spent or not
        if _in(job.created_at, start, following):
            spent[job.installation_id] += 0.0
    for call in calls:
        if not call.private and call.job_key in owner and _in(call.created_at, start, at):
            spent[owner[call.job_key]] += call.cost_usd
    cap = policy.budgets.monthly_frontier_usd
    return tuple(
        BudgetStatus(
            installation_id=key,
            month=start.strftime("%Y-%m"),
            budget_usd=cap,
            spent_usd=value,
            left_usd=max(cap - value, 0.0),
            projected_usd=value / elapsed if elapsed > 0 else value,
        )
        for key, value in sorted(spent.items())
    )


# ---- presentation --------------------------------------------------------------------------

TEXT_TEMPLATE = """\
cibot report  {since} .. {until}{repo}

Cost per accepted PR   {cpa_full} fully loaded   ({cpa_low} marginal)
PRs worked on          {worked}
PRs merged             {merged}
Spend on those PRs     {pr_spend}

Spend by tier
{spend}

Total spend            {total}
Tier split             {split}
Fallback rate          {fallback}   ({jobs} finished jobs)
Fallback reasons       {reasons}
Task success rate      {success}   {by_task}
Results accepted       {accepted}
  by signal            {signals}
Generated tests        {tests}
Shadow jobs            {shadow}
"""
NO_PRS = "n/a: no PRs worked on in the window"
NO_SIGNALS = "none yet"
NO_SHADOW = "none"


def render_text(report: Report) -> str:
    """Render the report as a plain-text page."""
    header = "  tier       kind      calls     tokens   API $  marginal $  fully loaded $"
    lines = [header] + [
        f"  {s.tier:<9}  {'private' if s.private else 'API':<8} {s.calls:>6} {s.tokens:>10} "
        f"{s.api_usd:>7.2f} {s.marginal_usd:>11.4f} {s.fully_loaded_usd:>15.2f}"
        + (f"   (rung ${s.window_cost_usd:,.2f} for the window)" if s.private else "")
        + (f", ${s.idle_usd:,.2f} of it idle" if s.idle_usd and report.idle_usd else "")
        for s in report.spend
    ]
    return TEXT_TEMPLATE.format(
        since=report.since.date().isoformat(),
        until=report.until.date().isoformat(),
        repo=_scope_text(report),
        cpa_full=money(report.cost_per_accepted_pr_fully_loaded),
        cpa_low=money(report.cost_per_accepted_pr_marginal),
        worked=report.prs_worked,
        merged=report.prs_merged,
        pr_spend=_pr_spend(report),
        spend="\n".join(lines),
        total=_total(report),
        split=", ".join(f"{t} {v:.0%}" for t, v in report.tier_split.items()) or "n/a",
        fallback=pct(report.fallback_rate),
        jobs=report.jobs_finished,
        reasons=", ".join(f"{r} {n}" for r, n in report.fallback_reasons.items()) or "none",
        success=pct(report.success_rate),
        by_task=", ".join(f"{t} {v:.0%}" for t, v in report.success_by_task.items()),
        accepted=_accepted(report),
        signals=_signals(report.acceptance_by_signal),
        tests=_tests_text(report.tests),
        shadow=_shadow_text(report.shadow),
    )


def _scope_text(report: Report) -> str:
    """Say which repo and task the report is narrowed to."""
    return (f"  repo {report.repo}" if report.repo else "") + (
        f"  task {report.task}" if report.task else ""
    )


def _pr_spend(report: Report) -> str:
    """Say what the PRs cost, or that there were none (not a misleading $0.00)."""
    if not report.prs_worked:
        return NO_PRS
    full, low = money(report.pr_spend_fully_loaded_usd), money(report.pr_spend_marginal_usd)
    return f"{full} fully loaded   ({low} marginal)"


def _total(report: Report) -> str:
    """Say the window's whole bill and how much of it was idle rung time and shadow work."""
    parts = []
    if report.idle_usd:
        parts.append(f"{money(report.idle_usd)} idle rung time")
    if report.shadow.fully_loaded_usd:
        parts.append(f"{money(report.shadow.fully_loaded_usd)} shadow jobs")
    of_it = f"   (of it: {', '.join(parts)})" if parts else ""
    return f"{money(report.spend_fully_loaded_usd)} fully loaded{of_it}"


def _accepted(report: Report) -> str:
    """Say how many posted results got a positive signal."""
    if not report.results_posted:
        return "n/a: no results posted in the window"
    return (
        f"{report.results_accepted} of {report.results_posted} posted results "
        f"({pct(report.acceptance_rate)}); PRs with a positive signal {report.prs_signalled}"
    )


def _signals(counts: Mapping[str, SignalCount]) -> str:
    """List each signal kind's rows for and against."""
    return (
        ", ".join(
            f"{k} +{c.positive} -{c.negative}" + (f" ={c.neutral}" if c.neutral else "")
            for k, c in counts.items()
        )
        or NO_SIGNALS
    )


def _tests_text(tests: TestsFigures) -> str:
    """Say how generated tests fared: passed in the sandbox, merged by people."""
    if not tests.finished:
        return "n/a: no tests jobs finished"
    return (
        f"{tests.passed} of {tests.finished} passed in the sandbox, {tests.merged} merged "
        "(CI after the commit is not recorded)"
    )


def _shadow_text(shadow: ShadowSummary) -> str:
    """Say what the shadow jobs ran and cost; they are in no other figure."""
    if not shadow.jobs:
        return NO_SHADOW
    tiers = ", ".join(f"{t} {n}" for t, n in shadow.by_tier.items())
    return (
        f"{shadow.jobs} ({tiers}), {money(shadow.fully_loaded_usd)} fully loaded; "
        "in no figure above but the total"
    )


def money(value: float | None) -> str:
    """Format dollars (cents, or four places under a dollar), or n/a."""
    if value is None:
        return "n/a"
    return f"${value:,.4f}" if 0 < abs(value) < 1 else f"${value:,.2f}"


def pct(value: float | None) -> str:
    """Format a rate, or n/a."""
    return "n/a" if value is None else f"{value:.1%}"


LINE_HEADER = (
    f"{'{by}':<24} {'jobs':>5} {'PRs':>5} {'merged':>6} {'spend $':>10} {'API $':>9} "
    f"{'$/accepted PR':>14} {'marginal':>10} {'accepted':>9} {'fallback':>9} {'shadow':>6}"
)


def render_lines(by: str, lines: Sequence[Line]) -> str:
    """Render a ``--by`` view as a text table."""
    out = [LINE_HEADER.replace("{by}", by)]
    for row in lines:
        out.append(
            f"{row.key:<24} {row.jobs_finished:>5} {row.prs_worked:>5} {row.prs_merged:>6} "
            f"{row.spend_fully_loaded_usd:>10,.2f} {row.api_usd:>9,.2f} "
            f"{money(row.cost_per_accepted_pr_fully_loaded):>14} "
            f"{money(row.cost_per_accepted_pr_marginal):>10} {pct(row.acceptance_rate):>9} "
            f"{pct(row.fallback_rate):>9} {row.shadow_jobs:>6}"
        )
    if not lines:
        out.append("(no jobs in the window)")
    return "\n".join(out) + "\n"


def write_csv(by: str, lines: Sequence[Line], out: IO[str]) -> None:
    """Write the rows as CSV with a header; empty cells where a figure is n/a."""
    names = [f.name for f in dataclasses.fields(Line)]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([by, *names[1:]])
    for row in lines:
        writer.writerow(["" if v is None else v for v in dataclasses.astuple(row)])


# ---- CLI -------------------------------------------------------------------------------------


def parse_when(text: str, *, flag: str) -> datetime:
    """Parse an ISO date or datetime as UTC, or raise InputError naming the flag."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        try:
            value = datetime.combine(date.fromisoformat(text), datetime.min.time())
        except ValueError as exc:
            raise InputError(f"{flag} {text!r} is not a date: use YYYY-MM-DD") from exc
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``cibot report``'s flags."""
    parser.add_argument("--since", help="start of the window, YYYY-MM-DD (default: all time)")
    parser.add_argument("--until", help="end of the window, exclusive (default: now)")
    parser.add_argument("--repo", help="only this owner/name")
    parser.add_argument("--task", help="only this task (summary, review, ci, tests, deps, ...)")
    parser.add_argument("--by", choices=VIEWS, help="one row per repo, task or ISO week")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--csv", action="store_true", help="print CSV rows (one per --by key)")


def load_feedback(ledger: Any, *, until: datetime | None = None) -> list[FeedbackRow]:
    """Read every feedback row before ``until``, naming the task of the job it is on.

    A row that carries no task takes the task of the job whose sticky comment it is on.
    """
    from sqlalchemy import select

    from workers.ledger import FeedbackRecord, JobRecord, as_utc

    sticky = (
        select(JobRecord.repo, JobRecord.comment_id, JobRecord.task)
        .where(JobRecord.comment_id.is_not(None))
        .distinct()
        .subquery()
    )
    query = select(
        FeedbackRecord.repo,
        FeedbackRecord.pr_number,
        FeedbackRecord.task,
        sticky.c.task.label("job_task"),
        FeedbackRecord.signal,
        FeedbackRecord.value,
        FeedbackRecord.at,
    ).outerjoin(
        sticky,
        (sticky.c.comment_id == FeedbackRecord.comment_id) & (sticky.c.repo == FeedbackRecord.repo),
    )
    if until is not None:
        query = query.where(FeedbackRecord.at < until)
    with ledger.engine.connect() as conn:
        rows = conn.execute(query.order_by(FeedbackRecord.id)).all()
    return [
        FeedbackRow(repo, pr, task or (job_task or ""), signal, value, as_utc(at))
        for repo, pr, task, job_task, signal, value, at in rows
    ]


def load_rows(ledger: Any, *, since: datetime | None, until: datetime) -> Rows:
    """Read the window's jobs, calls, steps, and every outcome and feedback row before its end."""
    jobs, calls, outcomes = ledger.rows(since=since, until=until)
    return Rows(
        jobs=jobs,
        calls=calls,
        outcomes=outcomes,
        steps=ledger.step_rows(since=since, until=until),
        feedback=load_feedback(ledger, until=until),
    )


def load_report(
    ledger: Any,
    policy: Policy,
    *,
    since: datetime | None,
    until: datetime,
    repo: str | None,
    task: str | None = None,
) -> Report:
    """Read the window's rows from the ledger and compute the report."""
    rows = load_rows(ledger, since=since, until=until)
    return report_of(rows, policy, since, until, scope=Scope(repo, task))


def run(args: argparse.Namespace) -> int:
    """Read the ledger named by CIBOT_DATABASE_URL and print the report or a ``--by`` view."""
    from bot.kernel.settings import Settings
    from policies.loading import load_policy
    from workers.ledger import Ledger

    since = parse_when(args.since, flag="--since") if args.since else None
    until = parse_when(args.until, flag="--until") if args.until else datetime.now(UTC)
    if since is not None and since >= until:
        raise InputError("--since must be before --until")
    settings = Settings.from_env()
    policy = load_policy(settings.policy_path, overrides=settings.tier_overrides)
    ledger = Ledger(settings.database_url)
    try:
        rows = load_rows(ledger, since=since, until=until)
    finally:
        ledger.close()
    scope = Scope(args.repo, getattr(args, "task", None))
    by = getattr(args, "by", None)
    if by or getattr(args, "csv", False):
        return _print_lines(args, by, rows, policy, since, until, scope)
    report = report_of(rows, policy, since, until, scope=scope)
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    return 0


def _print_lines(
    args: argparse.Namespace,
    by: str | None,
    rows: Rows,
    policy: Policy,
    since: datetime | None,
    until: datetime,
    scope: Scope,
) -> int:
    """Print a ``--by`` view (or the one-row ``--csv`` total) as a table, JSON or CSV."""
    if by:
        lines = breakdown(by, rows, policy, since, until, scope=scope)
    else:
        lines = [line_of("all", report_of(rows, policy, since, until, scope=scope))]
    name = by or "window"
    if args.csv:
        write_csv(name, lines, sys.stdout)
    elif args.json:
        json.dump({"by": name, "rows": [asdict(x) for x in lines]}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_lines(name, lines))
    return 0
