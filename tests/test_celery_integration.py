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
from bot.kernel.errors import GitHubTransient, GitHubValidation, InputError, RateLimited
from bot.kernel.jobs import DISPATCH, RUN_JOB, JobRef
from bot.kernel.settings import Settings
from policies.loading import load_policy
from policies.model import Policy
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
from workers.celery_app import create_app
from workers.leases import LEASE_S, RENEW_S
from workers.ledger import SUCCEEDED, Ledger, job_key
from workers.pipeline import Runtime, StepOutcome
from workers.queues import Limit, Timing, model_queues, plan, queue_for_tier
from workers.tasks import backoff, run_step

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
            # Three workers share this host; tests/test_worker_ops.py scrapes the endpoint.
            "CIBOT_WORKER_METRICS_PORT": "off",
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


@pytest.mark.integration
@pytest.mark.slow
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


@pytest.mark.integration
@pytest.mark.slow
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


@pytest.mark.integration
@pytest.mark.slow
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


# ---- the app, the retry rules and the worker plan, without processes ----------------------


@pytest.fixture(scope="module")
def default_policy() -> Policy:
    """Load the packaged policy."""
    return load_policy()


def private_mid(policy: Policy) -> Policy:
    """Return the policy with mid served privately (Qwen on the 2xH200 rung)."""
    tiers = dict(policy.tiers)
    tiers["mid"] = tiers["mid"].model_copy(
        update={"private": True, "rung": "2xH200", "max_concurrency": 24}
    )
    return policy.model_copy(update={"tiers": tiers})


def test_timing_leases_messages_briefly_whatever_the_job_limit(default_policy: Policy) -> None:
    """Limits derive from the longest job; the message lease does not, so recovery is quick.

    A live worker renews its messages' lease every RENEW_S (workers.leases), so a job or
    retry wait longer than the lease is never handed to another worker.
    """
    timing = Timing.from_policy(default_policy)
    assert timing.job.soft == 3 * 300 + 60  # the frontier tier's timeout, three times
    for limit in (timing.job, timing.github, timing.sandbox):
        assert limit.soft < limit.hard
    assert timing.visibility_timeout == timing.lease_s == LEASE_S == 30
    assert RENEW_S * 3 < LEASE_S  # a renewal or two may fail (a Redis blip) before it lapses
    assert timing.restore_interval + timing.visibility_timeout <= 60  # the recovery target
    assert timing.retry_max_delay == 300
    short = Timing.from_policy(default_policy, max_job_s=3, retry_max_delay_s=600)
    assert (short.job.hard, short.visibility_timeout, short.retry_max_delay) == (5, 30, 600)
    assert short.limit_for(DISPATCH) == short.github == Limit(3, 5)


def test_the_app_is_configured_for_at_least_once_delivery(default_policy: Policy) -> None:
    """acks_late, reject on loss, prefetch 1, JSON only, the four queues, per-task limits."""
    settings = Settings(redis_url="redis://127.0.0.1:1/0")
    timing = Timing.from_policy(default_policy)
    app = create_app(settings, default_policy, timing=timing)
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1
    assert conf.accept_content == ["json"] and conf.task_serializer == "json"
    assert [q.name for q in conf.task_queues] == ["local", "external", "github", "sandbox"]
    assert conf.broker_transport_options["visibility_timeout"] == timing.visibility_timeout
    run_job = app.tasks[RUN_JOB]
    assert (run_job.soft_time_limit, run_job.time_limit) == (timing.job.soft, timing.job.hard)
    assert app.tasks[DISPATCH].time_limit == timing.github.hard
    assert conf.task_routes[DISPATCH] == {"queue": "github"}
    assert conf.worker_send_task_events and conf.task_send_sent_event  # Flower sees tasks
    app.close()


def test_tiers_map_to_queues(default_policy: Policy) -> None:
    """Private tiers get their own queue; API tiers share ``external``."""
    assert queue_for_tier("local", default_policy) == "local"
    assert queue_for_tier("frontier", default_policy) == "external"
    assert model_queues(private_mid(default_policy)) == ["local", "mid", "external"]


def test_worker_pools_are_sized_to_the_model_slots(default_policy: Policy) -> None:
    """Threads sized to max_concurrency for model queues; a small prefork for the sandbox."""
    plans = {p.queue: p for p in plan(["local", "external", "github", "sandbox"], default_policy)}
    assert (plans["local"].pool, plans["local"].concurrency) == ("threads", 64)
    assert (plans["external"].pool, plans["external"].concurrency) == ("threads", 24)
    assert plans["sandbox"].pool == "prefork" and plans["sandbox"].concurrency <= 2
    assert plan(["mid"], private_mid(default_policy))[0].concurrency == 24
    with pytest.raises(InputError, match="unknown queue 'gpu'"):
        plan(["gpu"], default_policy)


def test_cibot_worker_refuses_bad_flags_in_one_line() -> None:
    """An unknown queue or a shared --concurrency is a one-line error, exit code 2."""
    for argv in (["--queues", "gpu"], ["--queues", "local,github", "--concurrency", "4"]):
        done = subprocess.run(
            [sys.executable, "-m", "bot.cli", "worker", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "CIBOT_REDIS_URL": "redis://127.0.0.1:1/0"},
        )
        assert done.returncode == 2, done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


@dataclass
class FakeRequest:
    """Stand in for Celery's task.request."""

    retries: int = 0


class RetryCalled(Exception):
    """Raised by the fake task's retry, like Celery's Retry."""


@dataclass
class FakeTask:
    """Stand in for a bound Celery task: it records the retries asked for."""

    request: FakeRequest = field(default_factory=FakeRequest)
    retried: list[dict[str, Any]] = field(default_factory=list)

    def retry(self, **kwargs: Any) -> RetryCalled:
        self.retried.append(kwargs)
        return RetryCalled()


@pytest.fixture
def bare(tmp_path: Path, default_policy: Policy) -> Iterator[Runtime]:
    """Give the retry tests a runtime with a real ledger and no outside services."""
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    rt = Runtime(
        settings=Settings(),
        policy=default_policy,
        redis=None,
        ledger=ledger,
        github=lambda _i: pytest.fail("no GitHub call expected"),
        model=lambda _r: pytest.fail("no model call expected"),
        send=lambda *_a: None,
        lock_ttl_s=5,
    )
    yield rt
    ledger.close()


OUTCOME_REF = JobRef(task="outcome", installation_id=1, repo=REPO, delivery_id="x", pr_number=3)


def raising(exc: BaseException) -> Callable[[JobRef, Runtime], Any]:
    """Return a pipeline step that raises ``exc``."""

    def step(_ref: JobRef, _rt: Runtime) -> Any:
        raise exc

    return step


def test_transient_errors_retry_with_bounded_jittered_backoff(
    bare: Runtime, default_policy: Policy
) -> None:
    """A 5xx or broker hiccup retries; the countdown stays under the backoff ceiling."""
    timing = Timing.from_policy(default_policy, retry_max_delay_s=8)
    for retries, exc in enumerate([GitHubTransient("502"), redis.ConnectionError("gone")]):
        task = FakeTask(FakeRequest(retries=retries))
        with pytest.raises(RetryCalled):
            run_step(task, raising(exc), OUTCOME_REF, bare, timing)
        assert 0 <= task.retried[0]["countdown"] <= min(8, 2 * 2**retries)
        assert task.retried[0]["exc"] is exc
    assert [backoff(10, None, timing) <= 8 for _ in range(50)] == [True] * 50


def test_a_rate_limit_waits_as_long_as_github_asks(bare: Runtime, default_policy: Policy) -> None:
    """RateLimited carries retry-after; the retry waits exactly that (capped)."""
    timing = Timing.from_policy(default_policy)
    task = FakeTask()
    with pytest.raises(RetryCalled):
        run_step(task, raising(RateLimited("slow down", retry_after=42)), OUTCOME_REF, bare, timing)
    assert task.retried[0]["countdown"] == 42


def test_permanent_and_exhausted_errors_fail_fast_with_the_reason(
    bare: Runtime, default_policy: Policy
) -> None:
    """A 422 fails at once; a transient error past max_retries fails too; both recorded."""
    timing = Timing.from_policy(default_policy, max_retries=3)
    cases = [
        (GitHubValidation("422: body too long"), 0),
        (GitHubTransient("502 again"), 3),
        (KeyError("a bug"), 0),
    ]
    for index, (exc, retries) in enumerate(cases):
        ref = JobRef(
            task="outcome", installation_id=1, repo=REPO, delivery_id=f"p{index}", pr_number=index
        )
        task = FakeTask(FakeRequest(retries=retries))
        assert run_step(task, raising(exc), ref, bare, timing) == "failed"
        assert task.retried == []
        row = bare.ledger.job(job_key(ref))
        assert row is not None
        assert (row["status"], row["error_kind"]) == ("failed", type(exc).__name__)


def test_a_busy_job_is_retried_later(bare: Runtime, default_policy: Policy) -> None:
    """Busy (another worker holds the lock) is not a failure: try again shortly."""
    timing = Timing.from_policy(default_policy, max_job_s=3)
    task = FakeTask()
    with pytest.raises(RetryCalled):
        run_step(task, lambda _r, _rt: StepOutcome.BUSY, OUTCOME_REF, bare, timing)
    assert 0 < task.retried[0]["countdown"] <= timing.retry_max_delay
    assert (
        run_step(FakeTask(), lambda _r, _rt: StepOutcome.RECORDED, OUTCOME_REF, bare, timing)
        == "recorded"
    )


def test_a_retry_that_cannot_reach_the_broker_waits_instead_of_dropping_the_job() -> None:
    """Celery turns an unsendable retry into Reject(requeue=False), which drops the message;
    retry_later waits for the broker and sends it once it is back."""
    from celery.exceptions import Reject

    from workers.tasks import retry_later

    class FlakyBroker(FakeTask):
        failures = 2
        attempts = 0

        def retry(self, **kwargs: Any) -> RetryCalled:
            self.attempts += 1
            if self.failures:
                self.failures -= 1
                raise Reject(redis.ConnectionError("Error 111 connecting"), requeue=False)
            return super().retry(**kwargs)

    task = FlakyBroker()
    assert isinstance(retry_later(task, exc=None, countdown=1.0), RetryCalled)
    assert task.retried == [{"exc": None, "countdown": 1.0}]
    assert (task.attempts, task.failures) == (3, 0)  # two refusals waited out, then sent
    with pytest.raises(Reject):  # a rejection for another reason is not swallowed
        retry_later(_RejectsForGood(), exc=None, countdown=1.0)


@dataclass
class _RejectsForGood(FakeTask):
    """A task whose retry is refused for a reason other than the broker."""

    def retry(self, **kwargs: Any) -> RetryCalled:
        from celery.exceptions import Reject

        raise Reject(ValueError("bad signature"), requeue=False)
