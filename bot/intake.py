"""Queue a delivery's jobs for the workers exactly once, with a durable spool for outages.

The request path makes one Redis round trip per delivery: a Lua script that claims the
delivery id (``SET NX`` with a TTL), records the newest head SHA of a PR for debounced
jobs, and LPUSHes every job's Celery message, all atomically. When Redis cannot take
it, the delivery goes to the SQLite spool instead, and from then on every delivery
does, until the drainer thread has handed the whole spool to Redis, so a later
delivery never overtakes an earlier one.

The edge never imports worker code: messages name the task (``cibot.dispatch``) and go
to the ``github`` queue. They are Celery protocol-2 messages in kombu's Redis envelope,
i.e. what ``send_task`` would LPUSH, built by ``bot.kernel.jobs.envelope`` without a
Celery app; ``send_task`` is not used because kombu builds a Redis client per publish
and cannot share the claim's round trip (see tests/benchmarks/bench_webhook.py).

Contract with the worker for debounced jobs (JobRef args carry ``supersede``): drop
the job when ``GET cibot:head:{repo}#{pr}`` holds a SHA other than its ``head_sha``.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from bot.kernel.jobs import (
    DISPATCH,
    DUE,
    GITHUB,
    GRACE_S,
    OUTBOX,
    SUPERSEDE,
    JobRef,
    envelope,
    head_key,
)
from bot.spool import Spool, task_id

log = logging.getLogger(__name__)

# GitHub lets operators redeliver for 3 days; remember delivery ids a little longer.
DEDUPE_TTL_SECONDS = 4 * 24 * 3600
HEAD_TTL_SECONDS = 7 * 24 * 3600
DEFAULT_DEBOUNCE_SECONDS = 30.0

# KEYS: delivery key, queue list, the outbox hash and due set, then one head key per message.
# ARGV: dedupe TTL, head TTL, outbox due time, then (message, head SHA or "", task id) per
# message. A script runs atomically: the claim, the jobs and their outbox entries (which
# let a worker send again a message Redis lost on its way to a worker, workers.outbox)
# land together or not at all.
ENQUEUE_SCRIPT = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
for i = 1, #KEYS - 4 do
  local message, sha, id = ARGV[1 + 3 * i], ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  if sha ~= '' then
    redis.call('SET', KEYS[4 + i], sha, 'EX', ARGV[2])
  end
  redis.call('LPUSH', KEYS[2], message)
  redis.call('HSET', KEYS[3], id, cjson.encode({queue = KEYS[2], message = message}))
  redis.call('ZADD', KEYS[4], ARGV[3], id)
end
return 1
"""


def delivery_key(delivery_id: str) -> str:
    """Return the Redis key that marks a delivery id as seen."""
    return f"cibot:delivery:{delivery_id}"


class DeliveryOutcome(StrEnum):
    """Say what happened to a delivery's jobs."""

    ENQUEUED = "enqueued"
    SPOOLED = "spooled"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"


@dataclass(frozen=True)
class Message:
    """Describe one job to queue: its stable task id, its delay, and whether it debounces."""

    job: JobRef
    task_id: str
    countdown: float = 0.0
    supersede: bool = False


class Broker(Protocol):
    """Queue a delivery's messages atomically; raise ConnectionError when it cannot."""

    def enqueue(self, delivery_id: str, messages: Sequence[Message]) -> bool:
        """Claim the delivery and queue its messages; False if it was claimed before."""

    def ping(self) -> None:
        """Return when the broker answers; raise ConnectionError otherwise."""

    def close(self) -> None:
        """Release connections."""


class Intake:
    """Accept a delivery's jobs: queue or spool them; drain the spool when Redis is back."""

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

    def messages(self, delivery_id: str, jobs: Sequence[JobRef]) -> list[Message]:
        """Return the messages for a delivery's jobs; debounced jobs wait and supersede."""
        out = []
        for index, job in enumerate(jobs):
            debounced = bool(job.args.get(SUPERSEDE)) and job.pr_number is not None
            countdown = self.debounce_seconds if debounced else 0.0
            out.append(Message(job, task_id(delivery_id, index), countdown, debounced))
        return out

    def accept(self, delivery_id: str, jobs: Sequence[JobRef]) -> DeliveryOutcome:
        """Queue a delivery's jobs exactly once, spooling them if the broker is down."""
        if not jobs:
            return DeliveryOutcome.IGNORED
        with self._lock:
            if self._spooling:
                return self._to_spool(delivery_id, jobs)
            try:
                fresh = self.broker.enqueue(delivery_id, self.messages(delivery_id, jobs))
            except ConnectionError:
                return self._to_spool(delivery_id, jobs)
            return DeliveryOutcome.ENQUEUED if fresh else DeliveryOutcome.DUPLICATE

    def drain(self) -> int:
        """Queue one batch of spooled deliveries in order; return how many were queued.

        The broker calls run outside the lock, so a slow Redis never stalls the request
        path; only switching back to direct queueing takes the lock, and it happens when
        the spool is empty under that lock, so no delivery can slip in behind it. Raises
        ConnectionError when the broker fails; deliveries queued before are marked done.
        """
        queued = 0
        batch = self.spool.pending(self._batch)
        for entries in batch:
            delivery_id = entries[0].delivery_id
            jobs = [entry.job for entry in entries]
            if self.broker.enqueue(delivery_id, self.messages(delivery_id, jobs)):
                queued += 1
            self.spool.mark_done(delivery_id)
        if len(batch) < self._batch:
            with self._lock:
                if self._spooling and self.spool.depth() == 0:
                    self._spooling = False
                    log.info(
                        "spool drained; deliveries go to the broker again",
                        extra=log_fields(task="spool"),
                    )
        return queued

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

    def _to_spool(self, delivery_id: str, jobs: Sequence[JobRef]) -> DeliveryOutcome:
        """Write jobs to the spool and switch to spooling until the drainer catches up."""
        if not self._spooling:
            log.warning(
                "broker unavailable; spooling deliveries",
                extra=log_fields(delivery_id=delivery_id, task="spool"),
            )
        self._spooling = True
        added = self.spool.append(delivery_id, jobs)
        return DeliveryOutcome.SPOOLED if added else DeliveryOutcome.DUPLICATE

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
            self.drain()
        except ConnectionError:
            return min(max(delay * 2, self._interval), self._max_backoff)
        except Exception:
            log.exception("spool drain failed", extra=log_fields(task="spool"))
            return self._max_backoff
        return 0.0 if self._spooling else self._interval


def _kwargs(job: JobRef) -> dict[str, Any]:
    """Return ``job.to_kwargs()`` without asdict's recursive deep copy.

    JobRef holds scalars plus one flat dict of scalars, so a shallow copy is the same.
    """
    kwargs = {field.name: getattr(job, field.name) for field in _JOB_FIELDS}
    kwargs["args"] = dict(job.args)
    return kwargs


_JOB_FIELDS = dataclasses.fields(JobRef)


def log_fields(**values: Any) -> dict[str, Any]:
    """Return structured log fields, always with delivery_id, installation_id, task, tier."""
    fields: dict[str, Any] = {"delivery_id": "", "installation_id": 0, "task": "", "tier": ""}
    fields.update(values)
    return fields


class CeleryBroker:
    """Queue Celery protocol-2 messages on Redis with the delivery claim in one script."""

    def __init__(
        self, redis_url: str, *, connect_timeout: float = 0.5, timeout: float = 2.0
    ) -> None:
        """Connect lazily, with short timeouts so an outage shows at once."""
        import redis
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
        self._script = self._redis.register_script(ENQUEUE_SCRIPT)

    def enqueue(self, delivery_id: str, messages: Sequence[Message]) -> bool:
        """Claim the delivery and LPUSH its messages atomically; False for a duplicate."""
        keys = [delivery_key(delivery_id), GITHUB, OUTBOX, DUE]
        due = time.time() + GRACE_S + max((m.countdown for m in messages), default=0)
        args: list[str | int | float] = [DEDUPE_TTL_SECONDS, HEAD_TTL_SECONDS, due]
        for message in messages:
            job = message.job
            keys.append(head_key(job.repo, job.pr_number))
            sha = job.head_sha if message.supersede else ""
            args += [self.envelope(message), sha, message.task_id]
        with _translated():
            return bool(self._script(keys=keys, args=args))

    def envelope(self, message: Message) -> str:
        """Return the kombu Redis envelope of the Celery message for one job."""
        job = message.job
        return envelope(
            DISPATCH,
            GITHUB,
            _kwargs(job),
            task_id=message.task_id,
            countdown=message.countdown or None,
            kwargsrepr=f"{job.task} {job.repo}#{job.pr_number} {job.delivery_id}",
        )

    def ping(self) -> None:
        """Return when Redis answers PING; raise ConnectionError otherwise."""
        with _translated():
            self._redis.ping()

    def close(self) -> None:
        """Close the Redis pool."""
        self._redis.close()


@contextmanager
def _translated() -> Iterator[None]:
    """Turn "Redis cannot take it now" failures into ConnectionError; let bugs surface."""
    import redis

    unavailable = (
        OSError,
        redis.ConnectionError,
        redis.TimeoutError,
        redis.exceptions.BusyLoadingError,
        redis.exceptions.ReadOnlyError,
        redis.exceptions.OutOfMemoryError,
        redis.exceptions.MaxConnectionsError,
    )
    try:
        yield
    except unavailable as exc:
        raise ConnectionError(f"broker unavailable: {type(exc).__name__}") from exc
