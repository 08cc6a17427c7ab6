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

from bot.kernel.errors import InputError
from policies import deps
from policies.costs import SECONDS_PER_MONTH, api_call_cost, rung_economics
from policies.evidence import Evidence, FileChange, evidence_from_diff
from policies.model import Policy
from policies.routing import Decision, route_many

HEADER = re.compile(
    rb"^\x00cibot-commit (?P<sha>[0-9a-f]{40}) (?P<parents>[0-9a-f ]*)\x01(?P<ts>\d+)$"
)
MESSAGE_END = b"\x00cibot-end"
# The header, then the raw message up to an end marker, then git's diff.
LOG_FORMAT = "%x00cibot-commit %H %P%x01%ct%n%B%x00cibot-end"
# GitHub's merge-commit subject, and the "(#N)" a squash or rebase merge appends to the title.
MERGE_SUBJECT = re.compile(r"^Merge pull request #(\d+) from \S+")
SQUASH_SUBJECT = re.compile(r"\s*\(#(\d+)\)$")
PROMPT_OVERHEAD_TOKENS = 700  # system prompt, instructions and delimiters around the diff
MAX_DIFF_BYTES = 8 * 1024 * 1024  # a single change larger than this is counted by its first 8 MiB
TEST_PATH = re.compile(r"(^|/)(tests?/|test_[^/]*\.py$|[^/]*_test\.py$|conftest\.py$)")

# A month extrapolated from less than two weeks misses the weekly cycle (releases, quiet
# weeks); fewer than 30 changes leave the mean tokens per change, a heavy-tailed figure,
# with a standard error above a fifth of its spread.
MIN_DAYS = 14
MIN_CHANGES = 30
SHORT_HISTORY = (
    "only {what} of history: a month extrapolated from under {days} days or under "
    "{changes} changes is a guess (pass a larger --last, or a longer-lived --repo)"
)

Prices = dict[str, tuple[float, float]]  # tier -> (input, output) USD per token, for API tiers


@dataclass(frozen=True)
class Change:
    """Hold one change from history: a merge (a PR) or a plain commit, with its message."""

    sha: str
    timestamp: int
    is_merge: bool
    diff: bytes
    message: str = ""

    @property
    def subject(self) -> str:
        """Return the message's first line."""
        return self.message.split("\n", 1)[0].strip()

    @property
    def pr(self) -> tuple[int, str] | None:
        """Return the PR number and how it was found ("merge" or "squash"), or None."""
        merge = MERGE_SUBJECT.match(self.subject)
        if merge:
            return int(merge.group(1)), "merge"
        squash = SQUASH_SUBJECT.search(self.subject)
        return (int(squash.group(1)), "squash") if squash else None

    @property
    def title(self) -> str:
        """Return the PR title GitHub would show: a merge's body line, else the subject."""
        if MERGE_SUBJECT.match(self.subject):
            body = self.description.split("\n", 1)[0].strip()
            return body or self.subject
        return SQUASH_SUBJECT.sub("", self.subject) or self.subject

    @property
    def description(self) -> str:
        """Return the message after its subject, as the PR description."""
        return self.message.partition("\n")[2].strip()

    @property
    def body(self) -> str:
        """Return the PR description: a merge's body less the title it starts with."""
        text = self.description
        return text.partition("\n")[2].strip() if MERGE_SUBJECT.match(self.subject) else text


Sent = tuple[int, int, int]  # one task's (prompt tokens, output tokens, model calls)
# Given a change, its evidence and the decision for each task, say what each task sends.
Measure = Callable[[Change, Evidence, list[Decision]], list[Sent]]


@dataclass
class Cell:
    """Add up one task on one tier: how many ran, what they sent, what the API would charge."""

    tasks: int = 0
    calls: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    api_usd: float = 0.0  # on this tier's API price; 0 on a private tier
    api_first_usd: float = 0.0  # on the cheapest API tier when this tier is private
    frontier_usd: float = 0.0  # everything on the frontier tier's API price

    def add(self, other: Cell) -> None:
        """Add another cell's figures to this one (a roll-up across repositories)."""
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


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
    prs: Counter[str] = field(default_factory=Counter)  # PRs found, by how: merge or squash
    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)  # by (task, tier)
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per change, for --json


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
        "--find-renames",  # GitHub's pull request diff shows renames too
        f"--format={LOG_FORMAT}",
        as_process=True,
    )
    try:
        yield from _split(proc.stdout)
    finally:
        proc.proc.kill() if proc.proc.poll() is None else None
        proc.proc.wait()


@dataclass
class _Reading:
    """Hold the change being read: its header, its message lines, then its diff lines."""

    header: re.Match[bytes]
    message: list[bytes] = field(default_factory=list)
    diff: list[bytes] = field(default_factory=list)
    in_message: bool = True
    size: int = 0

    def add(self, line: bytes) -> None:
        """Take one line: message lines until the end marker, then diff lines up to the cap."""
        if self.in_message:
            text, end, _ = line.partition(MESSAGE_END)
            self.message.append(text)
            self.in_message = not end
        elif self.size < MAX_DIFF_BYTES:
            self.diff.append(line)
            self.size += len(line)


def _split(stream: IO[bytes]) -> Iterator[Change]:
    """Split `git log -p` output into Changes: a header, the message to its end marker, a diff."""
    reading: _Reading | None = None
    for line in stream:
        found = HEADER.match(line.rstrip(b"\n")) if line.startswith(b"\x00cibot-c") else None
        if found is not None:
            if reading is not None:
                yield _change(reading)
            reading = _Reading(found)
        elif reading is not None:
            reading.add(line)
    if reading is not None:
        yield _change(reading)


def _change(reading: _Reading) -> Change:
    """Build a Change from what was read of it."""
    header = reading.header
    parents = header.group("parents").split()
    return Change(
        sha=header.group("sha").decode(),
        timestamp=int(header.group("ts")),
        is_merge=len(parents) > 1,
        diff=b"".join(reading.diff).lstrip(b"\n"),
        message=b"".join(reading.message).decode("utf-8", "replace").strip(),
    )


def tasks_for(files: tuple[FileChange, ...]) -> tuple[str, ...]:
    """Return the tasks cibot would run on a PR with these changes."""
    tasks = ["summary", "review"]
    if any(f.path.endswith(".py") and f.added and not TEST_PATH.search(f.path) for f in files):
        tasks.append("tests")
    if any(deps.is_manifest(f.path) for f in files):
        tasks.append("deps")
    return tuple(tasks)


def added_lines(policy: Policy) -> Measure:
    """Return the first estimate: the added lines' tokens plus a fixed prompt overhead."""

    def measure(change: Change, evidence: Evidence, decisions: list[Decision]) -> list[Sent]:
        prompt = evidence.packed_tokens + PROMPT_OVERHEAD_TOKENS
        return [(prompt, policy.tasks[d.task].expected_output_tokens, 1) for d in decisions]  # type: ignore[index]

    return measure


def replay(
    changes: Iterator[Change],
    policy: Policy,
    prices: Prices,
    count: Callable[[str], int],
    measure: Measure | None = None,
) -> Tally:
    """Route every applicable task of every change and add up tokens and costs.

    ``measure`` says what each task sends; by default, the added-lines estimate.
    """
    tally = Tally()
    sent_by = measure or added_lines(policy)
    for change in changes:
        try:
            evidence = evidence_from_diff(change.diff, count=count, require_text=False)
        except InputError:
            tally.skipped += 1  # an empty merge or a change with no text diff
            continue
        _observe(tally, change)
        decisions = route_many(tasks_for(evidence.files), evidence, policy)
        sent = sent_by(change, evidence, decisions)
        row = _row(change)
        for decision, tokens in zip(decisions, sent, strict=True):
            row["tasks"].append(_price(tally, decision, tokens, policy, prices))
        tally.rows.append(row)
        _note_sensitive(tally, change, decisions)
    return tally


def _observe(tally: Tally, change: Change) -> None:
    """Count a change, a PR when its subject names one, and widen the observed time span."""
    tally.changes += 1
    tally.merges += change.is_merge
    found = change.pr
    if found is not None:
        tally.prs[found[1]] += 1
    tally.first_ts = min(tally.first_ts or change.timestamp, change.timestamp)
    tally.last_ts = max(tally.last_ts or change.timestamp, change.timestamp)


def _row(change: Change) -> dict[str, Any]:
    """Start one change's row for the per-change report."""
    found = change.pr
    return {
        "commit": change.sha[:12],
        "timestamp": change.timestamp,
        "pr": found[0] if found else None,
        "pr_from": found[1] if found else None,
        "title": change.title[:200],
        "tasks": [],
    }


def api_first_tier(tier: str, policy: Policy, prices: Prices) -> str | None:
    """Return the tier a task runs on without private hardware: its own, or the cheapest API tier."""
    if tier in prices and not policy.tiers[tier].private:
        return tier
    public = [t for t in prices if t in policy.tiers and not policy.tiers[t].private]
    return min(public, key=lambda t: prices[t][1], default=None)


def _price(
    tally: Tally, decision: Decision, sent: Sent, policy: Policy, prices: Prices
) -> dict[str, Any]:
    """Add one task's tokens and cost under hybrid, API-first and frontier-only routing."""
    prompt, output, calls = sent
    tier = decision.tier
    tally.tiers[tier] += 1
    for reason in decision.reasons:
        tally.reasons[reason.trigger] += 1
    tally.tokens_by_tier[tier] += prompt + output
    cell = tally.cells.setdefault((decision.task, tier), Cell())
    cell.tasks += 1
    cell.calls += calls
    cell.prompt_tokens += prompt
    cell.output_tokens += output
    if tier in prices and not policy.tiers[tier].private:
        cost = api_call_cost(*prices[tier], prompt, output)
        tally.api_cost_by_tier[tier] = tally.api_cost_by_tier.get(tier, 0.0) + cost
        cell.api_usd += cost
    fallback = api_first_tier(tier, policy, prices)
    if fallback is not None:
        cell.api_first_usd += api_call_cost(*prices[fallback], prompt, output)
    if "frontier" in prices:  # a private frontier tier has no API price to compare against
        cost = api_call_cost(*prices["frontier"], prompt, output)
        tally.frontier_only_cost += cost
        cell.frontier_usd += cost
    tally.frontier_only_tokens += prompt + output
    return {
        "task": decision.task,
        "tier": tier,
        "prompt_tokens": prompt,
        "output_tokens": output,
        "calls": calls,
    }


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


def _span_s(tally: Tally) -> int:
    """Return the seconds between the first and the last change seen (0 for one change)."""
    if tally.first_ts is None or tally.last_ts is None:
        return 0
    return tally.last_ts - tally.first_ts


def history_warning(tally: Tally) -> str:
    """Say why a month extrapolated from this history is unreliable, or return ""."""
    days = _span_s(tally) / 86_400
    short = [f"{days:.1f} days" if days < MIN_DAYS else "", f"{tally.changes} changes"]
    if days >= MIN_DAYS and tally.changes >= MIN_CHANGES:
        return ""
    what = " and ".join(x for x in (short[0], short[1] if tally.changes < MIN_CHANGES else "") if x)
    return SHORT_HISTORY.format(what=what, days=MIN_DAYS, changes=MIN_CHANGES)


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
        "prs_found": {"merge": tally.prs["merge"], "squash": tally.prs["squash"]},
        "days_observed": round(_span_s(tally) / 86_400, 1),
        "history_warning": history_warning(tally),
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
