"""Test the durable spool and the intake's claim, publish, spool and drain logic."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from bot.intake import (
    DEDUPE_TTL_SECONDS,
    CeleryBroker,
    DeliveryOutcome,
    Intake,
    Message,
    delivery_key,
)
from bot.kernel.jobs import SUPERSEDE, JobRef, head_key
from bot.spool import Spool, task_id
from tests.edge_server import queued
from tests.services import RedisServer


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
    """Stand in for Redis: claims and queue in memory, atomic per delivery, switchable off."""

    def __init__(self) -> None:
        self.up = True
        self.claims: set[str] = set()
        self.heads: dict[str, str] = {}
        self.messages: list[Message] = []
        self.explode = False
        self.gate: threading.Event | None = None

    def _check(self) -> None:
        if not self.up:
            raise ConnectionError("broker down")

    def enqueue(self, delivery_id: str, messages: Sequence[Message]) -> bool:
        self._check()
        if self.explode:
            raise RuntimeError("a bug in publishing")
        if self.gate is not None:
            self.gate.wait(5)
        if delivery_id in self.claims:
            return False
        self.claims.add(delivery_id)
        for message in messages:
            if message.supersede:
                self.heads[f"{message.job.repo}#{message.job.pr_number}"] = message.job.head_sha
        self.messages.extend(messages)
        return True

    @property
    def ids(self) -> list[str]:
        return [m.task_id for m in self.messages]

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
    batch = spool.pending()
    assert [[(e.delivery_id, e.job_index) for e in d] for d in batch] == [
        [("a", 0), ("a", 1)],
        [("b", 0)],
    ]
    assert batch[0][1].job == job(2)
    assert batch[0][1].task_id == task_id("a", 1) == "a:1"
    assert spool.depth() == 3


def test_pending_hands_out_whole_deliveries(spool: Spool) -> None:
    for n in range(5):
        spool.append(f"d{n}", [job(n), job(n, "review"), job(n, "tests")])
    batch = spool.pending(deliveries=2)
    assert [len(d) for d in batch] == [3, 3]
    assert [d[0].delivery_id for d in batch] == ["d0", "d1"]


def test_spool_survives_reopening(tmp_path: Path) -> None:
    first = Spool(tmp_path / "s.db")
    first.append("a", [job(1, **{SUPERSEDE: True})])
    first.close()
    again = Spool(tmp_path / "s.db")
    ((entry,),) = again.pending()
    assert entry.job == job(1, **{SUPERSEDE: True})


def test_done_rows_are_kept_for_dedupe_then_purged(spool: Spool) -> None:
    spool.append("a", [job(1)])
    spool.mark_done("a")
    assert spool.depth() == 0
    assert spool.append("a", [job(1)]) == 0, "a late redelivery is still recognised"
    assert spool.purge() == 0
    time.sleep(0.01)
    assert spool.purge(older_than=0.001) == 1
    assert spool.append("a", [job(1)]) == 1


def test_a_closed_spool_fails_its_check(spool: Spool) -> None:
    spool.check()
    spool.close()
    with pytest.raises(sqlite3.Error):
        spool.check()


# --- the intake with a broker stand-in ---------------------------------------------------


def test_accept_queues_once_with_stable_task_ids(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool)
    assert intake.accept("a", [job(1), job(1, "review")]) is DeliveryOutcome.ENQUEUED
    assert intake.accept("a", [job(1), job(1, "review")]) is DeliveryOutcome.DUPLICATE
    assert intake.accept("b", []) is DeliveryOutcome.IGNORED
    assert [(m.task_id, m.job.task, m.countdown) for m in broker.messages] == [
        ("a:0", "summary", 0.0),
        ("a:1", "review", 0.0),
    ]


def test_a_debounced_job_records_the_head_and_waits(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool, debounce_seconds=12.5)
    intake.accept("a", [job(1, **{SUPERSEDE: True}), job(1, "outcome")])
    assert broker.heads == {"o/r#1": "sha1"}
    assert [(m.countdown, m.supersede) for m in broker.messages] == [(12.5, True), (0.0, False)]


def test_outage_spools_and_keeps_order_until_drained(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool, batch=3)
    intake.accept("live-1", [job(1)])
    broker.up = False
    for n in range(2, 9):
        assert intake.accept(f"d{n}", [job(n)]) is DeliveryOutcome.SPOOLED
    assert intake.accept("d3", [job(3)]) is DeliveryOutcome.DUPLICATE
    broker.up = True
    assert intake.spooling
    # Redis is back, but until the spool is empty new deliveries queue behind it.
    assert intake.accept("d9", [job(9)]) is DeliveryOutcome.SPOOLED
    while intake.spooling:
        intake.drain()
    assert intake.accept("d10", [job(10)]) is DeliveryOutcome.ENQUEUED
    expected = ["live-1", *(f"d{n}" for n in range(2, 11))]
    assert broker.ids == [f"{d}:0" for d in expected]
    assert spool.depth() == 0


def test_drain_drops_a_spooled_delivery_that_redis_already_took(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool)
    intake.accept("a", [job(1)])
    broker.up = False
    # Cannot tell while Redis is down.
    assert intake.accept("a", [job(1)]) is DeliveryOutcome.SPOOLED
    assert intake.accept("b", [job(2), job(3)]) is DeliveryOutcome.SPOOLED
    broker.up = True
    assert intake.drain() == 1
    assert broker.ids == ["a:0", "b:0", "b:1"]
    assert not intake.spooling


def test_a_crash_between_queueing_and_marking_done_queues_nothing_twice(
    tmp_path: Path,
) -> None:
    broker = FakeBroker()
    intake = Intake(broker, Spool(tmp_path / "s.db"))
    broker.up = False
    intake.accept("a", [job(1), job(1, "review")])
    broker.up = True
    ((first, second),) = intake.spool.pending()
    # The crashed run's script claimed and queued the delivery, then the process died.
    broker.enqueue("a", intake.messages("a", [first.job, second.job]))
    intake.spool.close()

    restarted = Intake(broker, Spool(tmp_path / "s.db"))
    assert restarted.spooling, "leftovers from the last run are drained on start"
    assert restarted.drain() == 0
    assert broker.ids == ["a:0", "a:1"], "the claim made the retry a no-op"
    assert restarted.spool.depth() == 0


def test_a_bug_in_the_broker_raises_and_spools_nothing(spool: Spool) -> None:
    broker = FakeBroker()
    broker.explode = True
    intake = Intake(broker, spool)
    with pytest.raises(RuntimeError):
        intake.accept("a", [job(1)])
    assert "a" not in broker.claims, "a redelivery must not be taken for a duplicate"
    assert spool.depth() == 0
    assert not intake.spooling


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
        assert broker.ids == [f"d{n}:0" for n in range(5)]
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
    ids = broker.ids
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


def test_celery_broker_claims_and_queues_atomically(redis_url: str) -> None:
    broker = CeleryBroker(redis_url)
    client = redis.Redis.from_url(redis_url)
    try:
        messages = [
            Message(job(1, **{SUPERSEDE: True}), "abc:0", countdown=30, supersede=True),
            Message(job(2), "abc:1"),
        ]
        assert broker.enqueue("abc", messages) is True
        assert broker.enqueue("abc", messages) is False
        ttl = client.ttl(delivery_key("abc"))
        assert 3 * 24 * 3600 <= ttl <= DEDUPE_TTL_SECONDS
        assert client.get(head_key("o/r", 1)) == b"sha1"
        assert client.get(head_key("o/r", 2)) is None
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


def _shape(value: object) -> object:
    """Return the structure of a JSON value: keys and types, not values."""
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value]
    return type(value).__name__


def test_messages_match_what_celery_send_task_queues(redis_url: str) -> None:
    """The hand-off must stay wire-compatible with Celery: compare with send_task's own."""
    import json

    from celery import Celery

    broker = CeleryBroker(redis_url)
    reference = Celery("reference", broker=redis_url, set_as_current=False)
    client = redis.Redis.from_url(redis_url)
    try:
        the_job = job(1, **{SUPERSEDE: True})
        broker.enqueue("abc", [Message(the_job, "abc:0", countdown=30, supersede=True)])
        reference.send_task(
            "cibot.dispatch",
            kwargs=the_job.to_kwargs(),
            queue="github",
            task_id="abc:0",
            countdown=30,
            argsrepr="()",
            kwargsrepr="x",
            declare=[],
        )
        theirs, ours = (json.loads(raw) for raw in client.lrange("github", 0, -1))
        for extra in ("argsrepr", "kwargsrepr"):  # send_task copies these into properties
            theirs["properties"].pop(extra)
        theirs["headers"]["ignore_result"] = False
        assert _shape(ours) == _shape(theirs)
        assert ours["body"] == theirs["body"]
        assert ours["properties"]["delivery_info"] == theirs["properties"]["delivery_info"]
        for key in ("task", "id", "root_id", "retries", "timelimit"):
            assert ours["headers"][key] == theirs["headers"][key]

        # And a kombu consumer (what a Celery worker uses) decodes ours.
        from kombu import Connection

        with Connection(redis_url) as conn:
            queue = conn.SimpleQueue("github")
            received = queue.get(timeout=2)
            assert received.headers["task"] == "cibot.dispatch"
            args, kwargs, _ = received.decode()
            assert args == []
            assert JobRef.from_kwargs(kwargs) == the_job
            received.ack()
            queue.close()
    finally:
        broker.close()
        reference.close()
        client.close()


def test_celery_broker_reports_an_outage_as_connection_error(redis_server: object) -> None:
    from tests.services import free_port

    broker = CeleryBroker(f"redis://127.0.0.1:{free_port()}/0", connect_timeout=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(ConnectionError):
            broker.enqueue("x", [Message(job(1), "x:0")])
        with pytest.raises(ConnectionError):
            broker.ping()
        assert time.monotonic() - started < 5
    finally:
        broker.close()


def test_celery_broker_survives_a_redis_restart(redis_server: RedisServer, redis_url: str) -> None:
    broker = CeleryBroker(redis_url)
    try:
        assert broker.enqueue("one", [Message(job(1), "one:0")])
        redis_server.stop()
        with pytest.raises(ConnectionError):
            broker.enqueue("two", [Message(job(2), "two:0")])
        redis_server.start()  # empty: the script cache is gone too
        assert broker.enqueue("two", [Message(job(2), "two:0")])
        assert [m["headers"]["id"] for m in queued(redis_url)] == ["two:0"]
    finally:
        broker.close()


def test_message_kwargs_equal_the_jobrefs_own() -> None:
    from bot.intake import _kwargs

    for the_job in (
        job(1),
        job(2, **{SUPERSEDE: True}),
        job(3, "command", command="x", comment_id=1),
    ):
        assert _kwargs(the_job) == the_job.to_kwargs()


def test_a_slow_broker_during_a_drain_never_blocks_accept(spool: Spool) -> None:
    broker = FakeBroker()
    intake = Intake(broker, spool)
    broker.up = False
    intake.accept("a", [job(1)])
    broker.up, broker.gate = True, threading.Event()
    drainer = threading.Thread(target=intake.drain)
    drainer.start()  # now stuck inside the broker call
    started = time.monotonic()
    assert intake.accept("b", [job(2)]) is DeliveryOutcome.SPOOLED
    assert time.monotonic() - started < 0.5
    broker.gate.set()
    drainer.join()
    intake.drain()
    assert broker.ids == ["a:0", "b:0"]
    assert not intake.spooling
