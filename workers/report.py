"""Print the ledger's figures: spend by tier, PRs worked and merged, cost per accepted PR.

``compute_report`` is pure: it takes ledger rows and the policy and does no I/O. Private
tiers are priced two ways. *Fully loaded*: the rung's monthly cost for the window's share of
a month, allocated over the private tokens actually served in the window, so idle GPUs show
up as cost. *Marginal*: the rung's cost per token at full utilization. The fallback rate is
the share of finished jobs that changed tier at least once; the top reasons count the
steps of those walks (``fallback_steps`` in the ledger).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from bot.errors import InputError
from policies.costs import SECONDS_PER_MONTH, bought_monthly, private_call_cost
from policies.model import Policy
from workers.ledger import (
    DROPPED,
    FAILED,
    QUEUED,
    SUCCEEDED,
    CallRow,
    JobRow,
    OutcomeRow,
    StepRow,
)

PrKey = tuple[str, int]
TOP_REASONS = 5


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

    def to_json(self) -> dict[str, Any]:
        """Return the report as JSON-safe data."""
        data = asdict(self)
        data["since"] = self.since.isoformat()
        data["until"] = self.until.isoformat()
        data["spend"] = {
            s.tier: {k: v for k, v in asdict(s).items() if k != "tier"} for s in self.spend
        }
        return data


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
) -> Report:
    """Compute the report for [since, until); rows may cover every repo (allocation needs it)."""
    stamps = [j.created_at for j in jobs] + [c.created_at for c in calls]
    start = since or min(stamps, default=until)
    months = max((until - start).total_seconds(), 0.0) / SECONDS_PER_MONTH
    jobs = [j for j in jobs if _in(j.created_at, start, until)]
    calls = [c for c in calls if _in(c.created_at, start, until)]
    allocated = _allocate(calls, policy, months)
    marginal = {id(c): _marginal(c, policy) for c in calls}
    mine = [c for c in calls if repo in (None, c.repo)]
    jobs = [j for j in jobs if repo in (None, j.repo)]
    worked = {
        (j.repo, j.pr_number)
        for j in jobs
        if j.pr_number is not None and j.status not in (DROPPED, QUEUED)
    }
    merged = worked & _merged(outcomes, until)
    on_prs = [c for c in mine if (c.repo, c.pr_number) in worked]
    full = sum(allocated.get(id(c), c.cost_usd) for c in on_prs)
    low = sum(marginal.get(id(c), c.cost_usd) for c in on_prs)
    finished = [j for j in jobs if j.status in (SUCCEEDED, FAILED)]
    walked = _steps_of(finished, steps)
    return Report(
        since=start,
        until=until,
        repo=repo,
        spend=_spend(mine, calls, policy, months, allocated, marginal, filtered=repo is not None),
        prs_worked=len(worked),
        prs_merged=len(merged),
        pr_spend_fully_loaded_usd=full,
        pr_spend_marginal_usd=low,
        cost_per_accepted_pr_fully_loaded=full / len(merged) if merged else None,
        cost_per_accepted_pr_marginal=low / len(merged) if merged else None,
        tier_split=_shares(Counter(j.tier for j in finished)),
        jobs_finished=len(finished),
        fallback_rate=_rate(sum(1 for j in finished if j.fallbacks > 0), len(finished)),
        success_rate=_rate(sum(1 for j in finished if j.status == SUCCEEDED), len(finished)),
        success_by_task=_success_by_task(finished),
        fallback_steps=len(walked),
        fallback_reasons=dict(Counter(s.reason for s in walked).most_common(TOP_REASONS)),
    )


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
    every: Sequence[CallRow],
    policy: Policy,
    months: float,
    allocated: dict[int, float],
    marginal: dict[int, float],
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
        window = (monthly or 0.0) * months
        idle = window if monthly is not None and not any(c.tier == tier for c in every) else 0.0
        out.append(
            TierSpend(
                tier=tier,
                private=policy.tiers[tier].private,
                calls=len(rows),
                tokens=sum(c.tokens for c in rows),
                api_usd=sum(c.cost_usd for c in rows if not c.private),
                marginal_usd=sum(marginal.get(id(c), c.cost_usd) for c in rows),
                fully_loaded_usd=sum(allocated.get(id(c), c.cost_usd) for c in rows)
                + (0.0 if filtered else idle),
                window_cost_usd=window,
                idle_usd=idle,
            )
        )
    return tuple(out)


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


# ---- presentation --------------------------------------------------------------------------

TEXT_TEMPLATE = """\
cibot report  {since} .. {until}{repo}

Cost per accepted PR   {cpa_full} fully loaded   ({cpa_low} marginal)
PRs worked on          {worked}
PRs merged             {merged}
Spend on those PRs     {pr_full} fully loaded   ({pr_low} marginal)

Spend by tier
{spend}

Tier split             {split}
Fallback rate          {fallback}   ({jobs} finished jobs)
Fallback reasons       {reasons}
Task success rate      {success}   {by_task}
"""


def render_text(report: Report) -> str:
    """Render the report as a plain-text page."""
    header = "  tier       kind      calls     tokens   API $  marginal $  fully loaded $"
    lines = [header] + [
        f"  {s.tier:<9}  {'private' if s.private else 'API':<8} {s.calls:>6} {s.tokens:>10} "
        f"{s.api_usd:>7.2f} {s.marginal_usd:>11.4f} {s.fully_loaded_usd:>15.2f}"
        + (f"   (rung ${s.window_cost_usd:,.2f} for the window)" if s.private else "")
        for s in report.spend
    ]
    return TEXT_TEMPLATE.format(
        since=report.since.date().isoformat(),
        until=report.until.date().isoformat(),
        repo=f"  repo {report.repo}" if report.repo else "",
        cpa_full=_money(report.cost_per_accepted_pr_fully_loaded),
        cpa_low=_money(report.cost_per_accepted_pr_marginal),
        worked=report.prs_worked,
        merged=report.prs_merged,
        pr_full=_money(report.pr_spend_fully_loaded_usd),
        pr_low=_money(report.pr_spend_marginal_usd),
        spend="\n".join(lines),
        split=", ".join(f"{t} {v:.0%}" for t, v in report.tier_split.items()) or "n/a",
        fallback=_pct(report.fallback_rate),
        jobs=report.jobs_finished,
        reasons=", ".join(f"{r} {n}" for r, n in report.fallback_reasons.items()) or "none",
        success=_pct(report.success_rate),
        by_task=", ".join(f"{t} {v:.0%}" for t, v in report.success_by_task.items()),
    )


def _money(value: float | None) -> str:
    """Format dollars (cents, or four places under a dollar), or n/a."""
    if value is None:
        return "n/a"
    return f"${value:,.4f}" if 0 < abs(value) < 1 else f"${value:,.2f}"


def _pct(value: float | None) -> str:
    """Format a rate, or n/a."""
    return "n/a" if value is None else f"{value:.1%}"


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
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def load_report(
    ledger: Any, policy: Policy, *, since: datetime | None, until: datetime, repo: str | None
) -> Report:
    """Read the window's rows from the ledger and compute the report."""
    jobs, calls, outcomes = ledger.rows(since=since, until=until)
    steps = ledger.step_rows(since=since, until=until)
    return compute_report(jobs, calls, outcomes, policy, since, until, repo=repo, steps=steps)


def run(args: argparse.Namespace) -> int:
    """Read the ledger named by CIBOT_DATABASE_URL and print the report."""
    from bot.settings import Settings
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
        report = load_report(ledger, policy, since=since, until=until, repo=args.repo)
    finally:
        ledger.close()
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(report))
    return 0
