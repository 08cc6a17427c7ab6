"""Run one job inline, in this process, for ``cibot ci`` (a GitHub Actions step).

The same job modules and pipeline steps run as in the workers. Only the adapters change:
the step's ``GITHUB_TOKEN`` instead of an App installation, the in-process job state
(``workers.state.MemoryJobState``) instead of Redis, and "send" runs the next step at once
instead of queueing it.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.kernel.errors import TRANSIENT, NothingToDo
from bot.kernel.jobs import PUBLISH, RUN_JOB, JobRef
from bot.kernel.settings import Settings
from policies.model import Policy
from workers.jobs.contract import log_fields
from workers.retry import Backoff, retrying
from workers.runtime import Runtime
from workers.state import MemoryJobState

__all__ = ["log_fields", "run", "with_head"]

STEP_BACKOFF = Backoff(base=2.0, cap=60.0, attempts=5)  # a step: five tries at most
DONE = """\
cibot ci: {task} on {repo}#{pr} → {outcome}"""


@dataclass
class LedgerBudget:
    """Gate frontier spend on the ledger's month-to-date figure (no Redis in Actions)."""

    ledger: Any
    reserved: float = 0.0

    def spent(self, installation_id: int) -> float:
        """Return this month's frontier spend plus what this run has reserved."""
        start = datetime.now(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        return float(self.ledger.frontier_spend(installation_id=installation_id, since=start))

    def reserve(self, installation_id: int, usd: float, limit: float) -> bool:
        """Reserve ``usd`` if the month stays within ``limit``."""
        if self.spent(installation_id) + self.reserved + usd > limit:
            return False
        self.reserved += usd
        return True

    def settle(self, installation_id: int, reserved: float, actual: float) -> None:
        """Drop a reservation once the call's real cost is in the ledger."""
        self.reserved = max(0.0, self.reserved - reserved)


def runtime(settings: Settings, policy: Policy, token: str) -> Any:
    """Build a pipeline Runtime whose adapters need neither Redis nor a GitHub App."""
    from workers import pipeline
    from workers.github import GitHubClient
    from workers.ledger import Ledger
    from workers.llm import ModelClient

    ledger = Ledger(settings.database_url)
    budget = LedgerBudget(ledger)
    rt: Runtime

    def send(name: str, ref: JobRef, queue: str) -> None:
        step = {RUN_JOB: _run_job, PUBLISH: pipeline.publish}[name]
        _with_retries(step, ref, rt)

    def _run_job(ref: JobRef, rt: Runtime) -> pipeline.StepOutcome:
        return pipeline.run_job(ref, rt, deadline=pipeline.Deadline(seconds=3600))

    rt = Runtime(
        settings=settings,
        policy=policy,
        redis=None,
        job_state=MemoryJobState(),
        ledger=ledger,
        github=lambda _id: GitHubClient.from_token(token=token, base_url=settings.github_api_url),
        model=lambda recorder: ModelClient(policy, settings, budget, recorder=recorder),
        send=send,
        lock_ttl_s=3600,
        spent=budget.spent,
        closers=[ledger.close],
    )
    return rt


def _with_retries(step: Any, ref: JobRef, rt: Any) -> Any:
    """Run a pipeline step, retrying transient errors a few times with backoff."""
    return retrying(lambda: step(ref, rt), on=TRANSIENT, pause=STEP_BACKOFF.pause)


def with_head(ref: JobRef, settings: Settings, token: str) -> JobRef:
    """Fill in the PR's head SHA from GitHub when the event did not carry it."""
    if ref.head_sha:
        return ref
    from workers.github import GitHubClient

    client = GitHubClient.from_token(token=token, base_url=settings.github_api_url)
    with contextlib.closing(client) as github:
        head = github.pull(ref.repo, ref.pr_number or 0).head_sha
    return JobRef(**{**ref.to_kwargs(), "head_sha": head})


def run(ref: JobRef, settings: Settings, policy: Policy, token: str) -> int:
    """Route, compute and publish one job in this process; return the exit code."""
    from workers import pipeline

    rt = runtime(settings, policy, token)
    try:
        outcome = _with_retries(pipeline.enqueue_model_job, ref, rt)
        posted = rt.state.done(ref)
    except NothingToDo as exc:
        pipeline.fail(ref, rt, exc)  # drops the job; a step with nothing to do succeeds
        print(f"cibot ci: {ref.task}: nothing to do: {exc}", file=sys.stderr)
        return 0
    except Exception as exc:
        pipeline.fail(ref, rt, exc)
        raise
    finally:
        rt.close()
    result = "published" if posted else str(outcome)
    print(
        DONE.format(task=ref.task, repo=ref.repo, pr=ref.pr_number, outcome=result), file=sys.stderr
    )
    return 0 if posted or outcome is not pipeline.StepOutcome.QUEUED else 1
