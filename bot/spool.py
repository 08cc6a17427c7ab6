"""Keep deliveries the broker could not take in a durable local SQLite spool.

Why exactly once: each job is one row keyed UNIQUE (delivery_id, job_index), so a
redelivery, or a re-spool of the jobs left after a partial send, never adds a second
row. The drainer takes rows in ``seq`` order, publishes one, and marks that one row
done in its own committed transaction before it touches the next. The only window
for a duplicate is a crash after the publish and before that commit: the row is then
published once more on restart, with the same Celery task id (``task_id``) and the
same JobRef idempotency key, which the worker absorbs by keying its work and
upserting its output. No row can be lost, since it is marked done only after the
broker took it. Rows that are done stay for ``KEEP_SECONDS`` so a late redelivery is
still recognised, then ``purge`` deletes them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from workers.job import JobRef

KEEP_SECONDS = 3 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT    NOT NULL,
    job_index   INTEGER NOT NULL,
    job         TEXT    NOT NULL,
    claimed     INTEGER NOT NULL DEFAULT 0,
    created     REAL    NOT NULL,
    done        REAL,
    UNIQUE (delivery_id, job_index)
);
CREATE INDEX IF NOT EXISTS spool_pending ON spool (seq) WHERE done IS NULL;
"""


@dataclass(frozen=True)
class Entry:
    """Hold one spooled job: its order, its delivery and index, and the job itself."""

    seq: int
    delivery_id: str
    job_index: int
    job: JobRef
    claimed: bool

    @property
    def task_id(self) -> str:
        """Return the stable Celery task id of this job, the same on every publish."""
        return task_id(self.delivery_id, self.job_index)


def task_id(delivery_id: str, job_index: int) -> str:
    """Return the Celery task id for job ``job_index`` of a delivery."""
    return f"{delivery_id}:{job_index}"


class Spool:
    """Store and hand back spooled jobs in arrival order; safe to share across threads."""

    def __init__(self, path: Path) -> None:
        """Open (or create) the spool file in WAL mode with full fsync on commit."""
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # FULL: a spooled delivery survives power loss, not just a process crash.
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)

    def append(
        self, delivery_id: str, jobs: Sequence[JobRef], *, start: int = 0, claimed: bool = False
    ) -> int:
        """Spool jobs ``start``.. of a delivery; return how many rows were new."""
        rows = [
            (delivery_id, start + i, json.dumps(job.to_kwargs()), int(claimed), time.time())
            for i, job in enumerate(jobs)
        ]
        with self._lock, self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO spool (delivery_id, job_index, job, claimed, created)"
                " VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def pending(self, limit: int = 100) -> list[Entry]:
        """Return up to ``limit`` jobs not yet handed to the broker, oldest first."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT seq, delivery_id, job_index, job, claimed FROM spool"
                " WHERE done IS NULL ORDER BY seq LIMIT ?",
                (limit,),
            )
            rows = cursor.fetchall()
        return [
            Entry(seq, delivery, index, JobRef.from_kwargs(json.loads(job)), bool(claimed))
            for seq, delivery, index, job, claimed in rows
        ]

    def mark_done(self, seq: int) -> None:
        """Record that the broker took the job in row ``seq``; committed before returning."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE spool SET done = ? WHERE seq = ?", (time.time(), seq))

    def mark_claimed(self, delivery_id: str) -> None:
        """Record that the delivery's dedupe key is ours, for every row of the delivery."""
        with self._lock, self._transaction():
            self._db.execute("UPDATE spool SET claimed = 1 WHERE delivery_id = ?", (delivery_id,))

    def drop_delivery(self, delivery_id: str) -> None:
        """Mark every pending row of a delivery done without publishing (a duplicate)."""
        with self._lock, self._transaction():
            self._db.execute(
                "UPDATE spool SET done = ? WHERE delivery_id = ? AND done IS NULL",
                (time.time(), delivery_id),
            )

    def depth(self) -> int:
        """Return how many jobs wait for the broker."""
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM spool WHERE done IS NULL").fetchone()
        return int(row[0])

    def purge(self, *, older_than: float = KEEP_SECONDS) -> int:
        """Delete done rows older than ``older_than`` seconds; return how many went."""
        with self._lock, self._transaction():
            cursor = self._db.execute(
                "DELETE FROM spool WHERE done IS NOT NULL AND done < ?",
                (time.time() - older_than,),
            )
            return cursor.rowcount

    def check(self) -> None:
        """Raise sqlite3.Error unless the spool can be read and written."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    def _transaction(self) -> _Transaction:
        """Return a context manager that runs a block in one committed transaction."""
        return _Transaction(self._db)


class _Transaction:
    """Wrap a block in BEGIN IMMEDIATE ... COMMIT, rolling back on error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        """Remember the connection."""
        self._db = db

    def __enter__(self) -> None:
        """Begin a write transaction."""
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Commit, or roll back when the block raised."""
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
