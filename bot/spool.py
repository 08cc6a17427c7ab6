"""Keep deliveries the broker could not take in a durable local SQLite spool.

Why exactly once: each job is one row keyed UNIQUE (delivery_id, job_index), so a
redelivery while the delivery is spooled never adds a second row. The drainer hands
the broker whole deliveries in ``seq`` order, and the broker claims the delivery id
and queues all its jobs in one atomic Redis script (bot.intake). Rows are marked done
only after that script returned. A crash between the two leaves the rows pending; the
next drain's script then finds the claim, queues nothing, and the rows are dropped as
already delivered. Nothing is lost either: a row is marked done only after the broker
took it. Done rows stay for ``KEEP_SECONDS`` so a late redelivery is still recognised;
``purge`` deletes them after that.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.kernel.jobs import JobRef

KEEP_SECONDS = 3 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT    NOT NULL,
    job_index   INTEGER NOT NULL,
    job         TEXT    NOT NULL,
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

    def append(self, delivery_id: str, jobs: Sequence[JobRef]) -> int:
        """Spool a delivery's jobs in one transaction; return how many rows were new."""
        rows = [
            (delivery_id, index, json.dumps(job.to_kwargs()), time.time())
            for index, job in enumerate(jobs)
        ]
        with self._lock, self._transaction():
            before = self._db.total_changes
            self._db.executemany(
                "INSERT OR IGNORE INTO spool (delivery_id, job_index, job, created)"
                " VALUES (?, ?, ?, ?)",
                rows,
            )
            return self._db.total_changes - before

    def pending(self, deliveries: int = 50) -> list[list[Entry]]:
        """Return the oldest ``deliveries`` pending deliveries, each as its list of jobs."""
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, delivery_id, job_index, job FROM spool"
                " WHERE done IS NULL AND delivery_id IN ("
                "   SELECT delivery_id FROM spool WHERE done IS NULL"
                "   GROUP BY delivery_id ORDER BY min(seq) LIMIT ?)"
                " ORDER BY seq",
                (deliveries,),
            ).fetchall()
        grouped: dict[str, list[Entry]] = {}
        for seq, delivery, index, job in rows:
            entry = Entry(seq, delivery, index, JobRef.from_kwargs(json.loads(job)))
            grouped.setdefault(delivery, []).append(entry)
        return list(grouped.values())

    def mark_done(self, delivery_id: str) -> None:
        """Record that a delivery's jobs are settled; committed before returning."""
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
