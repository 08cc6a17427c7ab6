"""Run real ``cibot worker`` processes on a private Redis: kill one mid-job, hold a job for
the private model, and deliver a job twice; the edge publishes through bot.intake."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

from bot.intake import CeleryBroker, Message, delivery_key
from tests.fakes.github import FakeGitHub
from tests.fakes.model import FakeModelServer
from tests.services import RedisServer
from tests.test_pipeline import (
    DIFF,
    GOOD,
    INSTALLATION,
    LOCAL_ID,
    REPO,
    environment,
    write_policy,
)
from workers.job import JobRef
from workers.ledger import SUCCEEDED, Ledger, job_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_JOB_S = 3.0  # every limit derives from it: hard 5 s, visibility timeout 10 s


@dataclass
class Cluster:
    """Hold the fakes, the worker processes and what the edge needs to publish."""

    github: FakeGitHub
    local: FakeModelServer
    external: FakeModelServer
    env: dict[str, str]
    logs: Path
    ledger: Ledger
    broker: CeleryBroker
    redis: redis.Redis
    locals: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    supervisor: subprocess.Popen[bytes] | None = None

    def start_worker(self, name: str, *queues: str) -> subprocess.Popen[bytes]:
        """Start ``cibot worker`` for the queues; its output goes to a log file."""
        args = [
            sys.executable,
            "-m",
            "bot.cli",
            "worker",
            "--queues",
            ",".join(queues),
            "--max-job-seconds",
            str(MAX_JOB_S),
            "--retry-max-delay",
            "1",
            "--loglevel",
            "INFO",
        ]
        if len(queues) == 1:
            args += ["--concurrency", "4", "--hostname", f"{name}@test"]
        with (self.logs / f"{name}.log").open("ab") as log:
            return subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, name: str, count: int = 1, timeout: float = 60) -> None:
        """Wait until the log shows ``count`` workers ready."""
        wait_for(
            lambda: (
                (self.logs / f"{name}.log").read_text(errors="replace").count(" ready.") >= count
            ),
            timeout,
            f"worker {name} ready",
        )

    def publish(self, pr: int, sha: str, *, delivery: str, **args: Any) -> JobRef:
        """Queue a summary job the way the webhook edge does (claim + LPUSH in one script)."""
        ref = JobRef(
            task="summary",
            installation_id=INSTALLATION,
            repo=REPO,
            delivery_id=delivery,
            pr_number=pr,
            head_sha=sha,
            args=args,
        )
        assert self.broker.enqueue(delivery, [Message(ref, task_id=f"{delivery}:0")])
        return ref

    def summaries(self, pr: int) -> list[dict[str, Any]]:
        """Return the PR's comments carrying the summary marker."""
        return [c for c in self.github.comments(REPO, pr) if "cibot:summary" in c["body"]]

    def dump_logs(self) -> str:
        """Return every worker log, for failure messages."""
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-4000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def cluster(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Start the fakes, two local-queue workers and a supervisor for github + external."""
    if redis_server.process is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    tmp = tmp_path_factory.mktemp("cluster")
    with (
        FakeGitHub() as gh,
        FakeModelServer("local", model_ids=(LOCAL_ID,)) as local,
        FakeModelServer("external", model_ids=("gpt-5", "gpt-5.5")) as external,
    ):
        gh.add_installation(INSTALLATION, [REPO])
        db = f"sqlite:///{tmp / 'ledger.db'}"
        env = {
            **os.environ,
            **environment(gh, local, external, redis_server.url, db, write_policy(tmp)),
        }
        ledger = Ledger(db)
        world = Cluster(
            gh, local, external, env, tmp, ledger, CeleryBroker(redis_server.url), client
        )
        world.supervisor = world.start_worker("sup", "github", "external")
        for name in ("local-a", "local-b"):
            world.locals[name] = world.start_worker(name, "local")
        try:
            world.wait_ready("sup", count=2)
            for name in world.locals:
                world.wait_ready(name)
            yield world
        finally:
            stop_all(world)
            ledger.close()
            world.broker.close()
            client.close()


def stop_all(world: Cluster) -> None:
    """Stop the workers: SIGTERM, then SIGKILL those that linger."""
    procs = [*world.locals.values(), *([world.supervisor] if world.supervisor else [])]
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_job_held_for_the_private_model_completes_when_it_returns(cluster: Cluster) -> None:
    """Local down + private_only: the PR hears "waiting", nothing leaves, then the summary."""
    sha = "9" * 40
    cluster.github.add_pull(
        REPO, 9, title="Private", diff=DIFF, head_sha=sha, labels=["cibot:private-only"]
    )
    cluster.local.fail("refuse", times=None)
    ref = cluster.publish(9, sha, delivery="held-1")
    wait_for(
        lambda: any("waiting for the private model" in c["body"] for c in cluster.summaries(9)),
        30,
        "the waiting note",
    )
    row = cluster.ledger.job(job_key(ref))
    assert row is not None and row["status"] == "held"
    time.sleep(1.5)  # let it retry against the dead endpoint a few times
    cluster.local.heal()
    cluster.local.script("Private", reply=GOOD)
    try:
        wait_for(
            lambda: any("Adds a retry helper" in c["body"] for c in cluster.summaries(9)),
            40,
            "the summary after the model returned",
        )
    except AssertionError as exc:
        raise AssertionError(cluster.dump_logs()) from exc
    assert len(cluster.summaries(9)) == 1  # the note was replaced, not joined
    assert cluster.external.requests == []
    wait_for(
        lambda: (cluster.ledger.job(job_key(ref)) or {}).get("status") == SUCCEEDED,
        10,
        "the job to close",
    )


def test_a_worker_killed_mid_job_hands_the_job_to_another(cluster: Cluster) -> None:
    """SIGKILL the worker running the model call: the other finishes; one result, one row."""
    sha = "7" * 40
    cluster.github.add_pull(REPO, 7, title="Killed", diff=DIFF, head_sha=sha)
    # Rules match by PR title, so each test's script stays its own.
    cluster.local.script("Killed", reply=GOOD, times=1, delay=30)  # the first call hangs
    cluster.local.script("Killed", reply=GOOD)
    before = len(cluster.local.chat_requests())
    ref = cluster.publish(7, sha, delivery="kill-1")
    wait_for(lambda: len(cluster.local.chat_requests()) > before, 30, "the model call")
    wait_for(
        lambda: bool((cluster.ledger.job(job_key(ref)) or {}).get("worker")),
        10,
        "the job to be running",
    )
    row = cluster.ledger.job(job_key(ref))
    assert row is not None
    victim = int(row["worker"].rsplit(":", 1)[1])
    name = next(n for n, p in cluster.locals.items() if p.pid == victim)
    os.kill(victim, signal.SIGKILL)
    cluster.locals.pop(name).wait(timeout=10)
    try:
        wait_for(lambda: len(cluster.summaries(7)) >= 1, 60, "the other worker to publish")
    except AssertionError as exc:
        raise AssertionError(cluster.dump_logs()) from exc
    wait_for(
        lambda: (cluster.ledger.job(job_key(ref)) or {}).get("status") == SUCCEEDED,
        10,
        "the job to close",
    )
    time.sleep(2)  # give a stray duplicate the chance to show itself
    assert len(cluster.summaries(7)) == 1
    row = cluster.ledger.job(job_key(ref))
    assert row is not None
    assert row["attempts"] == 2 and int(row["worker"].rsplit(":", 1)[1]) != victim, (
        row,
        cluster.dump_logs(),
    )
    jobs, calls, _ = cluster.ledger.rows()
    mine = [c for c in calls if c.pr_number == 7]
    assert [j.job_key for j in jobs].count(job_key(ref)) == 1
    assert len(mine) == 1 and mine[0].tier == "local"  # the killed call never finished
    assert row["private_tokens"] == mine[0].tokens


def test_a_delivery_sent_twice_publishes_once(cluster: Cluster) -> None:
    """Two copies of the same job (a redelivered webhook) leave one comment and one job."""
    sha = "5" * 40
    cluster.github.add_pull(REPO, 5, title="Twice", diff=DIFF, head_sha=sha)
    cluster.local.script("Twice", reply=GOOD)
    ref = cluster.publish(5, sha, delivery="twice-1")
    # The edge's dedupe record is gone (expired, or Redis restarted): GitHub's redelivery
    # of the same webhook is queued a second time.
    cluster.redis.delete(delivery_key("twice-1"))
    assert cluster.broker.enqueue("twice-1", [Message(ref, task_id="twice-1:0")])
    wait_for(
        lambda: (cluster.ledger.job(job_key(ref)) or {}).get("status") == SUCCEEDED,
        30,
        "the job to close",
    )
    time.sleep(2)
    assert len(cluster.summaries(5)) == 1


def test_the_supervisor_stops_its_children_on_sigterm(cluster: Cluster) -> None:
    """``cibot worker`` with two queues runs two children and takes them down with it."""
    assert cluster.supervisor is not None
    children = subprocess.run(
        ["pgrep", "-P", str(cluster.supervisor.pid)], capture_output=True, text=True
    ).stdout.split()
    assert len(children) == 2
    cluster.supervisor.send_signal(signal.SIGTERM)
    assert cluster.supervisor.wait(timeout=30) == 0
    for pid in children:
        wait_for(
            lambda pid=pid: (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            ),
            10,
            f"child {pid} to exit",
        )
