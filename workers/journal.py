"""Write each model call to Redis before it is made, so a killed attempt's calls are priced.

An attempt keeps its calls in memory and writes them to the ledger when it ends, however
it ends. A worker killed with SIGKILL never gets there: the model server saw (and billed)
the calls, and the ledger would understate the job's cost. So the attempt also journals
each call in the job's Redis hash, a provisional record just before the request goes out
(priced at its worst case, as the budget reserves it: the prompt plus the most the reply
may use) and the real record when it returns. The next attempt, holding the job's lock so
no live attempt is writing, moves whatever a dead attempt left into the ledger.

The journal holds only counts, tiers, models and prices, never prompt or reply text.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from workers.llm import CallRecord

KILLED = "worker_lost"  # the error_kind of a call whose attempt died while it ran
TTL_S = 7 * 24 * 3600


class Journal:
    """Mirror one attempt's calls into a Redis hash as they start and end."""

    def __init__(self, client: Any, key: str, attempt: str, calls: list[Any]) -> None:
        """Journal into hash ``key`` under ``attempt``; ``calls`` is the attempt's own list."""
        self.client = client
        self.key = key
        self.attempt = attempt
        self.calls = calls
        self._pending = False

    def begin(self, provisional: CallRecord) -> None:
        """Journal a call about to be made (the model client calls this first)."""
        self._write(len(self.calls), dataclasses.replace(provisional, error_kind=KILLED))
        self._pending = True

    def __call__(self, record: CallRecord) -> None:
        """Keep a finished call (or a skipped tier) and journal it over its provisional row."""
        self.calls.append(record)
        self._write(len(self.calls) - 1, record)
        self._pending = False

    def close(self) -> None:
        """Forget this attempt's entries once the ledger has its calls."""
        fields = [f"{self.attempt}#{i}" for i in range(len(self.calls) + 1)]
        self.client.hdel(self.key, *fields)

    def _write(self, index: int, call: CallRecord) -> None:
        """Store one call under ``attempt#index``."""
        self.client.hset(self.key, f"{self.attempt}#{index}", json.dumps(dataclasses.asdict(call)))
        self.client.expire(self.key, TTL_S)


def orphans(client: Any, key: str) -> dict[str, dict[str, CallRecord]]:
    """Return every journaled attempt's calls, by attempt then field, in call order."""
    raw: dict[Any, Any] = client.hgetall(key) or {}
    found: dict[str, dict[str, CallRecord]] = {}
    for field, value in sorted(raw.items(), key=lambda item: _order(item[0])):
        name = field.decode() if isinstance(field, bytes) else str(field)
        attempt, _, index = name.rpartition("#")
        if attempt and index.isdigit():
            found.setdefault(attempt, {})[name] = _record(json.loads(value))
    return found


def _record(data: dict[str, Any]) -> CallRecord:
    """Rebuild a journaled call, including one an older version wrote in the ledger's shape.

    That shape kept the redactions as a count and a comma-separated ``redaction_kinds``;
    the count is kept, split evenly over the kinds, so the ledger's total stays the same.
    """
    if isinstance(data.get("redactions"), int):
        count = data.pop("redactions")
        kinds = [k for k in str(data.pop("redaction_kinds", "")).split(",") if k] or ["unknown"]
        share, rest = divmod(count, len(kinds))
        data["redactions"] = {k: share + (i < rest) for i, k in enumerate(kinds)}
    names = {f.name for f in dataclasses.fields(CallRecord)}
    return CallRecord(**{k: v for k, v in data.items() if k in names})


def _order(field: Any) -> tuple[str, int]:
    """Sort fields by attempt, then by call index as a number."""
    name = field.decode() if isinstance(field, bytes) else str(field)
    attempt, _, index = name.rpartition("#")
    return attempt, int(index) if index.isdigit() else -1


def settle(client: Any, key: str, record: Callable[[str, list[CallRecord]], None]) -> int:
    """Hand each dead attempt's journaled calls to ``record``, then drop them; return how many.

    Call it only while holding the job's lock: then no live attempt is journaling.
    """
    moved = 0
    for attempt, calls in orphans(client, key).items():
        record(attempt, list(calls.values()))
        client.hdel(key, *calls)
        moved += len(calls)
    return moved
