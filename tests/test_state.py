"""Test the job-state port the pipeline talks through, on Redis and in memory alike."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
import redis

from bot.kernel.jobs import JobRef, head_key
from workers.state import JobState, MemoryJobState, RedisJobState, state_key

REF = JobRef(
    task="review",
    installation_id=1,
    repo="o/r",
    delivery_id="d-1",
    pr_number=7,
    head_sha="a" * 40,
)


@pytest.fixture(params=["redis", "memory"])
def state(request: pytest.FixtureRequest) -> Iterator[JobState]:
    """Yield each implementation of the port, empty."""
    if request.param == "memory":
        yield MemoryJobState()
        return
    client = redis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield RedisJobState(client)
    client.close()


def test_a_claim_is_held_by_one_at_a_time_and_freed_after(state: JobState) -> None:
    with state.claim(REF, 30) as first:
        with state.claim(REF, 30) as second:
            assert (first, second) == (True, False)
        with state.lock(REF, 30) as other_lock:
            assert other_lock  # the claim and the compute lock are separate
    with state.claim(REF, 30) as again:
        assert again


def test_only_one_of_many_threads_gets_the_lock(state: JobState) -> None:
    results: list[bool] = []
    ready = threading.Barrier(8)
    release = threading.Event()

    def contend() -> None:
        ready.wait()
        with state.lock(REF, 30) as held:
            results.append(held)
            if held:
                release.wait(5)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    while len(results) < 7:
        threading.Event().wait(0.01)
    release.set()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]


def test_a_lock_frees_itself_when_its_lease_runs_out(state: JobState) -> None:
    with state.lock(REF, 0.05) as held:
        assert held
        threading.Event().wait(0.2)
        with state.lock(REF, 30) as taken_over:
            assert taken_over  # the first holder's lease lapsed: it no longer owns the lock


def test_done_and_dispatched(state: JobState) -> None:
    assert not state.dispatched(REF) and not state.done(REF)
    state.mark_dispatched(REF)
    assert state.dispatched(REF) and not state.done(REF)
    state.mark_done(REF)
    assert state.done(REF)


def test_a_result_round_trips_and_replaces_what_was_gathered(state: JobState) -> None:
    state.keep_gathered(REF, '{"diff": "x"}')
    assert state.gathered(REF) == '{"diff": "x"}'
    assert not state.has_result(REF)
    state.keep_result(REF, {"payload": {"body": "ok", "removed": 0}, "tier": "local"})
    assert state.has_result(REF)
    assert state.result(REF) == {"payload": {"body": "ok", "removed": 0}, "tier": "local"}
    assert state.gathered(REF) is None
    state.drop_result(REF)
    assert state.result(REF) is None


def test_finish_drops_what_only_an_unfinished_job_needs(state: JobState) -> None:
    state.keep_gathered(REF, "g")
    state.keep_result(REF, {"tier": "local"})
    state.note_waiting(REF)
    since = state.held_since(REF)
    state.finish(REF)
    assert (state.result(REF), state.gathered(REF), state.waiting_noted(REF)) == (None, None, False)
    assert state.held_since(REF) >= since  # counted afresh


def test_held_since_is_the_first_hold(state: JobState) -> None:
    first = state.held_since(REF)
    threading.Event().wait(0.01)
    assert state.held_since(REF) == first


def test_a_note_is_claimed_once_until_given_back(state: JobState) -> None:
    assert state.first_note("config-note:o/r#7:abc")
    assert not state.first_note("config-note:o/r#7:abc")
    state.unnote("config-note:o/r#7:abc")
    assert state.first_note("config-note:o/r#7:abc")


def test_the_memory_trail_keeps_calls_in_the_attempts_list() -> None:
    calls: list[object] = []
    trail = MemoryJobState().journal(REF, "a1", calls)
    trail("call")
    trail.close()
    assert calls == ["call"]
    assert MemoryJobState().settle(REF, lambda _a, _c: pytest.fail("nothing to settle")) == 0


def test_redis_state_reads_the_edges_head_and_uses_the_documented_keys(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    state = RedisJobState(client)
    assert state.newest_head("o/r", 7) is None
    client.set(head_key("o/r", 7), "b" * 40)
    assert state.newest_head("o/r", 7) == "b" * 40
    state.mark_done(REF)
    assert client.exists(state_key(REF, "done"))
    client.close()


def test_a_journal_an_older_version_wrote_is_still_settled(redis_url: str) -> None:
    """An entry in the ledger's old shape (a count and the kinds) keeps its count."""

    client = redis.Redis.from_url(redis_url)
    old = {
        "tier": "local",
        "model": "gpt-oss-120b",
        "prompt_tokens": 10,
        "cost_usd": 0.5,
        "outcome": "error",
        "error_kind": "worker_lost",
        "redactions": 3,
        "redaction_kinds": "AWSKeyDetector,PrivateKeyDetector",
    }
    client.hset(state_key(REF, "calls"), "dead#0", json.dumps(old))
    settled: list[tuple[str, list[object]]] = []
    assert RedisJobState(client).settle(REF, lambda a, c: settled.append((a, list(c)))) == 1
    ((attempt, (call,)),) = settled
    assert attempt == "dead"
    values = call.ledger_values()  # type: ignore[attr-defined]
    assert (values["redactions"], values["redaction_kinds"]) == (
        3,
        "AWSKeyDetector,PrivateKeyDetector",
    )
    assert (values["cost_usd"], values["error_kind"]) == (0.5, "worker_lost")
    client.close()
