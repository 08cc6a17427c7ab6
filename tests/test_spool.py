"""Test the durable spool and the intake's claim, publish, spool and drain logic."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
import redis

from bot.events import SUPERSEDE
from bot.intake import (
    DEDUPE_TTL_SECONDS,
    CeleryBroker,
    Intake,
    Outcome,
    delivery_key,
    head_key,
)
from bot.spool import Spool, task_id
from tests.edge_server import queued
from workers.job import JobRef


def job(n: int = 1, task: str = "summary", **args: str | int | bool) -> JobRef:
    """Return a job for PR ``n``."""
    return JobRef(
        task=task,
        installation_id=7,
        repo="o/r",
        delivery_id=f"d{n}",
        pr_number=n,
        head_sha=f"sha{n}",
        args=dict(args),
    )


class FakeBroker:
    """Stand in for Redis+Celery: remembers claims and messages, can be switched off."""

    def __init__(self) -> None:
        self.up = True
        self.claims: set[str] = set()
        self.heads: dict[str, str] = {}
        self.messages: list[tuple[str, JobRef, float]] = []
        self.fail_publish_after: int | None = None
        self.explode = False

    def _check(self) -> None:
        if not self.up:
            raise ConnectionError("broker down")

    def claim(self, delivery_id: str) -> bool:
        self._check()
        if delivery_id in self.claims:
            return False
        self.claims.add(delivery_id)
        return True

    def release(self, delivery_id: str) -> None:
        self._check()
        self.claims.discard(delivery_id)

    def set_head(self, repo: str, pr_number: int, head_sha: str) -> None:
        self._check()
        self.heads[f"{repo}#{pr_number}"] = head_sha

    def publish(self, job: JobRef, *, task_id: str, countdown: float) -> None:
        self._check()
        if self.explode:
            raise RuntimeError("a bug in publishing")
        if self.fail_publish_after is not None and len(self.messages) >= self.fail_publish_after:
            self.up = False
            self._check()
        self.messages.append((task_id, job, countdown))

    def ping(self) -> None:
        self._check()

    def close(self) -> None:
        pass


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool.db")


# --- the spool ------------------------------------------------------------------------


def test_spool_keeps_order_and_dedupes_on_delivery_and_index(spool: Spool) -> None:
    assert spool.append("a", [job(1), job(2)]) == 2
    assert spool.append("b", [job(3)]) == 1
    assert spool.append("a", [job(1), job(2)]) == 0
    assert spool.append("a", [job(2)], start=1) == 0
    entries = spool.pending()
    assert [(e.delivery_id, e.job_index) for e in entries] == [("a", 0), ("a", 1), ("b", 0)]
    assert entries[1].job == job(2)
    assert entries[1].task_id == task_id("a", 1) == "a:1"
    assert spool.depth() == 3


def test_spool_survives_reopening(tmp_path: Path) -> None:
    first = Spool(tmp_path / "s.db")
    first.append("a", [job(1, **{SUPERSEDE: True})], claimed=True)
    first.close()
    again = Spool(tmp_path / "s.db")
    (entry,) = again.pending()
    assert entry.job == job(1, **{SUPERSEDE: True})
    assert entry.claimed is True


def test_done_rows_are_kept_for_dedupe_then_purged(spool: Spool) -> None:
    spool.append("a", [job(1)])
    (entry,) = spool.pending()
    spool.mark_done(entry.seq)
    assert spool.depth() == 0
    assert spool.append("a", [job(1)]) == 0, "a late redelivery is still recognised"
    assert spool.purge() == 0
    time.sleep(0.01)
    assert spool.purge(older_than=0.001) == 1
    assert spool.append("a", [job(1)]) == 1


def test_claim_and_drop_apply_to_every_row_of_a_delivery(spool: Spool) -> None:
    spool.append("a", [job(1), job(2)])
    spool.append("b", [job(3)])
    spool.mark_claimed("a")
    assert [e.claimed for e in spool.pending()] == [True, True, False]
    spool.drop_delivery("a")
    assert [e.delivery_id for e in spool.pending()] == ["b"]


def test_a_closed_spool_fails_its_check(spool: Spool) -> None:
    spool.check()
    spool.close()
    with pytest.raises(sqlite3.Error):
        spool.check()


# --- the intake with a broker stand-in ---------------------------------------------------


def test_accept_claims_once_and_publishes_with_stable_task_ids(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool)
    assert intake.accept("a", [job(1), job(1, "review")]) is Outcome.ENQUEUED
    assert intake.accept("a", [job(1), job(1, "review")]) is Outcome.DUPLICATE
    assert intake.accept("b", []) is Outcome.IGNORED
    assert [(t, j.task, c) for t, j, c in broker.messages] == [
        ("a:0", "summary", 0.0),
        ("a:1", "review", 0.0),
    ]


def test_a_debounced_job_records_the_head_and_waits(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool, debounce_seconds=12.5)
    intake.accept("a", [job(1, **{SUPERSEDE: True})])
    assert broker.heads == {"o/r#1": "sha1"}
    assert broker.messages[0][2] == 12.5


def test_outage_spools_and_keeps_order_until_drained(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool, batch=3)
    intake.accept("live-1", [job(1)])
    broker.up = False
    for n in range(2, 9):
        assert intake.accept(f"d{n}", [job(n)]) is Outcome.SPOOLED
    assert intake.accept("d3", [job(3)]) is Outcome.DUPLICATE
    broker.up = True
    assert intake.spooling
    # Redis is back, but until the spool is empty new deliveries queue behind it.
    assert intake.accept("d9", [job(9)]) is Outcome.SPOOLED
    while intake.spooling:
        intake.drain()
    assert intake.accept("d10", [job(10)]) is Outcome.ENQUEUED
    assert [t for t, _, _ in broker.messages] == [
        f"{d}:0" for d in ["live-1", *(f"d{n}" for n in range(2, 11))]
    ]
    assert spool.depth() == 0


def test_a_partial_send_spools_only_the_rest_and_keeps_the_claim(spool: Spool) -> None:
    broker = FakeBroker()
    broker.fail_publish_after = 1
    intake = Intake(broker, spool)
    assert intake.accept("a", [job(1), job(1, "review")]) is Outcome.SPOOLED
    (entry,) = spool.pending()
    assert (entry.job_index, entry.claimed) == (1, True)
    broker.up, broker.fail_publish_after = True, None
    intake.drain()
    assert [t for t, _, _ in broker.messages] == ["a:0", "a:1"]


def test_drain_drops_a_spooled_delivery_that_redis_already_saw(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool)
    intake.accept("a", [job(1)])
    broker.up = False
    assert intake.accept("a", [job(1)]) is Outcome.SPOOLED  # cannot tell while Redis is down
    assert intake.accept("b", [job(2), job(3)]) is Outcome.SPOOLED
    broker.up = True
    intake.drain()
    assert [t for t, _, _ in broker.messages] == ["a:0", "b:0", "b:1"]
    assert not intake.spooling


def test_a_crash_between_publish_and_mark_republishes_with_the_same_task_id(
    tmp_path: Path,
) -> None:
    spool = Spool(tmp_path / "s.db")
    broker = FakeBroker()
    intake = Intake(broker, spool)
    broker.up = False
    intake.accept("a", [job(1)])
    broker.up = True
    (entry,) = spool.pending()
    broker.claim("a")  # the crashed run had claimed and published, then died
    broker.publish(entry.job, task_id=entry.task_id, countdown=0)
    spool.close()

    restarted = Intake(broker, Spool(tmp_path / "s.db"))
    assert restarted.spooling, "leftovers from the last run are drained on start"
    spool2 = restarted.spool
    # Make the row look claimed, as it is after the first run's mark_claimed.
    spool2.mark_claimed("a")
    restarted.drain()
    ids = [t for t, _, _ in broker.messages]
    assert ids == ["a:0", "a:0"], "at most one duplicate, with the same task id"
    assert spool2.depth() == 0


def test_a_bug_in_publishing_raises_and_frees_the_claim(spool: Spool) -> None:
    broker = FakeBroker()
    broker.explode = True
    intake = Intake(broker, spool)
    with pytest.raises(RuntimeError):
        intake.accept("a", [job(1)])
    assert "a" not in broker.claims, "a redelivery must not be taken for a duplicate"
    assert spool.depth() == 0


def test_the_drainer_thread_drains_when_the_broker_returns(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool, drain_interval=0.02, max_backoff=0.1)
    intake.start()
    try:
        broker.up = False
        for n in range(5):
            intake.accept(f"d{n}", [job(n)])
        time.sleep(0.2)
        assert broker.messages == []
        broker.up = True
        deadline = time.monotonic() + 5
        while intake.spooling and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [t for t, _, _ in broker.messages] == [f"d{n}:0" for n in range(5)]
    finally:
        intake.stop()


def test_concurrent_accepts_during_a_drain_lose_nothing(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool, drain_interval=0.01, max_backoff=0.02, batch=7)
    broker.up = False
    for n in range(50):
        intake.accept(f"early{n}", [job(n)])
    broker.up = True
    intake.start()

    def send(prefix: str) -> None:
        for n in range(50):
            intake.accept(f"{prefix}{n}", [job(n)])

    threads = [threading.Thread(target=send, args=(p,)) for p in ("x", "y")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 5
    while intake.spooling and time.monotonic() < deadline:
        time.sleep(0.01)
    intake.stop()
    ids = [t for t, _, _ in broker.messages]
    assert len(ids) == len(set(ids)) == 150
    assert ids[:50] == [f"early{n}:0" for n in range(50)]
    for prefix in ("x", "y"):
        mine = [i for i in ids if i.startswith(prefix)]
        assert mine == [f"{prefix}{n}:0" for n in range(50)], "each sender's order is kept"


def test_health_reports_redis_and_spool(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool)
    assert intake.health() == {"redis": "ok", "spool": "ok", "spool_depth": 0}
    broker.up = False
    intake.accept("a", [job(1)])
    assert intake.health() == {"redis": "down", "spool": "ok", "spool_depth": 1}
    spool.close()
    assert intake.health()["spool"] == "failing"


# --- the real broker on a private Redis ---------------------------------------------------


def test_celery_broker_claims_publishes_and_records_heads(redis_url: str) -> None:
    broker = CeleryBroker(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        assert broker.claim("abc") is True
        assert broker.claim("abc") is False
        ttl = client.ttl(delivery_key("abc"))
        assert DEDUPE_TTL_SECONDS - 5 < ttl <= DEDUPE_TTL_SECONDS
        assert ttl >= 3 * 24 * 3600
        broker.release("abc")
        assert broker.claim("abc") is True
        broker.set_head("o/r", 1, "sha1")
        assert client.get(head_key("o/r", 1)) == b"sha1"
        broker.publish(job(1, **{SUPERSEDE: True}), task_id="abc:0", countdown=30)
        broker.publish(job(2), task_id="abc:1", countdown=0)
        first, second = queued(redis_url)
        assert first["headers"]["task"] == "cibot.dispatch"
        assert first["headers"]["id"] == "abc:0"
        assert first["headers"]["eta"] is not None
        assert second["headers"]["eta"] is None
        assert JobRef.from_kwargs(first["kwargs"]) == job(1, **{SUPERSEDE: True})
        assert first["args"] == []
        broker.ping()
    finally:
        broker.close()
        client.close()


def test_celery_broker_reports_an_outage_as_connection_error(redis_server: object) -> None:
    from tests.services import free_port

    broker = CeleryBroker(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            broker.claim("x")
        with pytest.raises(ConnectionError):
            broker.publish(job(1), task_id="x:0", countdown=0)
        with pytest.raises(ConnectionError):
            broker.ping()
        assert time.monotonic() - started < 5
    finally:
        broker.close()
