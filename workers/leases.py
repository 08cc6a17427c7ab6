"""Keep what a live worker holds from being taken over, and let it go when the worker dies.

Two claims expire unless their holder renews them:

- a job's lock in Redis (``workers.state.RedisJobState``), set with a TTL of ``LEASE_S``;
- the broker's claim on each message the worker has taken. Kombu's Redis transport keeps
  unacked messages in the ``unacked_index`` sorted set, scored by delivery time, and any
  worker restores those older than the visibility timeout to their queue
  (https://docs.celeryq.dev/projects/kombu/en/stable/reference/kombu.transport.redis.html).

One daemon thread per process renews both every ``RENEW_S`` while the process lives: it
re-scores the worker's reserved, scheduled (ETA) and running messages to now (``ZADD XX``,
so a message acked meanwhile is not brought back) and extends each lock it still owns. The
visibility timeout can then be ``LEASE_S`` whatever a job's time limit: the job of a worker
killed with SIGKILL is restored within ``LEASE_S`` plus the restore interval, and its lock
has expired by then, while a live worker's hour-long job or five-minute retry wait is never
handed to another.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger("cibot.leases")

LEASE_S = 30.0  # how long a dead holder's claims outlive it
RENEW_S = 5.0  # how often a live holder renews them (several renewals fit in a lease)
RESTORE_S = 5.0  # how often a worker looks for messages whose lease ran out
UNACKED_INDEX = "unacked_index"  # kombu's Redis transport default ``unacked_index_key``

_EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

Tags = Callable[[], Iterable[str]]


class Leases:
    """Renew a process's locks and message claims from one daemon thread."""

    def __init__(self, client: Any, *, lease_s: float = LEASE_S, renew_s: float = RENEW_S) -> None:
        """Keep the Redis client; nothing runs until ``start``."""
        self.client = client
        self.lease_s = lease_s
        self.renew_s = renew_s
        self._locks: dict[str, str] = {}
        self._tags: list[Tags] = []
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._chores: list[list[Any]] = []  # [interval, next due, function]
        self.failures = 0  # renewals that could not reach Redis, for the log and tests

    def hold(self, key: str, token: str) -> None:
        """Renew lock ``key`` while it holds ``token``, until ``release``."""
        with self._guard:
            self._locks[key] = token
        self.start()

    def release(self, key: str) -> None:
        """Stop renewing lock ``key``."""
        with self._guard:
            self._locks.pop(key, None)

    def watch_messages(self, tags: Tags) -> None:
        """Renew the broker's claim on every delivery tag ``tags()`` returns."""
        with self._guard:
            self._tags.append(tags)
        self.start()

    def every(self, seconds: float, chore: Callable[[], Any]) -> None:
        """Also run ``chore`` on the renewal thread every ``seconds`` (errors are logged)."""
        with self._guard:
            self._chores.append([seconds, time.monotonic() + seconds, chore])
        self.start()

    def start(self) -> None:
        """Start the renewal thread once per process (a forked child starts its own)."""
        with self._guard:
            if self._pid != os.getpid():  # inherited across fork: the thread stayed behind
                self._pid, self._thread = os.getpid(), None
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="cibot-leases", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop renewing (the claims then expire on their own)."""
        self._stop.set()

    def _run(self) -> None:
        """Renew every RENEW_S until stopped."""
        while not self._stop.wait(self.renew_s):
            self.renew_once()
            self._run_chores()

    def _run_chores(self) -> None:
        """Run the chores that are due."""
        with self._guard:
            due = [c for c in self._chores if c[1] <= time.monotonic()]
            for chore in due:
                chore[1] = time.monotonic() + chore[0]
        for _, _, chore in due:
            try:
                chore()
            except Exception as exc:  # Redis away, most likely: try again next time
                log.warning("lease thread chore failed", extra={"error": repr(exc)})

    def renew_once(self) -> int:
        """Renew every lock and message claim now; return how many were renewed."""
        with self._guard:
            locks = dict(self._locks)
            sources = list(self._tags)
        tags = [tag for source in sources for tag in _safely(source)]
        try:
            return self._renew_locks(locks) + self._renew_messages(tags)
        except Exception as exc:  # Redis away: the claims run down; retry next tick
            self.failures += 1
            if self.failures == 1 or self.failures % 12 == 0:
                log.warning("lease renewal failed", extra={"error": repr(exc)})
            return 0

    def _renew_locks(self, locks: dict[str, str]) -> int:
        """Extend each lock still holding our token; forget the ones that are not."""
        renewed = 0
        for key, token in locks.items():
            if self.client.eval(_EXTEND, 1, key, token, int(self.lease_s * 1000)):
                renewed += 1
            else:
                self.release(key)
        return renewed

    def _renew_messages(self, tags: list[str]) -> int:
        """Re-score the held messages to now; only those still unacked are touched."""
        if not tags:
            return 0
        now = time.time()  # kombu scores with the local clock and restores by it too
        return int(self.client.zadd(UNACKED_INDEX, dict.fromkeys(tags, now), xx=True, ch=True))


def _safely(source: Tags) -> list[str]:
    """Return a tag source's tags, or none when it fails (say, state changing meanwhile)."""
    with contextlib.suppress(Exception):
        return [str(tag) for tag in source() if tag]
    return []


def worker_tags() -> list[str]:
    """Return the delivery tags of every message this Celery worker process holds unacked.

    ``celery.worker.state.requests`` holds the reserved, ETA-scheduled and running requests
    (Celery 5.5+); each knows its message's delivery tag.
    """
    from celery.worker import state

    return [
        str(tag)
        for request in list(state.requests.values())
        if (tag := (getattr(request, "delivery_info", None) or {}).get("delivery_tag"))
    ]


_current: Leases | None = None
_current_guard = threading.Lock()


def for_process(client_factory: Callable[[], Any]) -> Leases:
    """Return this process's Leases, making it (with its own Redis client) the first time."""
    global _current
    with _current_guard:
        if _current is None or _current._pid != os.getpid():
            _current = Leases(client_factory())
        return _current
