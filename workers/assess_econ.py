"""Decide from a replayed history: the verdict, each rung's pay-off volume, the per-task table.

Everything here is pure arithmetic on a ``Workload``: what one month of changes sends, by
task and tier. A rung "pays off" at the monthly volume where the API spend it removes
(against API-first, where private-tier work runs on the cheapest API tier instead) equals
its monthly cost; it "never" pays off when one rung fills up before that volume.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from policies.costs import SECONDS_PER_MONTH, bought_monthly
from policies.model import Policy, Rung
from workers import history

VERDICT = "Verdict: {word}. {why} {rungs}"
WHY = {
    "API-first": "At {volume} PRs a month ({tasks} tasks) no H200 rung pays for itself: "
    "run every task on APIs, the routine ones on {cheap}.",
    "hybrid": "At {volume} PRs a month ({tasks} tasks) {rung} saves ${saving} a month against "
    "API-first: serve the local tier on it and keep escalations on APIs.",
    "self-host-first": "At {volume} PRs a month ({tasks} tasks) {rung} saves ${saving} a month "
    "against API-first: serve local and mid work on it and send only frontier escalations out.",
}
PAYS_OFF = "{rung} pays off at {volume} PRs/month ({times} this volume)"
NEVER = "{rung} never on one rung (it is full at {full} PRs/month, before it pays off)"
NO_SAVING = "{rung} never (it moves no API spend)"


@dataclass
class Workload:
    """Hold one month of work: per (task, tier) cells, the PRs and tasks they came from."""

    cells: dict[tuple[str, str], history.Cell] = field(default_factory=dict)
    prs: float = 0.0  # changes a month, each counted as one PR
    tasks: float = 0.0

    def add(self, other: Workload) -> None:
        """Add another repository's month to this one."""
        for key, cell in other.cells.items():
            self.cells.setdefault(key, history.Cell()).add(cell)
        self.prs += other.prs
        self.tasks += other.tasks


def monthly(tally: history.Tally) -> Workload:
    """Scale a tally to one month at the observed rate of change."""
    months = history.months_observed(tally)
    cells = {}
    for key, cell in tally.cells.items():
        scaled = history.Cell()
        for name in scaled.__dataclass_fields__:
            setattr(scaled, name, getattr(cell, name) / months)
        cells[key] = scaled
    return Workload(cells, tally.changes / months, sum(tally.tiers.values()) / months)


def at_volume(work: Workload, volume: float) -> Workload:
    """Rescale a month of work to ``volume`` PRs a month, keeping the mix per PR."""
    if work.prs <= 0:
        return work
    factor = volume / work.prs
    cells = {}
    for key, cell in work.cells.items():
        scaled = history.Cell()
        for name in scaled.__dataclass_fields__:
            setattr(scaled, name, getattr(cell, name) * factor)
        cells[key] = scaled
    return Workload(cells, volume, work.tasks * factor)


def private_tiers(rung: Rung, policy: Policy) -> frozenset[str]:
    """Return the tiers a rung serves: local on 1x; local and mid (a mid-class model) above."""
    private = {"local"} | ({"mid"} if rung.gpus > 1 else set())
    return frozenset(private | {t for t in ("mid", "frontier") if policy.tiers[t].private})


def rung_cost(rung: Rung, gpu_cost: str) -> float:
    """Return a rung's monthly cost: the bought midpoint (4-year depreciation) or rented."""
    return bought_monthly(rung) if gpu_cost == "bought" else rung.rented_monthly_usd


@dataclass(frozen=True)
class Option:
    """Price one rung against API-first: per-PR figures and where it pays off."""

    rung: str
    private: frozenset[str]
    monthly_cost: float  # the rung alone
    capacity_tokens: float  # a month at full utilization
    api_part_per_pr: float  # what still goes to APIs
    saving_per_pr: float  # API-first spend the rung removes
    private_tokens_per_pr: float

    @property
    def payoff_prs(self) -> float:
        """Return the PRs a month at which the rung's saving equals its cost (inf: none)."""
        return self.monthly_cost / self.saving_per_pr if self.saving_per_pr > 0 else math.inf

    @property
    def full_prs(self) -> float:
        """Return the PRs a month at which one rung runs at full utilization."""
        per = self.private_tokens_per_pr
        return self.capacity_tokens / per if per > 0 else math.inf

    @property
    def pays_off(self) -> bool:
        """Tell whether one rung pays off before it is full."""
        return self.payoff_prs <= self.full_prs

    def spend(self, prs: float) -> float:
        """Return the monthly spend at ``prs``: the API part plus as many rungs as it fills."""
        rungs = max(1, math.ceil(prs / self.full_prs)) if math.isfinite(self.full_prs) else 1
        return self.api_part_per_pr * prs + self.monthly_cost * rungs


def options(work: Workload, policy: Policy, gpu_cost: str) -> list[Option]:
    """Price every rung of the policy, smallest first."""
    prs = work.prs or 1.0
    api_first = sum(c.api_first_usd for c in work.cells.values()) / prs
    out = []
    for name, rung in sorted(policy.rungs.items(), key=lambda item: item[1].gpus):
        private = private_tiers(rung, policy)
        api_part = sum(c.api_usd for (_, t), c in work.cells.items() if t not in private) / prs
        tokens = sum(
            c.prompt_tokens + c.output_tokens for (_, t), c in work.cells.items() if t in private
        )
        out.append(
            Option(
                rung=name,
                private=private,
                monthly_cost=rung_cost(rung, gpu_cost),
                capacity_tokens=rung.throughput_tokens_per_s * SECONDS_PER_MONTH,
                api_part_per_pr=api_part,
                saving_per_pr=api_first - api_part,
                private_tokens_per_pr=tokens / prs,
            )
        )
    return out


def spend(work: Workload, rungs: list[Option]) -> dict[str, float]:
    """Return the monthly spend of each option at the workload's volume."""
    out = {
        "API-first": sum(c.api_first_usd for c in work.cells.values()),
        "frontier-only API": sum(c.frontier_usd for c in work.cells.values()),
    }
    out |= {f"hybrid on {o.rung}": o.spend(work.prs) for o in rungs}
    return out


def verdict(work: Workload, rungs: list[Option], cheap: str) -> tuple[str, str]:
    """Return the verdict's word and its one line."""
    api_first = sum(c.api_first_usd for c in work.cells.values())
    best = min(rungs, key=lambda o: o.spend(work.prs), default=None)
    word = "API-first"
    if best is not None and best.spend(work.prs) < api_first:
        word = "self-host-first" if "mid" in best.private else "hybrid"
    why = WHY[word].format(
        volume=_count(work.prs),
        tasks=_count(work.tasks),
        cheap=cheap,
        rung=best.rung if best else "",
        saving=f"{api_first - best.spend(work.prs):,.0f}" if best else "0",
    )
    return word, VERDICT.format(word=word, why=why, rungs=_rungs(rungs, work.prs) + ".")


def _rungs(rungs: Iterable[Option], volume: float) -> str:
    """Say, for every rung, the volume at which it pays off."""
    parts = []
    for o in rungs:
        if o.saving_per_pr <= 0:
            parts.append(NO_SAVING.format(rung=o.rung))
        elif not o.pays_off:
            parts.append(NEVER.format(rung=o.rung, full=_count(o.full_prs)))
        else:
            times = f"{_count(o.payoff_prs / volume)}×" if volume > 0 else "n/a"
            parts.append(PAYS_OFF.format(rung=o.rung, volume=_count(o.payoff_prs), times=times))
    return "; ".join(parts)


def _count(value: float) -> str:
    """Format a monthly volume: whole numbers, with a decimal under ten."""
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


def option_rows(work: Workload, rungs: list[Option]) -> list[dict[str, Any]]:
    """Return each rung's pay-off figures for the report."""
    tasks_per_pr = work.tasks / work.prs if work.prs else 0.0
    return [
        {
            "rung": o.rung,
            "private_tiers": sorted(o.private),
            "monthly_cost_usd": round(o.monthly_cost, 2),
            "spend_at_volume_usd": round(o.spend(work.prs), 2),
            "saving_per_pr_usd": round(o.saving_per_pr, 6),
            "payoff_prs_per_month": _finite(o.payoff_prs),
            "payoff_tasks_per_month": _finite(o.payoff_prs * tasks_per_pr),
            "full_at_prs_per_month": _finite(o.full_prs),
            "pays_off_on_one_rung": o.pays_off,
        }
        for o in rungs
    ]


def _finite(value: float) -> float | None:
    """Round a figure for JSON; None where it is infinite."""
    return round(value, 1) if math.isfinite(value) else None


def task_rows(work: Workload, policy: Policy, gpu_cost: str) -> list[dict[str, Any]]:
    """Return the per-task × tier table: volume, tokens and dollars per task and per month."""
    rows = []
    for (task, tier), cell in sorted(work.cells.items()):
        n = cell.tasks or 1.0
        usd = (
            cell.api_usd
            if not policy.tiers[tier].private
            else _private(cell, tier, policy, gpu_cost)
        )
        rows.append(
            {
                "task": task,
                "tier": tier,
                "tasks_per_month": round(cell.tasks, 1),
                "calls_per_task": round(cell.calls / n, 2),
                "prompt_tokens_per_task": round(cell.prompt_tokens / n),
                "output_tokens_per_task": round(cell.output_tokens / n),
                "usd_per_task": round(usd / n, 5),
                "usd_per_month": round(usd, 2),
                "api_first_usd_per_task": round(cell.api_first_usd / n, 5),
                "frontier_usd_per_task": round(cell.frontier_usd / n, 5),
            }
        )
    return rows


def _private(cell: history.Cell, tier: str, policy: Policy, gpu_cost: str) -> float:
    """Price private work at its rung's cost per token at full utilization (the marginal cost)."""
    name = policy.tiers[tier].rung
    rung = policy.rungs.get(name) if name else None
    if rung is None:
        return 0.0
    per_token = rung_cost(rung, gpu_cost) / (rung.throughput_tokens_per_s * SECONDS_PER_MONTH)
    return per_token * (cell.prompt_tokens + cell.output_tokens)


def curve(
    work: Workload, rungs: list[Option], points: int = 9
) -> dict[str, list[tuple[str, float]]]:
    """Return monthly spend per option at volumes from a tenth of the pay-off to past it."""
    marks = [o.payoff_prs for o in rungs if o.pays_off] or [work.prs or 1.0]
    top = max(max(marks) * 1.5, work.prs * 1.2, 10.0)
    volumes = [top * i / (points - 1) for i in range(points)]
    per_pr = sum(c.api_first_usd for c in work.cells.values()) / (work.prs or 1.0)
    series: dict[str, list[tuple[str, float]]] = {
        "API-first": [(_count(v), per_pr * v) for v in volumes]
    }
    for o in rungs:
        series[f"hybrid on {o.rung}"] = [(_count(v), o.spend(v)) for v in volumes]
    return series


def assumptions(
    sources: Mapping[str, Any], policy: Policy, prices: history.Prices, gpu_cost: str
) -> list[dict[str, str]]:
    """List what the figures rest on, where each comes from and the flag that changes it."""
    out = [
        _said(
            "tokens per task",
            sources["tokens"],
            "measured: " + sources["tokens_how"],
            "--last N, --repo PATH",
        ),
        _said(
            "output tokens per call",
            ", ".join(f"{t} {policy.tasks[t].expected_output_tokens}" for t in sources["tasks"]),
            "policy tasks.<task>.expected_output_tokens",
            "--policy FILE",
        ),
    ]
    for tier, (inp, outp) in sorted(prices.items()):
        out.append(
            _said(
                f"{tier} API price",
                f"${inp * 1e6:,.2f} in / ${outp * 1e6:,.2f} out per Mtok",
                sources["price_from"].get(tier, "policy"),
                f"--price {tier}=IN,OUT",
            )
        )
    for name, rung in sorted(policy.rungs.items(), key=lambda item: item[1].gpus):
        low, high = rung.bought_monthly_usd
        out.append(
            _said(
                f"{name} cost a month",
                f"${rung_cost(rung, gpu_cost):,.0f} ({gpu_cost}; bought ${low:,.0f}-{high:,.0f} "
                f"over 4 years, rented ${rung.rented_monthly_usd:,.0f})",
                f"policy rungs.{name}",
                "--gpu-cost bought|rented, --policy FILE",
            )
        )
        out.append(
            _said(
                f"{name} throughput",
                f"{rung.throughput_tokens_per_s:,.0f} tokens/s at full batch",
                f"policy rungs.{name}.throughput_tokens_per_s (the policy's own estimate)",
                f"--throughput {name}=TOKENS_PER_S",
            )
        )
    out += [
        _said(
            "what each rung serves",
            "1x: local; 2x and 8x: local and mid; frontier stays on APIs unless private",
            "policy tiers.<tier>.private and the rungs' model classes",
            "--policy FILE",
        ),
        _said("volume", sources["volume"], sources["volume_from"], "--volume PRS_PER_MONTH"),
        _said("what counts as a PR", sources["prs"], "git history", "--prs-only"),
        _said(
            "tasks per PR",
            "summary and review always; tests for a changed public Python function; deps "
            "for a version bump in a manifest",
            "the router's task rules and each job's nothing-to-do check",
            "--policy FILE",
        ),
        _said(
            "rounds per task",
            "one: tests retries and escalations after failed runs are not counted",
            "cibot assess",
            "none",
        ),
    ]
    return out


def _said(what: str, value: str, source: str, flag: str) -> dict[str, str]:
    """Return one assumption."""
    return {"what": what, "value": value, "source": source, "flag": flag}
