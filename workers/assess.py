"""Run ``cibot assess``: replay repos' history through the router, the jobs' prompts and costs.

The report ends in a decision: a one-line verdict (API-first, hybrid or self-host-first)
with the monthly volume at which each H200 rung pays off, a per-task × tier × $ table, and
the assumptions behind them, each with where it comes from and the flag that changes it.
Several ``--repo`` give one report per repository and an organisation total.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.kernel.errors import InputError
from bot.kernel.settings import Settings
from policies import tokens
from policies.loading import load_policy
from policies.model import Policy
from workers import assess_econ as econ
from workers import history

HEADER = """\
cibot assess: {changes} changes ({prs}) over {months} months, \
about {per_month} changes a month; {tasks} tasks routed"""
PRS_MERGES = "{merges} merges counted as PRs"
PRS_BOTH = "{merges} merges and {squash} squash-merge subjects (#N) counted as PRs"
WARNING = "Warning: {text}."
SPEND = """\
Estimated monthly spend at this rate of change
  frontier-only API                 ${frontier:>12,.2f}"""
RUNG = (
    "  hybrid on {rung:<8} bought ${bought:>12,.2f}   rented ${rented:>12,.2f}   "
    "(API part ${api:,.2f}; private: {private})"
)
BREAKEVEN = (
    "  {rung:<8} utilization at this rate {utilization:>8.3%}; breaks even with API-only at "
    "{bought} (bought) / {rented} (rented)"
)
TABLE_HEAD = (
    f"  {'task':<8} {'tier':<9} {'tasks/mo':>9} {'calls':>5} {'in tok':>8} {'out tok':>7} "
    f"{'$/task':>9} {'$/month':>10} {'API-first $/task':>17}"
)
TABLE_ROW = (
    "  {task:<8} {tier:<9} {tasks_per_month:>9,.1f} {calls_per_task:>5.2f} "
    "{prompt_tokens_per_task:>8,} {output_tokens_per_task:>7,} {usd_per_task:>9.4f} "
    "{usd_per_month:>10,.2f} {api_first_usd_per_task:>17.4f}"
)
PAYOFF_HEAD = f"  {'rung':<8} {'$/month':>9} {'pays off at PRs/mo':>19} {'full at PRs/mo':>15}"
PAYOFF_ROW = "  {rung:<8} {monthly_cost_usd:>9,.0f} {payoff:>19} {full:>15}"
CSV_FIELDS = (
    "repo",
    "task",
    "tier",
    "tasks_per_month",
    "calls_per_task",
    "prompt_tokens_per_task",
    "output_tokens_per_task",
    "usd_per_task",
    "usd_per_month",
    "api_first_usd_per_task",
    "frontier_usd_per_task",
)
PLOT_SUFFIXES = (".svg",)
TOKENS_FROM = {"jobs": "the jobs' own prompts", "added-lines": "the added-lines estimate"}
TOTAL = "all repositories"


@dataclass(frozen=True)
class Knobs:
    """Hold the flags that change the economics, not the replay."""

    gpu_cost: str = "bought"
    volume: float | None = None
    prs_only: bool = False
    measured: bool = True  # tokens from the jobs' own prompts, not the added-lines estimate
    price_from: dict[str, str] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot assess``."""
    parser.add_argument(
        "--repo",
        action="append",
        help="path of a local git repository; repeat for an organisation roll-up (default: .)",
    )
    parser.add_argument(
        "--last", type=int, default=200, help="how many changes to replay per repo (default 200)"
    )
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the report as JSON")
    out.add_argument("--csv", action="store_true", help="print the per-task table as CSV")
    parser.add_argument("--plot", metavar="FILE", help="write monthly spend per option (.svg)")
    parser.add_argument(
        "--volume", type=float, help="price a month of this many PRs instead of the observed rate"
    )
    parser.add_argument(
        "--prs-only",
        action="store_true",
        help="replay only changes found as PRs (merge commits, squash subjects ending (#N))",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="estimate tokens from added lines instead of the jobs' prompts (faster, and low)",
    )
    parser.add_argument(
        "--gpu-cost",
        choices=("bought", "rented"),
        default="bought",
        help="price rungs bought (4-year depreciation, the default) or rented",
    )
    parser.add_argument(
        "--price",
        action="append",
        default=[],
        metavar="TIER=IN,OUT",
        help="an API tier's price in USD per million input and output tokens",
    )
    parser.add_argument(
        "--throughput",
        action="append",
        default=[],
        metavar="RUNG=TOKENS_PER_S",
        help="a rung's measured throughput at full batch (prompt and completion tokens/s)",
    )


def tier_prices(policy: Policy) -> history.Prices:
    """Return USD per token for each tier's first model: policy price, else litellm's map."""
    return {tier: price for tier, (price, _) in _priced(policy).items()}


def _priced(policy: Policy) -> dict[str, tuple[tuple[float, float], str]]:
    """Return each API tier's price per token and where it came from."""
    prices: dict[str, tuple[tuple[float, float], str]] = {}
    for name, tier in policy.tiers.items():
        given = tier.price
        if given.input_per_mtok is not None and given.output_per_mtok is not None:
            price = (given.input_per_mtok / 1e6, given.output_per_mtok / 1e6)
            prices[name] = (price, f"policy tiers.{name}.price")
        elif not tier.private:
            from workers.llm import price_per_token

            prices[name] = (price_per_token(tier.models[0]), f"litellm's map ({tier.models[0]})")
    return prices


def _pairs(items: Sequence[str], flag: str, size: int) -> dict[str, list[float]]:
    """Parse NAME=V[,V] flag values, or raise InputError naming the flag and the form."""
    out: dict[str, list[float]] = {}
    for item in items:
        name, _, values = item.partition("=")
        try:
            numbers = [float(v) for v in values.split(",")]
        except ValueError:
            numbers = []
        if not name or len(numbers) != size or any(n < 0 for n in numbers):
            form = "TIER=IN,OUT (USD per million tokens)" if size == 2 else "RUNG=TOKENS_PER_S"
            raise InputError(f"{flag} {item!r}: write it as {form}")
        out[name] = numbers
    return out


def adjusted(
    policy: Policy, args: argparse.Namespace
) -> tuple[Policy, history.Prices, dict[str, str]]:
    """Apply --throughput to the policy and --price to the prices; say where each price is from."""
    rungs = dict(policy.rungs)
    for name, (speed,) in _pairs(args.throughput, "--throughput", 1).items():
        if name not in rungs or speed <= 0:
            known = ", ".join(sorted(rungs)) or "none"
            raise InputError(f"--throughput {name}: name a rung of the policy ({known}) and a rate")
        rungs[name] = rungs[name].model_copy(update={"throughput_tokens_per_s": speed})
    policy = policy.model_copy(update={"rungs": rungs})
    priced = _priced(policy)
    for name, (inp, out) in _pairs(args.price, "--price", 2).items():
        if name not in policy.tiers or policy.tiers[name].private:
            raise InputError(f"--price {name}: name an API tier of the policy (mid, frontier)")
        priced[name] = ((inp / 1e6, out / 1e6), "--price")
    return policy, {t: p for t, (p, _) in priced.items()}, {t: w for t, (_, w) in priced.items()}


def run(args: argparse.Namespace) -> int:
    """Walk each repository's history, route and price every task, and print the report."""
    settings = Settings.from_env()
    policy = load_policy(
        Path(args.policy) if args.policy else settings.policy_path,
        overrides=settings.tier_overrides,
    )
    if args.last < 1:
        raise InputError("--last must be at least 1")
    if args.volume is not None and args.volume <= 0:
        raise InputError("--volume must be a positive number of PRs a month")
    if args.plot and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise InputError(f"--plot {args.plot}: only .svg is supported; name the file *.svg")
    policy, prices, price_from = adjusted(policy, args)
    knobs = Knobs(args.gpu_cost, args.volume, args.prs_only, not args.quick, price_from=price_from)
    repos = [Path(p) for p in (args.repo or ["."])]
    walks = [(repo, history.walk(repo, args.last)) for repo in repos]  # refuse bad paths first
    reports = [
        assess(changes, policy, total=args.last, knobs=knobs, prices=prices, repo=repo)
        for repo, changes in walks
    ]
    report = reports[0] if len(reports) == 1 else roll_up(reports, policy, prices, knobs)
    if args.plot:
        Path(args.plot).write_text(plot(report), encoding="utf-8")
    print(_output(report, args))
    return 0


def _output(report: dict[str, Any], args: argparse.Namespace) -> str:
    """Format the report as asked: JSON, CSV or text."""
    if args.json:
        return json.dumps(_public(report), indent=2)
    if args.csv:
        return to_csv(report).rstrip("\n")
    return render(report)


def assess(
    changes: Any,
    policy: Policy,
    *,
    total: int | None = None,
    knobs: Knobs | None = None,
    prices: history.Prices | None = None,
    repo: Path | None = None,
) -> dict[str, Any]:
    """Replay changes with a progress bar on a terminal and summarize them.

    With ``repo`` each task's tokens come from the jobs' own prompts; without it, from the
    added-lines estimate.
    """
    from tqdm import tqdm

    knobs = knobs or Knobs(measured=repo is not None)
    prices = tier_prices(policy) if prices is None else prices
    measure = None
    if repo is not None and knobs.measured:
        from workers.assess_prompts import prompts_for

        measure = prompts_for(repo, policy)
    stream = (c for c in changes if c.pr) if knobs.prs_only else changes
    progress = tqdm(stream, total=total, unit="change", file=sys.stderr, disable=None, leave=False)
    tally = history.replay(iter(progress), policy, prices, tokens.count, measure)
    report = history.summarize(tally, policy)
    report["repo"] = str(repo) if repo is not None else ""
    report["prices_usd_per_mtok"] = {t: [round(p * 1e6, 4) for p in v] for t, v in prices.items()}
    report["per_change"] = tally.rows
    report["_work"] = econ.monthly(tally)
    sources = _sources(tally, report, knobs, measure is not None)
    report |= decide(report["_work"], policy, prices, knobs, sources)
    return report


def _sources(
    tally: history.Tally, report: dict[str, Any], knobs: Knobs, measured: bool
) -> dict[str, Any]:
    """Describe where the measured figures come from, for the assumptions."""
    tasks = sum(c.tasks for c in tally.cells.values())
    prompt = sum(c.prompt_tokens for c in tally.cells.values())
    found = report["prs_found"]
    return {
        "tokens": f"{prompt / tasks:,.0f} prompt tokens per task on average" if tasks else "none",
        "tokens_how": (
            f"the jobs' own packer and prompts on {tally.changes} changes"
            if measured
            else f"added lines plus {history.PROMPT_OVERHEAD_TOKENS} tokens (a rough estimate)"
        ),
        "tasks": sorted({t for t, _ in tally.cells}),
        "price_from": knobs.price_from,
        "volume_from": (
            "--volume"
            if knobs.volume
            else f"observed: {tally.changes} changes over {report['days_observed']} days"
        ),
        "prs": (
            f"{'PRs only' if knobs.prs_only else 'every first-parent change'}; "
            f"{found['merge']} found from merge commits, {found['squash']} from squash subjects (#N)"
        ),
    }


def decide(
    work: econ.Workload,
    policy: Policy,
    prices: history.Prices,
    knobs: Knobs,
    sources: dict[str, Any],
) -> dict[str, Any]:
    """Return the verdict, the rungs' pay-off volumes, the per-task table and the assumptions."""
    if knobs.volume:
        work = econ.at_volume(work, knobs.volume)
    rungs = econ.options(work, policy, knobs.gpu_cost)
    cheap = history.api_first_tier("local", policy, prices) or "an API tier"
    word, line = econ.verdict(work, rungs, cheap)
    volume = f"{work.prs:,.1f} PRs a month ({work.tasks:,.1f} tasks)"
    return {
        "prompt_tokens_from": "jobs"
        if sources["tokens_how"].startswith("the jobs")
        else "added-lines",
        "verdict": word,
        "verdict_line": line,
        "volume_prs_per_month": round(work.prs, 2),
        "volume_tasks_per_month": round(work.tasks, 2),
        "spend_at_volume_usd": {k: round(v, 2) for k, v in econ.spend(work, rungs).items()},
        "rungs": econ.option_rows(work, rungs),
        "per_task": econ.task_rows(work, policy, knobs.gpu_cost),
        "assumptions": econ.assumptions(
            {**sources, "volume": volume}, policy, prices, knobs.gpu_cost
        ),
        "_curve": econ.curve(work, rungs),
    }


def roll_up(
    reports: list[dict[str, Any]], policy: Policy, prices: history.Prices, knobs: Knobs
) -> dict[str, Any]:
    """Add the repositories' months together and decide on the total."""
    work = econ.Workload()
    for report in reports:
        work.add(report["_work"])
    first = reports[0]["assumptions"]
    sources = {
        "tokens": next(a["value"] for a in first if a["what"] == "tokens per task"),
        "tokens_how": next(a["source"] for a in first if a["what"] == "tokens per task")[10:],
        "tasks": sorted({t for t, _ in work.cells}),
        "price_from": knobs.price_from,
        "volume_from": "--volume" if knobs.volume else "the repositories' observed rates, added",
        "prs": "as per repository",
    }
    total = {"repo": TOTAL, "repos": reports, "changes": sum(r["changes"] for r in reports)}
    total["history_warning"] = "; ".join(
        f"{r['repo']}: {r['history_warning']}" for r in reports if r["history_warning"]
    )
    return total | decide(work, policy, prices, knobs, sources)


def _public(report: dict[str, Any]) -> dict[str, Any]:
    """Drop the working figures that are not part of the JSON report."""
    out = {k: v for k, v in report.items() if not k.startswith("_")}
    if "repos" in out:
        out["repos"] = [_public(r) for r in out["repos"]]
    return out


def to_csv(report: dict[str, Any]) -> str:
    """Return the per-task table as CSV: each repository's rows, then the total's."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for part in [*report.get("repos", []), report]:
        for row in part["per_task"]:
            writer.writerow({"repo": part["repo"], **row})
    return buffer.getvalue()


def plot(report: dict[str, Any]) -> str:
    """Return an SVG line chart of monthly spend per option against PRs a month."""
    from workers.charts import line_chart

    return line_chart(
        report["_curve"],
        title="Monthly spend per option, by PRs a month",
        y_label="USD a month",
    )


def render(report: dict[str, Any]) -> str:
    """Format the report for a terminal."""
    if "repos" in report:
        return _render_total(report)
    lines = [_header(report), *_warning(report), report["verdict_line"], ""]
    lines += ["Share of tasks on each tier"]
    lines += [f"  {tier:<9} {share:>7.1%}" for tier, share in report["tier_share"].items()]
    lines += ["", "Escalation reasons, most frequent first"]
    lines += [f"  {count:>6}  {trigger}" for trigger, count in report["escalation_reasons"]] or [
        "  none"
    ]
    lines += ["", f"Sensitive changes ({len(report['sensitive_changes'])})"]
    for item in report["sensitive_changes"][:15]:
        lines.append(f"  {item['commit']}  {', '.join(item['categories'])}: {item['evidence'][0]}")
    if len(report["sensitive_changes"]) > 15:
        lines.append(f"  … and {len(report['sensitive_changes']) - 15} more (use --json for all)")
    lines += ["", *_spend(report), "", *_decision(report)]
    return "\n".join(lines)


def _header(report: dict[str, Any]) -> str:
    """Return the first line: changes, PRs found, span, rate and tasks."""
    found = report["prs_found"]
    prs = (
        PRS_BOTH.format(merges=report["merges_as_prs"], squash=found["squash"])
        if found["squash"]
        else PRS_MERGES.format(merges=report["merges_as_prs"])
    )
    return HEADER.format(
        changes=report["changes"],
        prs=prs,
        months=report["months_observed"],
        per_month=report["changes_per_month"],
        tasks=report["tasks"],
    )


def _warning(report: dict[str, Any]) -> list[str]:
    """Return the short-history warning as a line, or nothing."""
    text = report.get("history_warning", "")
    return [WARNING.format(text=text)] if text else []


def _spend(report: dict[str, Any]) -> list[str]:
    """Return the monthly spend and break-even sections."""
    spend = report["monthly_spend_usd"]
    lines = [SPEND.format(frontier=spend["frontier_only_api"])]
    lines += [
        RUNG.format(
            rung=row["rung"],
            bought=row["bought_usd"],
            rented=row["rented_usd"],
            api=row["api_usd"],
            private="+".join(row["private_tiers"]),
        )
        for row in spend["hybrid"]
    ]
    lines += ["", "Break-even utilization of each rung against API-only"]
    lines += [
        BREAKEVEN.format(
            rung=row["rung"],
            utilization=row["utilization"],
            bought=_percent(row["breakeven_utilization_bought"]),
            rented=_percent(row["breakeven_utilization_rented"]),
        )
        for row in spend["hybrid"]
    ]
    return lines


def _decision(report: dict[str, Any]) -> list[str]:
    """Return the per-task table, the rungs' pay-off volumes and the assumptions."""
    source = TOKENS_FROM[report["prompt_tokens_from"]]
    lines = [
        f"Per task and tier, a month at {report['volume_prs_per_month']:,.1f} PRs "
        f"(tokens from {source})",
        TABLE_HEAD,
        *(TABLE_ROW.format(**row) for row in report["per_task"]),
        "  (private tiers: their rung's cost per token at full utilization)",
        "",
        "Where each rung pays off against API-first",
        PAYOFF_HEAD,
    ]
    for row in report["rungs"]:
        payoff = _volume(row["payoff_prs_per_month"]) if row["pays_off_on_one_rung"] else "never"
        full = _volume(row["full_at_prs_per_month"])
        lines.append(PAYOFF_ROW.format(**row, payoff=payoff, full=full))
    lines += ["", "Assumptions (what / value / from / flag)"]
    lines += [
        f"  {a['what']}: {a['value']} [{a['source']}; change with {a['flag']}]"
        for a in report["assumptions"]
    ]
    return lines


def _render_total(report: dict[str, Any]) -> str:
    """Format an organisation roll-up: one block per repository, then the total's decision."""
    lines = [f"cibot assess: {len(report['repos'])} repositories, {report['changes']} changes"]
    for part in report["repos"]:
        lines += ["", f"{part['repo']}", f"  {_header(part)}", *(f"  {w}" for w in _warning(part))]
        lines.append(f"  {part['verdict_line']}")
    lines += ["", f"Total: {report['verdict_line']}", "", *_decision(report)]
    return "\n".join(lines)


def _volume(value: float | None) -> str:
    """Format a volume, or say there is none."""
    return "n/a" if value is None else f"{value:,.0f}"


def _percent(value: float | None) -> str:
    """Format a ratio as a percentage, or say it is undefined."""
    return "n/a" if value is None else f"{value:.1%}"
