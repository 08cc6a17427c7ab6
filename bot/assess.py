"""Run ``cibot assess``: replay a repo's history through the router and the cost model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bot.errors import InputError
from bot.settings import Settings
from policies.loading import load_policy
from policies.model import Policy
from workers import history, tokens

HEADER = """\
cibot assess: {changes} changes ({merges} merges counted as PRs) over {months} months, \
about {per_month} changes a month; {tasks} tasks routed"""
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot assess``."""
    parser.add_argument("--repo", default=".", help="path of a local git repository (default: .)")
    parser.add_argument(
        "--last", type=int, default=200, help="how many changes to replay (default 200)"
    )
    parser.add_argument("--policy", help="operator policy YAML (default: CIBOT_POLICY or built-in)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def tier_prices(policy: Policy) -> history.Prices:
    """Return USD per token for each tier's first model: policy price, else litellm's map."""
    prices: history.Prices = {}
    for name, tier in policy.tiers.items():
        given = tier.price
        if given.input_per_mtok is not None and given.output_per_mtok is not None:
            prices[name] = (given.input_per_mtok / 1e6, given.output_per_mtok / 1e6)
        elif not tier.private:
            from workers.llm import price_per_token

            prices[name] = price_per_token(tier.models[0])
    return prices


def run(args: argparse.Namespace) -> int:
    """Walk the history, route and price every task, and print the report."""
    settings = Settings.from_env()
    policy = load_policy(
        Path(args.policy) if args.policy else settings.policy_path,
        overrides=settings.tier_overrides,
    )
    if args.last < 1:
        raise InputError("--last must be at least 1")
    changes = history.walk(Path(args.repo), args.last)
    report = assess(changes, policy, total=args.last)
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0


def assess(changes: Any, policy: Policy, *, total: int | None = None) -> dict[str, Any]:
    """Replay changes with a progress bar on a terminal and summarize them."""
    from tqdm import tqdm

    prices = tier_prices(policy)
    progress = tqdm(changes, total=total, unit="change", file=sys.stderr, disable=None, leave=False)
    tally = history.replay(iter(progress), policy, prices, tokens.count)
    report = history.summarize(tally, policy)
    report["prices_usd_per_mtok"] = {t: [round(p * 1e6, 4) for p in v] for t, v in prices.items()}
    return report


def render(report: dict[str, Any]) -> str:
    """Format the report for a terminal."""
    lines = [
        HEADER.format(
            changes=report["changes"],
            merges=report["merges_as_prs"],
            months=report["months_observed"],
            per_month=report["changes_per_month"],
            tasks=report["tasks"],
        ),
        "",
        "Share of tasks on each tier",
    ]
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
    spend = report["monthly_spend_usd"]
    lines += ["", SPEND.format(frontier=spend["frontier_only_api"])]
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
    return "\n".join(lines)


def _percent(value: float | None) -> str:
    """Format a ratio as a percentage, or say it is undefined."""
    return "n/a" if value is None else f"{value:.1%}"
