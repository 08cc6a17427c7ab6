"""Leases, the call journal, held jobs, the atomic dispatch claim, refused repo configs and
shadow mode, through the pipeline's plain functions against real Redis, a SQLite ledger,
the fake GitHub (PyGithub) and fake model servers (litellm)."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any

import pytest
import redis

from bot.kernel.errors import ModelError, PrivateTierDown
from bot.kernel.jobs import GRACE_S
from policies.model import Policy
from tests.test_pipeline import DIFF, GOOD, INSTALLATION, REPO, World, fakes, world
from workers import journal, pipeline
from workers.journal import KILLED, Journal
from workers.leases import UNACKED_INDEX, Leases
from workers.ledger import HELD, SUCCEEDED, job_key
from workers.llm import CallRecord
from workers.pipeline import Deadline, StepOutcome
from workers.shadow import ShadowGitHub, shadowed
from workers.state import state_key

__all__ = ["fakes", "world"]  # the fixtures, re-used from the pipeline tests

NESTED = "a:\n" + "".join("  " * (i + 1) + "b:\n" for i in range(200)) + "  " * 201 + "c: 1\n"


def with_behaviour(world: World, **changes: Any) -> None:
    """Change the runtime's policy behaviour (as an operator's policy file would)."""
    policy = world.rt.policy
    behaviour = policy.behaviour.model_copy(update=changes)
    world.rt.policy = policy.model_copy(update={"behaviour": behaviour})


# ---- leases ------------------------------------------------------------------------------


def test_a_held_lock_outlives_its_ttl_and_expires_once_its_holder_stops(redis_url: str) -> None:
    """The renewal thread keeps a 1 s lock for 2 s; released, it lapses within its TTL."""
    client = redis.Redis.from_url(redis_url)
    leases = Leases(client, lease_s=1.0, renew_s=0.2)
    client.set("cibot:test:lock", "mine", px=1000)
    leases.hold("cibot:test:lock", "mine")
    time.sleep(2.0)
    assert client.get("cibot:test:lock") == b"mine"
    leases.release("cibot:test:lock")
    time.sleep(1.3)
    assert client.get("cibot:test:lock") is None
    leases.stop()
    client.close()


def test_a_lock_taken_over_is_not_renewed_for_the_old_holder(redis_url: str) -> None:
    """Renewal extends only a lock still holding our token, and then forgets it."""
    client = redis.Redis.from_url(redis_url)
    leases = Leases(client, lease_s=5.0, renew_s=60)
    client.set("cibot:test:lock2", "theirs", px=1000)
    leases.hold("cibot:test:lock2", "mine")
    assert leases.renew_once() == 0
    assert 0 < client.pttl("cibot:test:lock2") <= 1000
    client.delete("cibot:test:lock2")
    client.close()


def test_held_messages_are_rescored_and_acked_ones_left_alone(redis_url: str) -> None:
    """A live worker's messages look freshly delivered; one acked meanwhile is not revived."""
    client = redis.Redis.from_url(redis_url)
    client.delete(UNACKED_INDEX)
    old = time.time() - 3600
    client.zadd(UNACKED_INDEX, {"held-tag": old})
    leases = Leases(client, renew_s=60)
    leases.watch_messages(lambda: ["held-tag", "acked-tag"])
    assert leases.renew_once() == 1
    assert client.zscore(UNACKED_INDEX, "held-tag") > time.time() - 5
    assert client.zscore(UNACKED_INDEX, "acked-tag") is None
    client.delete(UNACKED_INDEX)
    client.close()


def test_renewal_without_redis_counts_a_failure_and_does_not_raise() -> None:
    """Redis away: renewal fails quietly; the claims run down on their own."""
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    leases = Leases(client, renew_s=60)
    leases.hold("k", "t")
    assert leases.renew_once() == 0 and leases.failures == 1


# ---- the journal ---------------------------------------------------------------------------


def test_a_killed_attempts_journaled_calls_are_recorded_by_the_next(world: World) -> None:
    """A worker died mid-call: its finished and in-flight calls reach the ledger, priced."""
    ref = world.ref()
    world.local.script(reply=GOOD)
    assert pipeline.dispatch(ref, world.rt) is StepOutcome.QUEUED
    dead: list[Any] = []
    trail = Journal(world.rt.redis, state_key(ref, "calls"), "dead01", dead)
    trail(CallRecord(tier="local", model="m", prompt_tokens=900, completion_tokens=40))
    trail.begin(CallRecord(tier="local", model="m", prompt_tokens=950, cost_usd=0.002))
    # ... and then SIGKILL: nothing more from that attempt.
    assert pipeline.run_job(ref, world.rt, deadline=Deadline(60)) is StepOutcome.COMPUTED
    calls = world.rt.ledger.calls(job_key(ref))
    assert [c["error_kind"] for c in calls[:2]] == ["", KILLED]
    assert [c["prompt_tokens"] for c in calls[:2]] == [900, 950]
    assert calls[1]["cost_usd"] == pytest.approx(0.002)
    assert len(calls) == 3 and calls[2]["error_kind"] == ""  # the attempt that finished
    assert journal.orphans(world.rt.redis, state_key(ref, "calls")) == {}
    assert pipeline.publish(ref, world.rt) is StepOutcome.PUBLISHED
    row = world.rt.ledger.job(job_key(ref))
    assert (
        row is not None
        and row["private_tokens"]
        == 900 + 40 + 950 + calls[2]["prompt_tokens"] + calls[2]["completion_tokens"]
    )


def test_a_finished_attempt_leaves_no_journal(world: World) -> None:
    """The journal only outlives attempts that died."""
    ref = world.ref()
    world.local.script(reply=GOOD)
    assert world.through(ref)[-1] is StepOutcome.PUBLISHED
    assert world.rt.redis.hgetall(state_key(ref, "calls")) == {}
    assert [c["error_kind"] for c in world.rt.ledger.calls(job_key(ref))] == [""]


# ---- held jobs -----------------------------------------------------------------------------


def test_a_held_job_waits_as_long_as_the_policy_says_then_says_it_stopped(world: World) -> None:
    """The note names the time it waits until; past it, the job fails and the note says so."""
    with_behaviour(world, hold_private_hours=1 / 3600)  # one second
    world.github.add_pull(
        REPO, 9, title="Secret", diff=DIFF, head_sha="9" * 40, labels=["cibot:private-only"]
    )
    ref = world.ref(sha="9" * 40, pr=9)
    world.local.fail("refuse", times=None)
    assert pipeline.dispatch(ref, world.rt) is StepOutcome.QUEUED
    with pytest.raises(PrivateTierDown):
        pipeline.run_job(ref, world.rt, deadline=Deadline(60))
    [waiting] = world.comments(pr=9)
    assert "keeps retrying on its own until" in waiting["body"] and "UTC" in waiting["body"]
    assert (world.rt.ledger.job(job_key(ref)) or {})["status"] == HELD
    time.sleep(1.1)
    with pytest.raises(ModelError) as gave_up:
        pipeline.run_job(ref, world.rt, deadline=Deadline(60))
    assert not isinstance(gave_up.value, PrivateTierDown)  # not retried any more
    pipeline.fail(ref, world.rt, gave_up.value)
    [note] = world.comments(pr=9)
    assert note["id"] == waiting["id"] and "stopped waiting" in note["body"]
    assert (world.rt.ledger.job(job_key(ref)) or {})["status"] == "failed"
    assert world.external.requests == []


def test_the_default_hold_is_hours() -> None:
    """An operator who sets nothing gets a six-hour wait, not minutes."""
    assert Policy.model_fields["behaviour"].default.hold_private_hours == 6


# ---- the dispatch claim --------------------------------------------------------------------


def test_copies_of_one_job_dispatched_at_once_gather_once(world: World) -> None:
    """Ten replays under fresh delivery ids, at the same instant: one gather, one queueing."""
    world.local.script(reply=GOOD)
    refs = [dataclasses.replace(world.ref(), delivery_id=f"replay-{i}") for i in range(10)]

    def diff_reads() -> int:
        calls = world.github.calls_to("GET", rf"/repos/{REPO}/pulls/7$")
        return sum(c.headers.get("accept") == "application/vnd.github.diff" for c in calls)

    before = diff_reads()
    outcomes: list[StepOutcome] = []
    start = threading.Barrier(len(refs))

    def go(ref: Any) -> None:
        start.wait()
        outcomes.append(pipeline.dispatch(ref, world.rt))

    threads = [threading.Thread(target=go, args=(r,)) for r in refs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # One copy dispatches; the others find it claimed (busy: they retry) or done.
    assert outcomes.count(StepOutcome.QUEUED) == 1
    assert set(outcomes) <= {StepOutcome.QUEUED, StepOutcome.BUSY, StepOutcome.DUPLICATE}
    for ref in refs:  # the busy copies' retries
        assert pipeline.dispatch(ref, world.rt) is StepOutcome.DUPLICATE
    assert diff_reads() - before == 1  # one gather downloaded the diff
    assert len(world.sent) == 1


# ---- refused repo configs ------------------------------------------------------------------


def test_a_refused_repo_config_is_told_once_and_the_operators_policy_applies(
    world: World,
) -> None:
    """A 200-level nested .github/cibot.yml: one note on the PR, and the summary still runs."""
    world.github.set_file(REPO, ".github/cibot.yml", NESTED)
    world.local.script(reply=GOOD)
    ref = world.ref()
    assert world.through(ref)[-1] is StepOutcome.PUBLISHED
    again = dataclasses.replace(world.ref(sha="2" * 40), delivery_id="d-again")
    new_head = world.github.push_pull(REPO, 7, {"src/x.py": "x = 1\n"})
    again = dataclasses.replace(again, head_sha=new_head)
    world.through(again)
    notes = [c for c in world.github.comments(REPO, 7) if pipeline.CONFIG_MARKER in c["body"]]
    assert len(notes) == 1
    assert "ignored part of `.github/cibot.yml`" in notes[0]["body"]
    assert "nest" in notes[0]["body"] or "deep" in notes[0]["body"], notes[0]["body"]
    assert len(world.comments()) == 1  # the summary, under the operator's policy


# ---- shadow mode ---------------------------------------------------------------------------


def test_a_shadow_installation_posts_nothing_and_the_ledger_has_it_all(world: World) -> None:
    """Routed, priced and recorded, with what it would have posted; no comment, no review."""
    with_behaviour(world, shadow_installations=(INSTALLATION,))
    world.local.script(reply=GOOD)
    ref = world.ref()
    assert world.through(ref) == [StepOutcome.QUEUED, StepOutcome.COMPUTED, StepOutcome.PUBLISHED]
    assert world.github.comments(REPO, 7) == [] and world.github.reviews(REPO, 7) == []
    assert world.github.calls_to("POST", r"/issues/7/comments") == []
    row = world.rt.ledger.job(job_key(ref))
    assert row is not None
    assert (row["status"], row["tier"], row["shadow"]) == (SUCCEEDED, "local", True)
    assert row["comment_id"] is None and row["private_tokens"] > 0
    assert row["would_post"].startswith("a comment of ")
    jobs, calls, _ = world.rt.ledger.rows()
    assert [j.shadow for j in jobs] == [True] and len(calls) == 1


def test_a_repo_may_turn_shadow_on_for_itself_but_never_off(world: World) -> None:
    """`shadow: true` in the repo's file silences it; `shadow: false` cannot undo the operator."""
    world.github.set_file(REPO, ".github/cibot.yml", "shadow: true\n")
    world.local.script(reply=GOOD)
    assert world.through(world.ref())[-1] is StepOutcome.PUBLISHED
    assert world.github.comments(REPO, 7) == []
    policy = world.rt.policy.model_copy(
        update={"behaviour": world.rt.policy.behaviour.model_copy(update={"shadow": True})}
    )
    from policies.loading import merge_repo_config

    merged = merge_repo_config(policy, "shadow: false\n", repo=REPO)
    assert shadowed(merged.policy, installation_id=1, repo=REPO)
    assert shadowed(world.rt.policy, installation_id=1, repo="other/x") is False


def test_shadow_repos_match_by_owner_glob() -> None:
    """`owner/*` shadows every repo of that owner, and no other."""
    from policies.loading import load_policy

    base = load_policy()
    policy = base.model_copy(
        update={"behaviour": base.behaviour.model_copy(update={"shadow_repos": ("acme/*",)})}
    )
    assert shadowed(policy, installation_id=1, repo="Acme/app")
    assert not shadowed(policy, installation_id=1, repo="other/app")


def test_the_shadow_client_reads_through_and_swallows_writes() -> None:
    """Reads reach the real client; writes are noted by shape and return no id."""

    class Inner:
        def __init__(self) -> None:
            self.removed = {"images": 2}

        def pull(self, repo: str, number: int) -> str:
            return f"{repo}#{number}"

        def upsert_comment(self, repo: str, number: int, *, marker: str, body: str) -> int:
            raise AssertionError("a shadow client must not post")

        def close(self) -> None:
            pass

    client = ShadowGitHub(Inner(), shadow=True)
    assert client.pull("a/b", 3) == "a/b#3"
    assert client.upsert_comment("a/b", 3, marker="m", body="hello") == 0
    assert client.note() == "a comment of 5 characters"
    assert client.removed == {"images": 2}


# ---- the outbox ----------------------------------------------------------------------------


def test_a_message_lost_on_its_way_to_a_worker_is_sent_again(redis_url: str) -> None:
    """Taken off its queue but never recorded as unacked (Redis stopped in between): the
    sweep finds it nowhere and pushes it again; messages still queued or unacked stay put."""
    from workers import outbox

    client = redis.Redis.from_url(redis_url)
    lost = outbox.send(client, "cibot.run_job", {"n": 1}, "local")
    queued = outbox.send(client, "cibot.run_job", {"n": 2}, "local")
    taken = outbox.send(client, "cibot.run_job", {"n": 3}, "local")
    finished = outbox.send(client, "cibot.publish", {"n": 4}, "github")
    messages = {json.loads(m)["headers"]["id"]: m for m in client.lrange("local", 0, -1)}
    client.delete("local")
    client.lpush("local", messages[queued])  # still waiting on its queue
    client.hset(outbox.UNACKED, "tag-3", json.dumps([json.loads(messages[taken]), "", "local"]))
    client.delete("github")  # the publish step ran and finished...
    outbox.done(client, finished)  # ...and dropped its message from the outbox
    later = time.time() + GRACE_S + 1
    assert outbox.sweep(client, now=later) == 1
    ids = [json.loads(m)["headers"]["id"] for m in client.lrange("local", 0, -1)]
    assert sorted(ids) == sorted([queued, lost])
    assert client.lrange("github", 0, -1) == []
    assert outbox.sweep(client, now=later) == -1  # one sweeper at a time
    client.delete(outbox.SWEEP_LOCK)
    assert outbox.sweep(client, now=later) == 0  # not due again yet
    client.close()


# ---- capture ------------------------------------------------------------------------------


def test_capture_on_keeps_each_call_of_a_job_privately(world: World, tmp_path: Any) -> None:
    """With a capture store, the pipeline leaves one private file per model call; off, none."""
    from workers.capture import Capture

    world.local.script(reply=GOOD)
    assert world.rt.capture is None  # off unless CIBOT_CAPTURE_DIR is set
    world.rt.capture = Capture(tmp_path / "captures", days=14)
    assert world.through(world.ref())[-1] is StepOutcome.PUBLISHED
    files = list((tmp_path / "captures").rglob("*.json"))
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
    kept = json.loads(files[0].read_text())
    assert kept["inputs"]["task"] == "summary" and kept["inputs"]["repo"] == REPO
    assert "retry" in json.dumps(kept["request"]["messages"]) and kept["outcome"]
