"""Replay a repository's history through the router and the cost model, offline."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from bot.errors import InputError
from policies import deps
from policies.costs import SECONDS_PER_MONTH, api_call_cost, rung_economics
from policies.evidence import Evidence, FileChange, evidence_from_diff
from policies.model import Policy
from policies.routing import Decision, route_many

HEADER = re.compile(
    rb"^\x00cibot-commit (?P<sha>[0-9a-f]{40}) (?P<parents>[0-9a-f ]*)\x01(?P<ts>\d+)$"
)
LOG_FORMAT = "%x00cibot-commit %H %P%x01%ct"
PROMPT_OVERHEAD_TOKENS = 700  # system prompt, instructions and delimiters around the diff
MAX_DIFF_BYTES = 8 * 1024 * 1024  # a single change larger than this is counted by its first 8 MiB
TEST_PATH = re.compile(r"(^|/)(tests?/|test_[^/]*\.py$|[^/]*_test\.py$|conftest\.py$)")

Prices = dict[str, tuple[float, float]]  # tier -> (input, output) USD per token, for API tiers


@dataclass(frozen=True)
class Change:
    """Hold one change from history: a merge (a PR) or a plain commit."""

    sha: str
    timestamp: int
    is_merge: bool
    diff: bytes


@dataclass
class Tally:
    """Accumulate what the replay saw."""

    changes: int = 0
    merges: int = 0
    skipped: int = 0
    first_ts: int | None = None
    last_ts: int | None = None
    tiers: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    sensitive: list[dict[str, Any]] = field(default_factory=list)
    tokens_by_tier: Counter[str] = field(default_factory=Counter)
    api_cost_by_tier: dict[str, float] = field(default_factory=dict)
    frontier_only_cost: float = 0.0
    frontier_only_tokens: int = 0


def open_repo(path: Path) -> Any:
    """Open a git repository with gitpython, or raise InputError saying what is wrong."""
    import git

    try:
        return git.Repo(path, search_parent_directories=False)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise InputError(f"{path} is not a git repository (run `git init` or pass --repo)") from exc


def walk(path: Path, last: int) -> Iterator[Change]:
    """Stream the last ``last`` changes on the first-parent line, each with its diff.

    One `git log -p` process feeds the whole walk, so the cost per commit is parsing,
    not process start-up. Merges are diffed against their first parent: that is the PR.
    A path that is no repository fails here, before the caller does any other work.
    """
    repo = open_repo(path)
    if not repo.head.is_valid():
        raise InputError(f"{path} has no commits yet")
    return _stream(repo, last)


def _stream(repo: Any, last: int) -> Iterator[Change]:
    """Run `git log -p` once and split its output, stopping git if the caller stops early."""
    proc = repo.git.log(
        f"-{last}",
        "--first-parent",
        "--diff-merges=first-parent",
        "-p",
        "--no-color",
        "--no-ext-diff",
        "--no-renames",
        f"--format={LOG_FORMAT}",
        as_process=True,
    )
    try:
        yield from _split(proc.stdout)
    finally:
        proc.proc.kill() if proc.proc.poll() is None else None
        proc.proc.wait()


def _split(stream: IO[bytes]) -> Iterator[Change]:
    """Split `git log -p` output into Changes."""
    header: re.Match[bytes] | None = None
    body: list[bytes] = []
    size = 0
    for line in stream:
        found = HEADER.match(line.rstrip(b"\n")) if line.startswith(b"\x00") else None
        if found is None:
            if header is not None and size < MAX_DIFF_BYTES:
                body.append(line)
                size += len(line)
            continue
        if header is not None:
            yield _change(header, body)
        header, body, size = found, [], 0
    if header is not None:
        yield _change(header, body)


def _change(header: re.Match[bytes], body: list[bytes]) -> Change:
    """Build a Change from its header match and diff lines."""
    parents = header.group("parents").split()
    return Change(
        sha=header.group("sha").decode(),
        timestamp=int(header.group("ts")),
        is_merge=len(parents) > 1,
        diff=b"".join(body),
    )


def tasks_for(files: tuple[FileChange, ...]) -> tuple[str, ...]:
    """Return the tasks cibot would run on a PR with these changes."""
    tasks = ["summary", "review"]
    if any(f.path.endswith(".py") and f.added and not TEST_PATH.search(f.path) for f in files):
        tasks.append("tests")
    if any(deps.is_manifest(f.path) for f in files):
        tasks.append("deps")
    return tuple(tasks)


def replay(
    changes: Iterator[Change], policy: Policy, prices: Prices, count: Callable[[str], int]
) -> Tally:
    """Route every applicable task of every change and add up tokens and costs."""
    tally = Tally()
    for change in changes:
        try:
            evidence = evidence_from_diff(change.diff, count=count, require_text=False)
        except InputError:
            tally.skipped += 1  # an empty merge or a change with no text diff
            continue
        _observe(tally, change)
        decisions = route_many(tasks_for(evidence.files), evidence, policy)
        for decision in decisions:
            _price(tally, decision, evidence, policy, prices)
        _note_sensitive(tally, change, decisions)
    return tally


def _observe(tally: Tally, change: Change) -> None:
    """Count a change and widen the observed time span."""
    tally.changes += 1
    tally.merges += change.is_merge
    tally.first_ts = min(tally.first_ts or change.timestamp, change.timestamp)
    tally.last_ts = max(tally.last_ts or change.timestamp, change.timestamp)


def _price(
    tally: Tally, decision: Decision, evidence: Evidence, policy: Policy, prices: Prices
) -> None:
    """Add one task's tokens and cost under hybrid routing and under frontier-only."""
    spec = policy.tasks[decision.task]  # type: ignore[index]
    prompt, output = evidence.packed_tokens + PROMPT_OVERHEAD_TOKENS, spec.expected_output_tokens
    tally.tiers[decision.tier] += 1
    for reason in decision.reasons:
        tally.reasons[reason.trigger] += 1
    tally.tokens_by_tier[decision.tier] += prompt + output
    if decision.tier in prices and not policy.tiers[decision.tier].private:
        cost = api_call_cost(*prices[decision.tier], prompt, output)
        tally.api_cost_by_tier[decision.tier] = (
            tally.api_cost_by_tier.get(decision.tier, 0.0) + cost
        )
    if "frontier" in prices:  # a private frontier tier has no API price to compare against
        tally.frontier_only_cost += api_call_cost(*prices["frontier"], prompt, output)
    tally.frontier_only_tokens += prompt + output


def _note_sensitive(tally: Tally, change: Change, decisions: list[Decision]) -> None:
    """Remember a change that touched a sensitive subsystem, with its first evidence."""
    decision = decisions[0]
    if not decision.categories:
        return
    # Whichever tasks escalate on sensitive_change carry the evidence; keep three, once each.
    found = (r.evidence for d in decisions for r in d.reasons if r.trigger.startswith("sensitive_"))
    evidence = list(dict.fromkeys(found))[:3] or ["(no task escalates on sensitive changes)"]
    tally.sensitive.append(
        {"commit": change.sha[:12], "categories": list(decision.categories), "evidence": evidence}
    )


def months_observed(tally: Tally) -> float:
    """Return the observed span in months, at least one day's worth."""
    if tally.first_ts is None or tally.last_ts is None:
        return 1.0
    return max(tally.last_ts - tally.first_ts, 86_400) / SECONDS_PER_MONTH


def summarize(tally: Tally, policy: Policy) -> dict[str, Any]:
    """Turn a tally into the report: tier shares, reasons, sensitive changes, monthly spend."""
    months = months_observed(tally)
    tasks = sum(tally.tiers.values())
    frontier_monthly = tally.frontier_only_cost / months
    blended = (
        tally.frontier_only_cost / tally.frontier_only_tokens if tally.frontier_only_tokens else 0.0
    )
    return {
        "changes": tally.changes,
        "merges_as_prs": tally.merges,
        "skipped": tally.skipped,
        "months_observed": round(months, 3),
        "changes_per_month": round(tally.changes / months, 1),
        "tasks": tasks,
        "tier_share": {t: round(n / tasks, 4) for t, n in sorted(tally.tiers.items())}
        if tasks
        else {},
        "escalation_reasons": tally.reasons.most_common(),
        "sensitive_changes": tally.sensitive,
        "monthly_spend_usd": {
            "frontier_only_api": round(frontier_monthly, 2),
            "hybrid": _hybrid(tally, policy, months, blended),
        },
    }


def _hybrid(tally: Tally, policy: Policy, months: float, blended: float) -> list[dict[str, Any]]:
    """Price hybrid routing on each rung: the rung serves the private work, the API the rest.

    On the 1× rung only the local tier is private. A 2× or 8× rung serves a model of mid
    class, so mid-tier work moves onto the rung as well; frontier work stays on the API.
    """
    rows = []
    for name, rung in sorted(policy.rungs.items(), key=lambda item: item[1].gpus):
        private = {"local"} | ({"mid"} if rung.gpus > 1 else set())
        private |= {t for t in ("mid", "frontier") if policy.tiers[t].private}
        tokens = sum(n for t, n in tally.tokens_by_tier.items() if t in private) / months
        api = sum(c for t, c in tally.api_cost_by_tier.items() if t not in private) / months
        econ = rung_economics(name, rung, tokens_per_month=tokens, api_usd_per_token=blended)
        rows.append(
            {
                "rung": name,
                "private_tiers": sorted(private),
                "api_usd": round(api, 2),
                "bought_usd": round(api + econ.monthly_bought, 2),
                "rented_usd": round(api + econ.monthly_rented, 2),
                "utilization": round(econ.utilization, 5),
                "breakeven_utilization_bought": _finite(econ.breakeven_utilization_bought),
                "breakeven_utilization_rented": _finite(econ.breakeven_utilization_rented),
            }
        )
    return rows


def _finite(value: float) -> float | None:
    """Round a ratio for the report; None where it is undefined (no API work to compare)."""
    return round(value, 4) if math.isfinite(value) else None


def now_utc() -> datetime:
    """Return the current time in UTC (kept apart so reports can state when they ran)."""
    return datetime.now(UTC)
