"""Keep what the pipeline knows about a job between its steps: claim, lock, done and result.

The pipeline talks to this port only, never to Redis. ``JobState`` states every operation
once, over five storage primitives; ``RedisJobState`` keeps them in Redis (shared by every
worker, locks renewed by the process's leases) and ``MemoryJobState`` in this process (the
Actions mode, which runs every step of one job inline and has no broker).

Keys, one job's state under ``cibot:job:<job key>:<part>``:

- ``claim``: held while dispatch gathers and routes, so one copy of a job routes it;
- ``dispatched``: dispatch queued it; ``done``: published, or dropped for good;
- ``lock``: held while run_job computes; ``result``: the rendered payload for publish;
- ``gathered``: what dispatch read and built, so run_job does not gather again;
- ``held_since`` and ``waiting``: the job waits for the private model, and the PR knows;
- ``calls``: the journal of an attempt's model calls (``workers.journal``).
"""

from __future__ import annotations

import abc
import base64
import contextlib
import json
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from bot.kernel.jobs import JobRef, head_key
from workers import journal
from workers.journal import Journal
from workers.leases import Leases
from workers.ledger import job_key
from workers.llm import CallRecord

RESULT_TTL_S = 7 * 24 * 3600
DONE_TTL_S = 30 * 24 * 3600
GATHERED_TTL_S = 24 * 3600  # long enough for a job held for the private model, then re-read
PUBLISH_LOCK_TTL_S = 60

Settle = Callable[[str, list[CallRecord]], None]


class Trail(Protocol):
    """Take an attempt's model calls as they finish; ``close`` once the ledger has them."""

    def __call__(self, record: Any) -> None:
        """Keep one finished call."""

    def close(self) -> None:
        """Forget what was kept for a killed attempt's sake."""


class _Kept:
    """Keep calls in the attempt's own list, with nothing to journal elsewhere."""

    def __init__(self, calls: list[Any]) -> None:
        """Append to ``calls``."""
        self.calls = calls

    def __call__(self, record: Any) -> None:
        """Keep one finished call."""
        self.calls.append(record)

    def close(self) -> None:
        """Forget nothing: nothing was written elsewhere."""


def state_key(ref: JobRef, part: str) -> str:
    """Return the key holding one piece of a job's state."""
    return f"cibot:job:{job_key(ref)}:{part}"


def pack(text: str) -> str:
    """Compress a stored gathering to text (zlib, then base64)."""
    return base64.b64encode(zlib.compress(text.encode("utf-8"), 6)).decode("ascii")


def _text(raw: Any) -> str | None:
    """Return a stored value as text (Redis answers bytes)."""
    if raw is None:
        return None
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)


class JobState(abc.ABC):
    """State every job-state operation once, over the storage primitives a subclass gives."""

    # ---- the primitives --------------------------------------------------------------------

    @abc.abstractmethod
    def _get(self, key: str) -> str | None:
        """Return a key's value, or None."""

    @abc.abstractmethod
    def _put(self, key: str, value: str, *, ttl_s: float, only_new: bool = False) -> bool:
        """Store a value with an expiry; with ``only_new``, only if the key is absent."""

    @abc.abstractmethod
    def _has(self, *keys: str) -> bool:
        """Say whether any of the keys is present."""

    @abc.abstractmethod
    def _drop(self, *keys: str) -> None:
        """Delete keys."""

    @abc.abstractmethod
    def _hold(self, key: str, ttl_s: float) -> contextlib.AbstractContextManager[bool]:
        """Hold a lock on ``key`` for the block; yield whether we got it."""

    @abc.abstractmethod
    def journal(self, ref: JobRef, attempt: str, calls: list[Any]) -> Trail:
        """Return the recorder an attempt's model calls go through (it appends to ``calls``)."""

    @abc.abstractmethod
    def settle(self, ref: JobRef, record: Settle) -> int:
        """Hand the calls a killed attempt journaled to ``record``; return how many."""

    # ---- what the pipeline asks ------------------------------------------------------------

    def newest_head(self, repo: str, pr_number: int) -> str | None:
        """Return the newest head SHA the edge saw for a PR, or None."""
        return self._get(head_key(repo, pr_number))

    def claim(self, ref: JobRef, ttl_s: float) -> contextlib.AbstractContextManager[bool]:
        """Hold the job's dispatch claim: of several copies of a job, one routes it."""
        return self._hold(state_key(ref, "claim"), ttl_s)

    def lock(self, ref: JobRef, ttl_s: float) -> contextlib.AbstractContextManager[bool]:
        """Hold the job's compute lock: one attempt at a time calls the model."""
        return self._hold(state_key(ref, "lock"), ttl_s)

    def publishing(self, ref: JobRef, marker: str) -> contextlib.AbstractContextManager[bool]:
        """Hold the PR's lock for one marker: an upsert reads then writes, one at a time."""
        return self._hold(f"cibot:publish:{ref.repo}#{ref.pr_number}:{marker}", PUBLISH_LOCK_TTL_S)

    def done(self, ref: JobRef) -> bool:
        """Say whether the job is published, or dropped for good."""
        return self._has(state_key(ref, "done"))

    def dispatched(self, ref: JobRef) -> bool:
        """Say whether the job was queued by dispatch (or is already done)."""
        return self._has(state_key(ref, "done"), state_key(ref, "dispatched"))

    def mark_dispatched(self, ref: JobRef) -> None:
        """Record that dispatch queued the job."""
        self._put(state_key(ref, "dispatched"), "1", ttl_s=DONE_TTL_S)

    def mark_done(self, ref: JobRef) -> None:
        """Record that the job is finished: redeliveries stop here."""
        self._put(state_key(ref, "done"), "1", ttl_s=DONE_TTL_S)

    def keep_gathered(self, ref: JobRef, text: str) -> None:
        """Keep what dispatch gathered for run_job, compressed (it repeats the diff's lines)."""
        self._put(state_key(ref, "gathered"), pack(text), ttl_s=GATHERED_TTL_S)

    def gathered(self, ref: JobRef) -> str | None:
        """Return what dispatch gathered, or None when it is gone or unreadable."""
        packed = self._get(state_key(ref, "gathered"))
        if packed is None:
            return None
        try:
            return zlib.decompress(base64.b64decode(packed)).decode("utf-8")
        except (ValueError, zlib.error):
            return None  # written by another version: gather again

    def has_result(self, ref: JobRef) -> bool:
        """Say whether a computed result waits to be published."""
        return self._has(state_key(ref, "result"))

    def keep_result(self, ref: JobRef, result: dict[str, Any]) -> None:
        """Keep the rendered result for the publish step; drop what was gathered for it."""
        self._put(state_key(ref, "result"), json.dumps(result), ttl_s=RESULT_TTL_S)
        self._drop(state_key(ref, "gathered"))

    def result(self, ref: JobRef) -> dict[str, Any] | None:
        """Return the stored result, or None."""
        raw = self._get(state_key(ref, "result"))
        return None if raw is None else dict(json.loads(raw))

    def drop_result(self, ref: JobRef) -> None:
        """Forget a result that will not be published (the job was superseded)."""
        self._drop(state_key(ref, "result"))

    def finish(self, ref: JobRef) -> None:
        """Drop what only an unfinished job needs: its result, gathered input and waiting note."""
        self._drop(*(state_key(ref, part) for part in ("result", "gathered", "waiting")))
        self._drop(state_key(ref, "held_since"))

    def held_since(self, ref: JobRef) -> float:
        """Return when the job first waited for the private model (now, the first time)."""
        self._put(state_key(ref, "held_since"), repr(time.time()), ttl_s=DONE_TTL_S, only_new=True)
        return float(self._get(state_key(ref, "held_since")) or time.time())

    def first_note(self, name: str) -> bool:
        """Claim a once-only note (say, a refused config for one file content); False if seen."""
        return self._put(f"cibot:{name}", "1", ttl_s=DONE_TTL_S, only_new=True)

    def unnote(self, name: str) -> None:
        """Give a once-only note back, so the next attempt tries to post it again."""
        self._drop(f"cibot:{name}")

    def waiting_noted(self, ref: JobRef) -> bool:
        """Say whether the PR was told the job waits for the private model."""
        return self._has(state_key(ref, "waiting"))

    def note_waiting(self, ref: JobRef) -> None:
        """Record that the PR was told the job waits for the private model."""
        self._put(state_key(ref, "waiting"), "1", ttl_s=DONE_TTL_S)


_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisJobState(JobState):
    """Keep job state in Redis, shared by every worker; the process's leases renew its locks."""

    def __init__(self, client: Any, leases: Leases | None = None) -> None:
        """Use ``client`` (redis-py); ``leases`` renews held locks so they die with the process."""
        self.client = client
        self.leases = leases

    def _get(self, key: str) -> str | None:
        """Return a key's value, or None."""
        return _text(self.client.get(key))

    def _put(self, key: str, value: str, *, ttl_s: float, only_new: bool = False) -> bool:
        """SET with PX, and NX when only_new."""
        return bool(self.client.set(key, value, nx=only_new, px=max(1, int(ttl_s * 1000))))

    def _has(self, *keys: str) -> bool:
        """EXISTS over the keys."""
        return bool(self.client.exists(*keys))

    def _drop(self, *keys: str) -> None:
        """DEL the keys."""
        self.client.delete(*keys)

    @contextlib.contextmanager
    def _hold(self, key: str, ttl_s: float) -> Iterator[bool]:
        """SET NX a token; release it only if it is still ours.

        The lock lives ``ttl_s`` past its holder's last renewal: the leases renew it while
        this process lives, so a killed worker's lock frees itself within ``ttl_s``.
        """
        token = uuid.uuid4().hex
        held = bool(self.client.set(key, token, nx=True, px=max(1, int(ttl_s * 1000))))
        if held and self.leases is not None:
            self.leases.hold(key, token)
        try:
            yield held
        finally:
            if held:
                if self.leases is not None:
                    self.leases.release(key)
                with contextlib.suppress(Exception):  # it may have expired and moved on
                    self.client.eval(_RELEASE, 1, key, token)

    def journal(self, ref: JobRef, attempt: str, calls: list[Any]) -> Journal:
        """Journal each call in the job's Redis hash before it is sent."""
        return Journal(self.client, state_key(ref, "calls"), attempt, calls)

    def settle(self, ref: JobRef, record: Settle) -> int:
        """Move a killed attempt's journaled calls to ``record`` (hold the job's lock)."""
        return journal.settle(self.client, state_key(ref, "calls"), record)


class MemoryJobState(JobState):
    """Keep job state in this process: one process runs every step, so nothing is shared."""

    def __init__(self) -> None:
        """Start empty."""
        self._values: dict[str, tuple[str, float]] = {}
        self._guard = threading.Lock()

    def _live(self, key: str) -> str | None:
        """Return a key's value, dropping it once expired (call under the guard)."""
        entry = self._values.get(key)
        if entry is not None and entry[1] < time.monotonic():
            del self._values[key]
            return None
        return entry[0] if entry else None

    def _get(self, key: str) -> str | None:
        """Return a key's value, or None."""
        with self._guard:
            return self._live(key)

    def _put(self, key: str, value: str, *, ttl_s: float, only_new: bool = False) -> bool:
        """Store a value until ``ttl_s`` from now; with only_new, only if absent."""
        with self._guard:
            if only_new and self._live(key) is not None:
                return False
            self._values[key] = (value, time.monotonic() + ttl_s)
            return True

    def _has(self, *keys: str) -> bool:
        """Say whether any key is present."""
        with self._guard:
            return any(self._live(key) is not None for key in keys)

    def _drop(self, *keys: str) -> None:
        """Delete keys."""
        with self._guard:
            for key in keys:
                self._values.pop(key, None)

    @contextlib.contextmanager
    def _hold(self, key: str, ttl_s: float) -> Iterator[bool]:
        """Hold ``key`` for the block, if no one else in this process does."""
        held = self._put(key, uuid.uuid4().hex, ttl_s=ttl_s, only_new=True)
        try:
            yield held
        finally:
            if held:
                self._drop(key)

    def journal(self, ref: JobRef, attempt: str, calls: list[Any]) -> Trail:
        """Keep calls in the attempt's list only: a killed process leaves no next attempt."""
        return _Kept(calls)

    def settle(self, ref: JobRef, record: Settle) -> int:
        """Settle nothing: no other attempt of this job ever ran in this process."""
        return 0
