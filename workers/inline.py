"""Run one job inline, in this process, for ``cibot ci`` (a GitHub Actions step).

The same job modules and pipeline steps run as in the workers. Only the adapters change:
the step's ``GITHUB_TOKEN`` instead of an App installation, an in-process store instead of
Redis, and "send" runs the next step at once instead of queueing it.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bot.kernel.errors import TRANSIENT, NothingToDo
from bot.kernel.jobs import PUBLISH, RUN_JOB, JobRef
from bot.kernel.settings import Settings
from policies.model import Policy
from workers.jobs.contract import log_fields
from workers.runtime import Runtime

__all__ = ["log_fields", "run", "with_head"]

RETRIES = 4
DONE = """\
cibot ci: {task} on {repo}#{pr} → {outcome}"""


@dataclass
class MemoryStore:
    """Stand in for the Redis commands the pipeline uses, inside one process."""

    values: dict[str, tuple[Any, float | None]] = field(default_factory=dict)

    def _live(self, key: str) -> bool:
        """Drop an expired key; say whether the key is present."""
        entry = self.values.get(key)
        if entry is not None and entry[1] is not None and entry[1] < time.monotonic():
            del self.values[key]
            return False
        return entry is not None

    def set(
        self,
        key: str,
        value: Any,
        *,
        nx: bool = False,
        px: int | None = None,
        ex: int | None = None,
    ) -> bool:
        """Set a key, honouring NX and an expiry in ms (px) or s (ex)."""
        if nx and self._live(key):
            return False
        ttl = px / 1000 if px else ex if ex else None
        self.values[key] = (value, time.monotonic() + ttl if ttl else None)
        return True

    def get(self, key: str) -> Any:
        """Return a key's value, or None."""
        return self.values[key][0] if self._live(key) else None

    def exists(self, *keys: str) -> int:
        """Count the keys that are present."""
        return sum(self._live(key) for key in keys)

    def delete(self, *keys: str) -> int:
        """Delete keys; return how many existed."""
        return sum(self.values.pop(key, None) is not None for key in keys)

    def hset(self, key: str, name: str, value: Any) -> int:
        """Set one field of a hash."""
        fields = self.values[key][0] if self._live(key) else {}
        fields[name] = value
        self.values[key] = (fields, self.values.get(key, (None, None))[1])
        return 1

    def hgetall(self, key: str) -> dict[str, Any]:
        """Return a hash's fields."""
        return dict(self.values[key][0]) if self._live(key) else {}

    def hdel(self, key: str, *names: str) -> int:
        """Delete fields of a hash; return how many existed."""
        fields = self.values[key][0] if self._live(key) else {}
        return sum(fields.pop(name, None) is not None for name in names)

    def expire(self, key: str, seconds: int) -> bool:
        """Set a key's expiry in seconds."""
        if not self._live(key):
            return False
        self.values[key] = (self.values[key][0], time.monotonic() + seconds)
        return True

    def eval(self, script: str, numkeys: int, key: str, token: str) -> int:
        """Run the pipeline's one script: delete ``key`` only if it still holds ``token``."""
        if self.get(key) == token:
            return self.delete(key)
        return 0

    def close(self) -> None:
        """Release nothing; a store in memory holds no connection."""


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

    def _run_job(ref: JobRef, rt: Runtime) -> pipeline.Outcome:
        return pipeline.run_job(ref, rt, deadline=pipeline.Deadline(seconds=3600))

    rt = Runtime(
        settings=settings,
        policy=policy,
        redis=MemoryStore(),
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
    for attempt in range(RETRIES + 1):
        try:
            return step(ref, rt)
        except TRANSIENT as exc:
            if attempt == RETRIES:
                raise
            time.sleep(min(getattr(exc, "retry_after", 0) or 2.0 * 2**attempt, 60))
    return None


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
        posted = rt.redis.exists(pipeline.state_key(ref, "done"))
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
    return 0 if posted or outcome is not pipeline.Outcome.QUEUED else 1
