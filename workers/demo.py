"""Run ``cibot demo``: fill a ledger with a clearly labelled, simulated month of a team's work.

Everything it writes is fiction and says so: the installation's account is
``demo (simulated)`` and every repo is ``demo/...``. It writes through the ledger's own
methods, as the workers do, so the report and the dashboard read it like real work:
three repos, all five everyday tasks, local, mid, frontier and human tiers, fallbacks,
merged and closed PRs, feedback of several kinds, and a few shadow jobs. The same
``--seed`` gives the same month; every write is keyed, so running it twice adds nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from bot.kernel.errors import InputError
from bot.kernel.jobs import JobRef
from bot.kernel.settings import Settings
from policies.loading import load_policy
from policies.model import Policy
from workers.ledger import FAILED, SUCCEEDED, JobResult, Ledger
from workers.llm import CallRecord

ACCOUNT = "demo (simulated)"
INSTALLATION = 7_000_001
PREFIX = "demo/"
# Repo → PRs a week, and whether its changes touch sensitive code (payments, infra).
REPOS: dict[str, tuple[int, float]] = {
    "demo/web-app": (6, 0.05),
    "demo/payments-api": (4, 0.45),
    "demo/infra": (3, 0.35),
}
SHADOW_REPO, SHADOW_PRS = "demo/infra", 2  # its first PRs ran in shadow mode
# Task → (share of PRs it runs on, prompt tokens low-high, completion tokens low-high).
TASKS: dict[str, tuple[float, tuple[int, int], tuple[int, int]]] = {
    "summary": (1.0, (3_000, 20_000), (400, 900)),
    "review": (1.0, (6_000, 40_000), (600, 1_800)),
    "ci": (0.35, (8_000, 60_000), (300, 900)),
    "tests": (0.3, (4_000, 25_000), (1_200, 3_000)),
    "deps": (0.15, (2_000, 15_000), (300, 800)),
}
# USD per token (prompt, completion): Anthropic's list prices for Sonnet 4.x and Opus 4.x
# (https://www.anthropic.com/pricing#api), used where the policy sets no price.
LIST_PRICES = {"mid": (3e-6, 15e-6), "frontier": (5e-6, 25e-6)}
DEFAULT_SEED, DEFAULT_DAYS, MAX_DAYS = 11, 30, 366

REFUSE_REAL = (
    "the ledger at {url} already holds {count} jobs that are not the demo's: point "
    "--database-url at a new file (e.g. sqlite:///cibot-demo.db), or give --force to add "
    "the simulated month anyway"
)
ALREADY = "cibot demo: {url} already holds a demo month ({count} jobs); nothing written."
DONE = """\
cibot demo: wrote a simulated month to {url}
  {days} days to {until}: {repos} repos, {jobs} jobs on {prs} PRs ({merged} merged, {closed} \
closed), {fallbacks} fallbacks, {feedback} feedback signals, {shadow} shadow jobs.
  Every row is fiction: installation "{account}", repos {repo_names}.

Next:{env}
  cibot report                             the month's figures; add --by repo|task|week, --csv
  CIBOT_WEBHOOK_SECRET=dev cibot serve     then open http://127.0.0.1:{port}/dashboard
                                           (the admin listener, loopback only by default)
"""


@dataclass
class Tally:
    """Count what the demo wrote, for the closing message."""

    jobs: int = 0
    prs: int = 0
    merged: int = 0
    closed: int = 0
    fallbacks: int = 0
    feedback: int = 0
    shadow: int = 0


@dataclass(frozen=True)
class Job:
    """One simulated job: its reference, calls, how it ended, and what people did with it."""

    ref: JobRef
    at: datetime
    tier: str
    calls: Sequence[CallRecord]
    status: str = SUCCEEDED
    shadow: bool = False
    comment_id: int | None = None
    human_review: bool = False
    signals: Sequence[tuple[str, int, bool]] = field(default_factory=tuple)  # kind, value, sticky


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the flags of ``cibot demo``."""
    parser.add_argument("--database-url", help="ledger to fill (default: CIBOT_DATABASE_URL)")
    parser.add_argument("--seed", default=str(DEFAULT_SEED), help="same seed, same month")
    parser.add_argument("--days", default=str(DEFAULT_DAYS), help="length of the simulated window")
    parser.add_argument("--force", action="store_true", help="write even beside real jobs")


def run(args: argparse.Namespace) -> int:
    """Fill the ledger with the simulated month and say what to run next."""
    seed, days = _whole(args.seed, "--seed", 0, 2**31), _whole(args.days, "--days", 1, MAX_DAYS)
    settings = Settings.from_env()
    url = args.database_url or settings.database_url
    policy = load_policy(settings.policy_path, overrides=settings.tier_overrides)
    until = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    ledger = Ledger(url)
    try:
        existing = guard(ledger, url=url, force=args.force)
        if existing:
            print(ALREADY.format(url=url, count=existing))
            return 0
        tally = fill(ledger, policy, seed=seed, days=days, until=until)
    finally:
        ledger.close()
    env = "" if url == settings.database_url else f"\n  export CIBOT_DATABASE_URL={url}"
    print(_done(tally, url=url, days=days, until=until, env=env, port=settings.admin_port))
    return 0


def guard(ledger: Ledger, *, url: str, force: bool) -> int:
    """Refuse a ledger with real jobs unless forced; return how many demo jobs it holds."""
    jobs, _, _ = ledger.rows()
    real = [j for j in jobs if not j.repo.startswith(PREFIX)]
    if real and not force:
        raise InputError(REFUSE_REAL.format(url=url, count=len(real)))
    return len(jobs) - len(real)


def fill(ledger: Ledger, policy: Policy, *, seed: int, days: int, until: datetime) -> Tally:
    """Write the simulated window ending at ``until`` and return what was written."""
    rng = random.Random(seed)
    prices = _prices(policy)
    private = frozenset(name for name, tier in policy.tiers.items() if tier.private)
    since = until - timedelta(days=days)
    ledger.record_installation(
        installation_id=INSTALLATION, status="active", account=ACCOUNT, at=since
    )
    tally = Tally()
    for repo, number, opened in _prs(rng, since, until):
        jobs = list(_jobs(rng, repo, number, opened, prices))
        outcome = _outcome(rng, opened, until)
        for job in jobs:
            _write(ledger, job, private)
            tally.fallbacks += len({c.tier for c in job.calls}) > 1
            tally.shadow += job.shadow
        tally.feedback += _feedback(ledger, jobs, outcome, until, seed)
        tally.jobs, tally.prs = tally.jobs + len(jobs), tally.prs + 1
        if outcome is not None:
            _close(ledger, repo, number, outcome, seed)
            tally.merged += outcome[0] == "merged"
            tally.closed += outcome[0] == "closed"
    return tally


def _prs(
    rng: random.Random, since: datetime, until: datetime
) -> Iterator[tuple[str, int, datetime]]:
    """Yield (repo, PR number, opened at) for each simulated PR, in time order per repo."""
    span = (until - since).total_seconds()
    for repo, (weekly, _) in REPOS.items():
        count = max(1, round(weekly * span / (7 * 86400)))
        moments = sorted(rng.uniform(0, span * 0.97) for _ in range(count))
        for index, offset in enumerate(moments, start=1):
            yield repo, 100 + index, since + timedelta(seconds=offset)


def _jobs(
    rng: random.Random,
    repo: str,
    number: int,
    opened: datetime,
    prices: dict[str, tuple[float, float]],
) -> Iterator[Job]:
    """Yield the jobs the bot ran on one PR, a few minutes apart."""
    sensitive = rng.random() < REPOS[repo][1]
    shadow = repo == SHADOW_REPO and number - 100 <= SHADOW_PRS
    for index, (task, (share, _, _)) in enumerate(TASKS.items()):
        if rng.random() >= share or (task == "tests" and repo == SHADOW_REPO):
            continue
        at = opened + timedelta(minutes=2 + 3 * index)
        ref = JobRef(
            task=task,
            installation_id=INSTALLATION,
            repo=repo,
            delivery_id=f"demo-{repo}-{number}-{task}",
            pr_number=number,
            head_sha=hashlib.sha256(f"{repo}#{number}".encode()).hexdigest()[:40],
        )
        tiers, reasons, status = _walk(rng, task, sensitive)
        calls = [_call(rng, task, t, r, prices) for t, r in zip(tiers, reasons, strict=True)]
        final = "human" if status == "human" else (tiers[-1] if tiers else "local")
        yield Job(
            ref=ref,
            at=at,
            tier=final,
            calls=calls,
            status=FAILED if status == FAILED else SUCCEEDED,
            shadow=shadow,
            comment_id=None if shadow else _comment_id(repo, number, task),
            human_review=status == "human",
            signals=() if shadow or status == FAILED else _signals(rng, task),
        )


def _walk(rng: random.Random, task: str, sensitive: bool) -> tuple[list[str], list[str], str]:
    """Return a job's tiers, the reason each call was made for, and how it ended."""
    roll = rng.random()
    if task == "review":
        if sensitive and roll < 0.1:
            return [], [], "human"  # private_only code that would have gone out: a person
        return (["frontier"], ["sensitive_change"], "ok") if sensitive else (["mid"], [""], "ok")
    if task == "summary" and sensitive:
        return ["mid"], ["sensitive_change"], "ok"
    if task == "tests" and roll < 0.2:
        status = FAILED if roll < 0.08 else "ok"
        return ["local", "local", "frontier"], ["", "", "tests_failed_twice"], status
    if task in ("ci", "deps") and roll < 0.2:
        trigger = "multi_service_failure" if task == "ci" else "breaking_api_surface"
        return ["frontier"], [trigger], "ok"
    if roll > 0.88:
        reason = "invalid_output" if roll > 0.94 else "timeout"
        return ["local", "mid"], ["", reason], "ok"
    return ["local"], [""], "ok"


def _call(
    rng: random.Random,
    task: str,
    tier: str,
    reason: str,
    prices: dict[str, tuple[float, float]],
) -> CallRecord:
    """Return one simulated model call: tokens for the task, priced for the tier."""
    _, prompt_range, completion_range = TASKS[task]
    prompt, completion = rng.randint(*prompt_range), rng.randint(*completion_range)
    prompt_price, completion_price = prices.get(tier, (0.0, 0.0))
    model = {"local": "hosted_vllm/openai/gpt-oss-120b"}.get(tier, f"demo-{tier}-model")
    return CallRecord(
        tier=tier,
        model=model,
        prompt_tokens=prompt,
        completion_tokens=completion,
        latency_s=round(rng.uniform(2, 40), 2),
        cost_usd=prompt * prompt_price + completion * completion_price,
        escalation_reason=reason,
    )


def _signals(rng: random.Random, task: str) -> tuple[tuple[str, int, bool], ...]:
    """Return what people did with one posted result: (signal, value, on the sticky comment)."""
    odds: dict[str, list[tuple[str, int, bool, float]]] = {
        "summary": [
            ("reaction", 1, True, 0.35),
            ("reaction", -1, True, 0.08),
            ("edited", 1, True, 0.1),
        ],
        "review": [
            ("thread_resolved", 1, False, 0.45),
            ("suggestion_applied", 1, False, 0.25),
            ("replied", 1, False, 0.2),
            ("reaction", -1, False, 0.08),
        ],
        "ci": [("reaction", 1, True, 0.3)],
        "tests": [("tests_merged", 1, True, 0.55)],
        "deps": [("reaction", 1, True, 0.25)],
    }
    return tuple((kind, value, sticky) for kind, value, sticky, p in odds[task] if rng.random() < p)


def _outcome(rng: random.Random, opened: datetime, until: datetime) -> tuple[str, datetime] | None:
    """Return how and when the PR ended, or None while it is still open."""
    at = opened + timedelta(hours=rng.uniform(2, 96))
    roll = rng.random()
    if at >= until or roll > 0.9:
        return None
    return ("merged" if roll < 0.72 else "closed"), at


def _write(ledger: Ledger, job: Job, private: frozenset[str]) -> None:
    """Run one job through the ledger the way the pipeline does: start, then finish."""
    first = job.calls[0].tier if job.calls else job.tier
    ledger.start_job(job.ref, tier=first, human_review=job.human_review, worker="demo", at=job.at)
    ledger.finish_job(
        job.ref,
        JobResult(
            status=job.status,
            tier=job.tier,
            model=job.calls[-1].model if job.calls else "",
            calls=job.calls,
            private_tiers=private,
            comment_id=job.comment_id,
            shadow=job.shadow,
            error_kind="tests_failed" if job.status == FAILED else "",
        ),
        at=job.at + timedelta(seconds=sum(c.latency_s for c in job.calls) + 5),
    )


def _feedback(
    ledger: Ledger,
    jobs: Sequence[Job],
    outcome: tuple[str, datetime] | None,
    until: datetime,
    seed: int,
) -> int:
    """Record the signals people gave the PR's results before it closed; return how many."""
    written = 0
    for job in jobs:
        end = outcome[1] if outcome else until
        for position, (kind, value, sticky) in enumerate(job.signals):
            if kind == "tests_merged" and (outcome is None or outcome[0] != "merged"):
                continue
            at = job.at + (end - job.at) * (0.3 + 0.6 * position / max(len(job.signals), 1))
            ledger.record_feedback(
                key=f"demo:{seed}:{job.ref.key()}:{kind}:{position}",
                installation_id=INSTALLATION,
                repo=job.ref.repo,
                pr_number=job.ref.pr_number,
                signal=kind,
                value=value,
                task=job.ref.task if sticky or kind == "suggestion_applied" else "",
                comment_id=job.comment_id if sticky else _review_comment(job, position),
                at=min(at, until - timedelta(minutes=1)),
            )
            written += 1
    return written


def _close(
    ledger: Ledger, repo: str, number: int, outcome: tuple[str, datetime], seed: int
) -> None:
    """Record the PR's merge or close."""
    ledger.record_outcome(
        installation_id=INSTALLATION,
        repo=repo,
        pr_number=number,
        outcome=outcome[0],
        delivery_id=f"demo:{seed}:{repo}#{number}:outcome",
        at=outcome[1],
    )


def _comment_id(repo: str, number: int, task: str) -> int:
    """Return a stable id for the job's sticky comment."""
    return 9_000_000 + list(REPOS).index(repo) * 100_000 + number * 10 + list(TASKS).index(task)


def _review_comment(job: Job, position: int) -> int:
    """Return a stable id for one of the review job's inline comments."""
    return (job.comment_id or 0) * 100 + position + 1


def _prices(policy: Policy) -> dict[str, tuple[float, float]]:
    """Return USD per token for each API tier: the policy's price, else a list price.

    The month is fiction, so it takes published list prices rather than loading litellm's
    price map (a slow import) for figures nobody is billed for.
    """
    out = {}
    for name, tier in policy.tiers.items():
        if tier.private:
            continue
        given = tier.price
        listed = LIST_PRICES.get(name, LIST_PRICES["mid"])
        out[name] = (
            listed[0] if given.input_per_mtok is None else given.input_per_mtok / 1e6,
            listed[1] if given.output_per_mtok is None else given.output_per_mtok / 1e6,
        )
    return out


def _whole(text: str, flag: str, low: int, high: int) -> int:
    """Parse a whole-number flag in [low, high], or raise InputError naming it."""
    if not text.isdigit() or not low <= int(text) <= high:
        raise InputError(f"{flag} must be a whole number from {low} to {high}, not {text!r}")
    return int(text)


def _done(tally: Tally, *, url: str, days: int, until: datetime, env: str, port: int) -> str:
    """Return the closing message: what was written, and what to run next."""
    return DONE.format(
        url=url,
        days=days,
        until=until.date().isoformat(),
        repos=len(REPOS),
        jobs=tally.jobs,
        prs=tally.prs,
        merged=tally.merged,
        closed=tally.closed,
        fallbacks=tally.fallbacks,
        feedback=tally.feedback,
        shadow=tally.shadow,
        account=ACCOUNT,
        repo_names=", ".join(REPOS),
        env=env,
        port=port,
    )
