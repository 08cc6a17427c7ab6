"""Hand jobs to the Celery broker, dropping duplicate deliveries, with a durable spool.

The request path does O(1) Redis work per delivery: one ``SET NX`` to claim the
delivery id, one ``SET`` of the newest head SHA for a debounced job, and one publish
per job. When Redis cannot take a job the delivery goes to the SQLite spool instead,
and from then on every delivery does, until the drainer thread has handed the whole
spool to Redis, so a later delivery never overtakes an earlier one.

The edge never imports worker code: it publishes by task name (``cibot.dispatch``)
on the ``github`` queue. Contract with the worker for debounced jobs (JobRef args
``supersede``): drop the job when ``GET cibot:head:{repo}#{pr}`` holds a SHA other than
the job's ``head_sha``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from enum import StrEnum
from typing import Any, Protocol

from bot.events import SUPERSEDE
from bot.spool import Spool, task_id
from workers.job import JobRef

log = logging.getLogger(__name__)

DISPATCH_TASK = "cibot.dispatch"
QUEUE = "github"
# GitHub lets operators redeliver for 3 days; remember delivery ids a little longer.
DEDUPE_TTL_SECONDS = 4 * 24 * 3600
HEAD_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_DEBOUNCE_SECONDS = 30.0


def delivery_key(delivery_id: str) -> str:
    """Return the Redis key that marks a delivery id as seen."""
    return f"cibot:delivery:{delivery_id}"


def head_key(repo: str, pr_number: int) -> str:
    """Return the Redis key holding the newest head SHA the edge saw for a PR."""
    return f"cibot:head:{repo}#{pr_number}"


class Outcome(StrEnum):
    """Say what happened to a delivery's jobs."""

    ENQUEUED = "enqueued"
    SPOOLED = "spooled"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


class Broker(Protocol):
    """Take jobs and delivery claims; raise ConnectionError when the broker is down."""

    def claim(self, delivery_id: str) -> bool:
        """Mark the delivery seen; return False when it had been seen already."""

    def release(self, delivery_id: str) -> None:
        """Forget a claim, so a redelivery of a delivery we failed to enqueue is not lost."""

    def set_head(self, repo: str, pr_number: int, head_sha: str) -> None:
        """Record the newest head SHA of a PR."""

    def publish(self, job: JobRef, *, task_id: str, countdown: float) -> None:
        """Put one job on the queue, to run no sooner than ``countdown`` seconds from now."""

    def ping(self) -> None:
        """Return when the broker answers; raise ConnectionError otherwise."""

    def close(self) -> None:
        """Release connections."""


class Intake:
    """Accept a delivery's jobs: claim, publish, or spool; drain the spool when Redis is back."""

    def __init__(
        self,
        broker: Broker,
        spool: Spool,
        *,
        debounce_seconds: float = DEFAULT_DEBOUNCE_SECONDS,
        drain_interval: float = 0.2,
        max_backoff: float = 2.0,
        batch: int = 50,
    ) -> None:
        """Wire the broker and spool; leftovers from a previous run are drained first."""
        self.broker = broker
        self.spool = spool
        self.debounce_seconds = debounce_seconds
        self._interval = drain_interval
        self._max_backoff = max_backoff
        self._batch = batch
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._spooling = spool.depth() > 0

    @property
    def spooling(self) -> bool:
        """Return whether deliveries currently go to the spool."""
        return self._spooling

    def accept(self, delivery_id: str, jobs: Sequence[JobRef]) -> Outcome:
        """Enqueue a delivery's jobs exactly once, spooling them if the broker is down."""
        if not jobs:
            return Outcome.IGNORED
        with self._lock:
            if self._spooling:
                return self._to_spool(delivery_id, jobs, start=0, claimed=False)
            try:
                if not self.broker.claim(delivery_id):
                    return Outcome.DUPLICATE
            except ConnectionError:
                return self._to_spool(delivery_id, jobs, start=0, claimed=False)
            return self._publish_all(delivery_id, jobs)

    def _publish_all(self, delivery_id: str, jobs: Sequence[JobRef]) -> Outcome:
        """Publish a claimed delivery's jobs; spool the rest if the broker fails part-way."""
        for index, job in enumerate(jobs):
            try:
                self._publish(job, task_id(delivery_id, index))
            except ConnectionError:
                return self._to_spool(delivery_id, jobs[index:], start=index, claimed=True)
            except Exception:
                # A bug, not an outage: free the claim so a redelivery is not a duplicate.
                with suppress(Exception):
                    self.broker.release(delivery_id)
                raise
        return Outcome.ENQUEUED

    def drain(self) -> int:
        """Publish one batch of spooled jobs in order; return how many the broker took.

        Raises ConnectionError when the broker fails part-way; what was published
        before that is already marked done.
        """
        published = 0
        with self._lock:
            entries = self.spool.pending(self._batch)
            claimed: set[str] = set()
            dropped: set[str] = set()
            for entry in entries:
                if entry.delivery_id in dropped:
                    continue
                if not entry.claimed and entry.delivery_id not in claimed:
                    if not self.broker.claim(entry.delivery_id):
                        self.spool.drop_delivery(entry.delivery_id)
                        dropped.add(entry.delivery_id)
                        continue
                    self.spool.mark_claimed(entry.delivery_id)
                    claimed.add(entry.delivery_id)
                self._publish(entry.job, entry.task_id)
                self.spool.mark_done(entry.seq)
                published += 1
            if len(entries) < self._batch and self.spool.depth() == 0:
                self._spooling = False
                log.info(
                    "spool drained; deliveries go to the broker again",
                    extra=log_fields(task="spool"),
                )
        return published

    def start(self) -> None:
        """Start the drainer thread."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="cibot-spool", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the drainer thread and wait for it."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def health(self) -> dict[str, Any]:
        """Report whether Redis answers and the spool works, and the spool's depth."""
        report: dict[str, Any] = {"redis": "ok", "spool": "ok", "spool_depth": 0}
        try:
            self.broker.ping()
        except ConnectionError:
            report["redis"] = "down"
        try:
            self.spool.check()
            report["spool_depth"] = self.spool.depth()
        except sqlite3.Error:
            report["spool"] = "failing"
        return report

    def close(self) -> None:
        """Stop draining and release the broker and the spool."""
        self.stop()
        self.broker.close()
        self.spool.close()

    def _publish(self, job: JobRef, task: str) -> None:
        """Publish one job; a debounced job records its PR's newest head and waits."""
        countdown = 0.0
        if job.args.get(SUPERSEDE) and job.pr_number is not None:
            self.broker.set_head(job.repo, job.pr_number, job.head_sha)
            countdown = self.debounce_seconds
        self.broker.publish(job, task_id=task, countdown=countdown)

    def _to_spool(
        self, delivery_id: str, jobs: Sequence[JobRef], *, start: int, claimed: bool
    ) -> Outcome:
        """Write jobs to the spool and switch to spooling until the drainer catches up."""
        if not self._spooling:
            log.warning(
                "broker unavailable; spooling deliveries",
                extra=log_fields(delivery_id=delivery_id, task="spool"),
            )
        self._spooling = True
        added = self.spool.append(delivery_id, jobs, start=start, claimed=claimed)
        return Outcome.SPOOLED if added else Outcome.DUPLICATE

    def _run(self) -> None:
        """Drain the spool whenever it holds jobs, backing off while Redis stays down."""
        delay = self._interval
        while not self._stop.is_set():
            self._wake.wait(delay)
            self._wake.clear()
            if self._stop.is_set() or not self._spooling:
                delay = self._interval
                continue
            delay = self._drain_step(delay)

    def _drain_step(self, delay: float) -> float:
        """Try one drain; return how long to wait before the next try."""
        try:
            self.broker.ping()
            if self.drain():
                return 0.0
        except ConnectionError:
            return min(max(delay * 2, self._interval), self._max_backoff)
        except Exception:
            log.exception("spool drain failed", extra=log_fields(task="spool"))
            return self._max_backoff
        return self._interval


def log_fields(**values: Any) -> dict[str, Any]:
    """Return structured log fields, always with delivery_id, installation_id, task, tier."""
    fields: dict[str, Any] = {"delivery_id": "", "installation_id": 0, "task": "", "tier": ""}
    fields.update(values)
    return fields


class CeleryBroker:
    """Publish by task name through a minimal Celery app; claim deliveries in Redis."""

    def __init__(
        self, redis_url: str, *, connect_timeout: float = 0.5, timeout: float = 2.0
    ) -> None:
        """Connect lazily, with short timeouts and no retries so an outage shows at once."""
        import redis
        from celery import Celery
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._redis = redis.Redis.from_url(
            redis_url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            # One immediate retry replaces a pooled connection that died with a restarted
            # Redis; a Redis that is really down still fails within connect_timeout.
            retry=Retry(NoBackoff(), 1),
        )
        self._celery = Celery("cibot-edge", broker=redis_url, set_as_current=False)
        self._celery.conf.update(
            broker_connection_retry=False,
            broker_connection_retry_on_startup=False,
            broker_connection_timeout=connect_timeout,
            broker_connection_max_retries=0,
            broker_transport_options={
                "socket_connect_timeout": connect_timeout,
                "socket_timeout": timeout,
                "retry_on_timeout": False,
            },
            task_publish_retry=True,
            task_publish_retry_policy={
                "max_retries": 1,
                "interval_start": 0,
                "interval_step": 0,
                "interval_max": 0,
            },
            task_serializer="json",
            accept_content=["json"],
        )

    def claim(self, delivery_id: str) -> bool:
        """Mark the delivery seen with SET NX and a TTL; False when it was already."""
        with _translated():
            return bool(
                self._redis.set(delivery_key(delivery_id), "1", nx=True, ex=DEDUPE_TTL_SECONDS)
            )

    def release(self, delivery_id: str) -> None:
        """Delete the delivery's claim."""
        with _translated():
            self._redis.delete(delivery_key(delivery_id))

    def set_head(self, repo: str, pr_number: int, head_sha: str) -> None:
        """Record the PR's newest head SHA for the worker's supersede check."""
        with _translated():
            self._redis.set(head_key(repo, pr_number), head_sha, ex=HEAD_TTL_SECONDS)

    def publish(self, job: JobRef, *, task_id: str, countdown: float) -> None:
        """Send ``cibot.dispatch`` with the job's identifiers on the ``github`` queue."""
        with _translated():
            self._celery.send_task(
                DISPATCH_TASK,
                kwargs=job.to_kwargs(),
                queue=QUEUE,
                task_id=task_id,
                countdown=countdown or None,
            )

    def ping(self) -> None:
        """Return when Redis answers PING; raise ConnectionError otherwise."""
        with _translated():
            self._redis.ping()

    def close(self) -> None:
        """Close the Redis pool and the Celery connections."""
        self._redis.close()
        self._celery.close()


@contextmanager
def _translated() -> Iterator[None]:
    """Turn redis-py and kombu connection failures into ConnectionError."""
    import kombu.exceptions
    import redis

    # Only "cannot take it now" errors spool; anything else is a bug and must surface.
    unavailable = (
        OSError,
        redis.ConnectionError,
        redis.TimeoutError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.OutOfMemoryError,
        redis.exceptions.MaxConnectionsError,
        kombu.exceptions.OperationalError,
    )
    try:
        yield
    except unavailable as exc:
        raise ConnectionError(f"broker unavailable: {type(exc).__name__}") from exc
