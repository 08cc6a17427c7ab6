"""Run workers the production way, as plain ``celery -A workers.celery_app worker -Q <queue>``
processes against a private Redis and the loopback fakes: scrape their metrics endpoints,
read their JSON log lines, and watch a bad configuration stop them at once with exit 2."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from bot.intake import CeleryBroker, Message
from bot.kernel.jobs import JobRef
from tests.fakes.github import FakeGitHub, generate_private_key_pem
from tests.fakes.model import FakeModelServer
from tests.services import RedisServer, free_port
from tests.test_pipeline import DIFF, GOOD, INSTALLATION, LOCAL_ID, REPO, environment, write_policy
from workers import celery_app
from workers.ledger import FAILED, SUCCEEDED, Ledger, job_key

pytestmark = [pytest.mark.integration, pytest.mark.slow]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def celery_worker(queue: str, pool: str, concurrency: int) -> list[str]:
    """Return the plain celery command line the deploy files run for one queue."""
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "workers.celery_app",
        "--quiet",
        "worker",
        "-Q",
        queue,
        "--pool",
        pool,
        "--concurrency",
        str(concurrency),
        "--hostname",
        f"{queue}@ops",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        "INFO",
    ]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``check`` until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def healthy(port: int) -> bool:
    """Say whether the worker's /healthz answers 200 (its consumer is ready)."""
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def scrape(port: int) -> Samples:
    """Scrape a worker's /metrics and index the samples by name and labels."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """Return one sample's value, or None when the series is absent."""
    return samples.get((name, frozenset(labels.items())))


def log_lines(path: Path) -> list[dict[str, Any]]:
    """Return every line of a worker's log, each parsed as one JSON object."""
    return [json.loads(line) for line in path.read_text(errors="replace").splitlines() if line]


@dataclass
class Ops:
    """Hold the fakes, the plain celery workers, their metrics ports and logs."""

    github: FakeGitHub
    local: FakeModelServer
    external: FakeModelServer
    env: dict[str, str]
    tmp: Path
    ledger: Ledger
    broker: CeleryBroker
    ports: dict[str, int] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, queue: str, pool: str = "threads", concurrency: int = 4) -> None:
        """Start one queue's worker with its own metrics port and log file."""
        port = free_port()
        env = {**self.env, "CIBOT_WORKER_METRICS_PORT": str(port)}
        with (self.tmp / f"{queue}.log").open("ab") as out:
            self.procs[queue] = subprocess.Popen(
                celery_worker(queue, pool, concurrency),
                env=env,
                cwd=self.tmp,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.ports[queue] = port

    def log(self, queue: str) -> Path:
        """Return a worker's log file."""
        return self.tmp / f"{queue}.log"

    def publish(self, pr: int, sha: str, delivery: str) -> JobRef:
        """Queue a summary job the way the webhook edge does."""
        ref = JobRef(
            task="summary",
            installation_id=INSTALLATION,
            repo=REPO,
            delivery_id=delivery,
            pr_number=pr,
            head_sha=sha,
        )
        assert self.broker.enqueue(delivery, [Message(ref, task_id=f"{delivery}:0")])
        return ref

    def status(self, ref: JobRef) -> str:
        """Return the job's status in the ledger ('' when it has no row yet)."""
        return str((self.ledger.job(job_key(ref)) or {}).get("status", ""))

    def dump(self) -> str:
        """Return the tail of every log, for failure messages."""
        return "\n".join(
            f"== {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in self.tmp.glob("*.log")
        )


def stop(procs: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM the workers (a warm shutdown), then SIGKILL those that linger."""
    for proc in procs.values():
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs.values():
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def ops(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    """Start the fakes and plain celery workers for the github and local queues."""
    if redis_server.process is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    tmp = tmp_path_factory.mktemp("ops")
    with (
        FakeGitHub() as gh,
        FakeModelServer("local", model_ids=(LOCAL_ID,)) as local,
        FakeModelServer("external", model_ids=("gpt-5", "gpt-5.5")) as external,
    ):
        gh.add_installation(INSTALLATION, [REPO])
        db = f"sqlite:///{tmp / 'ledger.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
        env |= environment(gh, local, external, redis_server.url, db, write_policy(tmp))
        env |= {"CIBOT_LOG_FORMAT": "json", "CIBOT_LOG_LEVEL": "info"}
        world = Ops(gh, local, external, env, tmp, Ledger(db), CeleryBroker(redis_server.url))
        world.start("github")
        world.start("local")
        try:
            for queue, port in world.ports.items():
                wait_for(lambda port=port: healthy(port), 90, f"the {queue} worker's /healthz")
        except AssertionError as exc:
            stop(world.procs)
            raise AssertionError(world.dump()) from exc
        try:
            yield world
        finally:
            stop(world.procs)
            world.ledger.close()
            world.broker.close()


def test_a_plain_worker_serves_job_model_queue_and_slot_series(ops: Ops) -> None:
    """One summary through dispatch, run_job and publish; both endpoints show it."""
    sha = "2" * 40
    ops.github.add_pull(REPO, 21, title="Ops metrics", diff=DIFF, head_sha=sha)
    ops.local.script("Ops metrics", reply=GOOD)
    ref = ops.publish(21, sha, "ops-metrics-1")
    try:
        wait_for(lambda: ops.status(ref) == SUCCEEDED, 60, "the summary to be published")
    except AssertionError as exc:
        raise AssertionError(ops.dump()) from exc
    local = scrape(ops.ports["local"])
    labels = {"step": "run_job", "task": "summary", "tier": "local", "outcome": "computed"}
    assert value(local, "cibot_jobs_total", **labels) == 1
    assert value(local, "cibot_job_seconds_count", step="run_job", task="summary") == 1
    assert value(local, "cibot_model_calls_total", tier="local", outcome="ok") == 1
    assert value(local, "cibot_model_call_seconds_count", tier="local") == 1
    assert (value(local, "cibot_model_tokens_total", tier="local", kind="prompt") or 0) > 100
    assert (value(local, "cibot_model_tokens_total", tier="local", kind="completion") or 0) > 0
    assert (value(local, "cibot_model_cost_usd_total", tier="local") or 0) > 0
    assert value(local, "cibot_model_slots", tier="local") == 64
    assert value(local, "cibot_model_inflight", tier="local") == 0
    for queue in ("local", "external", "github", "sandbox"):
        assert value(local, "cibot_queue_depth", queue=queue) == 0
    github = scrape(ops.ports["github"])
    for step, outcome in (("dispatch", "queued"), ("publish", "published")):
        labels = {"step": step, "task": "summary", "tier": "local", "outcome": outcome}
        assert value(github, "cibot_jobs_total", **labels) == 1, (step, github)


def test_a_fallback_to_an_api_tier_counts_its_reason_and_the_spend(ops: Ops) -> None:
    """The local model resets the connection: the job falls back to mid, over the API."""
    sha = "3" * 40
    ops.github.add_pull(REPO, 22, title="Ops fallback", diff=DIFF, head_sha=sha)
    ops.local.fail("refuse", times=1, match="Ops fallback")
    ops.external.script("Ops fallback", reply=GOOD)
    ref = ops.publish(22, sha, "ops-fallback-1")
    try:
        wait_for(lambda: ops.status(ref) == SUCCEEDED, 60, "the summary from the API tier")
    except AssertionError as exc:
        raise AssertionError(ops.dump()) from exc
    local = scrape(ops.ports["local"])
    fallbacks = {
        dict(labels)["reason"]: count
        for (name, labels), count in local.items()
        if name == "cibot_model_fallbacks_total" and dict(labels)["tier"] == "local"
    }
    assert fallbacks == {"connection": 1}
    assert value(local, "cibot_model_calls_total", tier="local", outcome="error") == 1
    assert value(local, "cibot_model_calls_total", tier="mid", outcome="ok") == 1
    assert (value(local, "cibot_api_spend_usd_total", tier="mid") or 0) > 0
    assert value(local, "cibot_api_spend_usd_total", tier="local") is None  # private: no bill
    labels = {"step": "run_job", "task": "summary", "tier": "mid", "outcome": "computed"}
    assert value(local, "cibot_jobs_total", **labels) == 1


def test_a_failed_github_call_is_logged_with_the_delivery_status_and_fix(ops: Ops) -> None:
    """GitHub refuses the installation's token twice: one ERROR line says what to fix."""
    sha = "4" * 40
    ops.github.add_pull(REPO, 23, title="Ops refused", diff=DIFF, head_sha=sha)
    ops.github.inject("GET", r"/repos/acme/app/pulls/23$", status=401, times=2)
    ref = ops.publish(23, sha, "ops-401-1")
    wait_for(lambda: ops.status(ref) == FAILED, 60, "the job to fail")
    lines = log_lines(ops.log("github"))
    mine = [line for line in lines if line["delivery_id"] == "ops-401-1"]
    (failed,) = [line for line in mine if line["event"] == "github call failed"]
    assert failed["level"] == "error"
    assert failed["status"] == 401
    assert failed["error"] == "GitHub answered 401: Bad credentials"
    assert failed["fix"].startswith("check CIBOT_GITHUB_APP_ID and the private key")
    assert (failed["installation_id"], failed["task"], failed["step"]) == (
        INSTALLATION,
        "summary",
        "dispatch",
    )
    assert (failed["operation"], failed["repo"], failed["attempt"]) == ("pull", REPO, 1)
    assert failed["call_attempt"] == 1  # after the one re-mint the client allows itself
    (job,) = [line for line in mine if line["event"] == "job failed"]
    assert (job["level"], job["error_kind"]) == ("warning", "GitHubPermission")
    github = scrape(ops.ports["github"])
    labels = {"step": "dispatch", "task": "summary", "tier": "none", "outcome": "failed"}
    assert value(github, "cibot_jobs_total", **labels) == 1
    text = ops.log("github").read_text()
    assert "PRIVATE KEY" not in text and ops.github.private_key_pem[40:80] not in text


def test_every_line_a_plain_worker_prints_is_structured(ops: Ops) -> None:
    """With CIBOT_LOG_FORMAT=json, Celery's own lines come out as JSON with the fields too."""
    for queue in ("github", "local"):
        lines = log_lines(ops.log(queue))  # raises on any line that is not JSON
        events = {line["event"] for line in lines}
        assert f"{queue}@ops ready." in events
        assert "worker metrics endpoint listening" in events
        for line in lines:
            assert {"timestamp", "level", "logger", "delivery_id", "task", "tier"} <= line.keys()


def test_a_prefork_sandbox_worker_adds_up_its_children_in_multiprocess_mode(
    ops: Ops, tmp_path: Path
) -> None:
    """PROMETHEUS_MULTIPROC_DIR: the parent's endpoint serves every child's series."""
    port = free_port()
    env = {
        **ops.env,
        "CIBOT_WORKER_METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "multiproc"),  # created by the worker
    }
    with (tmp_path / "sandbox.log").open("ab") as out:
        proc = subprocess.Popen(
            celery_worker("sandbox", "prefork", 2), env=env, cwd=tmp_path, stdout=out, stderr=out
        )
    try:
        wait_for(lambda: healthy(port), 90, "the sandbox worker's /healthz")
        samples = scrape(port)
        assert value(samples, "cibot_model_slots", tier="local") == 64
        assert value(samples, "cibot_queue_depth", queue="sandbox") == 0
    finally:
        stop({"sandbox": proc})
    assert proc.returncode == 0, (tmp_path / "sandbox.log").read_text()[-3000:]


# ---- a bad configuration stops a worker at once ------------------------------------------------


def run_worker(argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run a worker command to completion (it should stop by itself, quickly)."""
    return subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=90)


def base_env(**extra: str) -> dict[str, str]:
    """Return the environment without any CIBOT_* variable, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    return {**env, "CIBOT_WORKER_METRICS_PORT": "off", **extra}


def test_a_plain_worker_without_the_app_key_exits_2_with_one_critical_line(
    redis_url: str, tmp_path: Path
) -> None:
    env = base_env(CIBOT_REDIS_URL=redis_url, CIBOT_LOG_FORMAT="json")
    started = time.monotonic()
    done = run_worker(celery_worker("github", "threads", 2), env, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert time.monotonic() - started < 60
    records = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    (critical,) = [r for r in records if r["level"] == "critical"]
    assert critical["event"] == "worker cannot start"
    assert "CIBOT_GITHUB_PRIVATE_KEY_FILE" in critical["error"]
    assert critical["queues"] == "github"
    assert "Traceback" not in done.stdout + done.stderr


def test_cibot_worker_stops_at_once_when_redis_is_unreachable(tmp_path: Path) -> None:
    key = generate_private_key_pem()
    dead = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = base_env(CIBOT_REDIS_URL=dead, CIBOT_GITHUB_APP_ID="1", CIBOT_GITHUB_PRIVATE_KEY=key)
    for queues in ("github", "local,github,sandbox"):
        done = run_worker(
            [sys.executable, "-m", "bot.cli", "worker", "--queues", queues], env, tmp_path
        )
        assert done.returncode == 2, done.stderr
        (line,) = done.stderr.strip().splitlines()
        assert line.startswith("cibot worker: Redis at redis://:***@127.0.0.1:")
        assert "point CIBOT_REDIS_URL at it" in line
        assert "hunter2" not in done.stderr and "PRIVATE KEY" not in done.stderr


def test_cibot_worker_stops_at_once_without_the_app_id(redis_url: str, tmp_path: Path) -> None:
    key = generate_private_key_pem()
    env = base_env(CIBOT_REDIS_URL=redis_url, CIBOT_GITHUB_PRIVATE_KEY=key)
    done = run_worker(
        [sys.executable, "-m", "bot.cli", "worker", "--queues", "local,github"], env, tmp_path
    )
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("cibot worker: CIBOT_GITHUB_APP_ID is not set")


def test_cibot_worker_refuses_a_metrics_port_another_process_holds(
    redis_url: str, tmp_path: Path
) -> None:
    key = generate_private_key_pem()
    env = base_env(CIBOT_REDIS_URL=redis_url, CIBOT_GITHUB_APP_ID="1", CIBOT_GITHUB_PRIVATE_KEY=key)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = str(holder.getsockname()[1])
        argv = [sys.executable, "-m", "bot.cli", "worker", "--queues", "sandbox"]
        done = run_worker([*argv, "--metrics-port", busy], env, tmp_path)
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert f"cannot listen on 127.0.0.1:{busy}" in line
    assert "CIBOT_WORKER_METRICS_PORT" in line


# ---- the startup pieces, in this process -------------------------------------------------------


def test_the_metrics_server_answers_healthz_by_readiness_and_serves_the_series() -> None:
    from workers import metrics

    ready = {"now": False}
    metrics.observe_job("publish", "summary", "local", "published", 0.2)
    registry = metrics.scrape_registry()
    server = metrics.MetricsServer("127.0.0.1", 0, registry, lambda: ready["now"]).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 503
        ready["now"] = True
        assert httpx.get(f"{base}/healthz", timeout=5).text == "ok\n"
        text = httpx.get(f"{base}/metrics", timeout=5).text
        assert (
            'cibot_jobs_total{outcome="published",step="publish",task="summary",tier="local"}'
            in text
        )
    finally:
        server.close()


def test_queue_depth_reads_llen_and_says_minus_one_without_redis(redis_url: str) -> None:
    from workers.metrics import QueueDepth

    queues = ["depth-probe-a", "depth-probe-b"]  # lists no worker consumes
    client = redis.Redis.from_url(redis_url)
    client.lpush(queues[0], b"a", b"b")
    client.close()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    for url, expected in ((redis_url, [2.0, 0.0]), (dead, [-1.0, -1.0])):
        depth = QueueDepth(url, queues)
        (family,) = depth.collect()
        assert {s.labels["queue"]: s.value for s in family.samples} == dict(
            zip(queues, expected, strict=True)
        )
        depth.close()


def test_a_pool_off_plan_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    from policies.loading import load_policy
    from workers.startup import Served, check_plan

    policy = load_policy()
    with caplog.at_level("WARNING", logger="cibot.worker"):
        check_plan(Served(("local",), "threads", 64), policy)
        assert caplog.records == []
        check_plan(Served(("local",), "prefork", 4), policy)
        check_plan(Served(("local", "github"), "threads", 8), policy)
    off_plan, several = caplog.records
    assert off_plan.getMessage() == "worker pool differs from the policy's plan"
    assert (off_plan.__dict__["planned_pool"], off_plan.__dict__["planned_concurrency"]) == (
        "threads",
        64,
    )
    assert several.__dict__["queues"] == "local,github"


def test_the_multiprocess_directory_is_made_and_emptied(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workers import startup

    target = tmp_path / "multiproc"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(target))
    startup._fresh_multiprocess_dir()
    (target / "counter_123.db").write_bytes(b"stale")
    (target / "keep.txt").write_text("not ours")
    startup._fresh_multiprocess_dir()
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]


def test_preflight_names_what_to_set_before_a_worker_takes_work(
    redis_url: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bot.kernel.errors import ConfigError
    from bot.kernel.settings import Settings
    from policies.loading import load_policy
    from workers import startup

    policy = load_policy()
    served = startup.Served(("github",), "threads", 8)
    missing = startup.Boot(app=None, settings=Settings(redis_url=redis_url), policy=policy)
    with pytest.raises(ConfigError, match="CIBOT_GITHUB_PRIVATE_KEY_FILE"):
        startup.preflight(missing, served)
    dead = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    sandbox = startup.Boot(app=None, settings=dead, policy=policy)
    with pytest.raises(ConfigError, match="point CIBOT_REDIS_URL at it"):
        startup.preflight(sandbox, startup.Served(("sandbox",), "prefork", 2))
    ok = startup.Boot(app=None, settings=Settings(redis_url=redis_url), policy=policy)
    startup.preflight(ok, startup.Served(("sandbox",), "prefork", 2))  # no GitHub needed
    assert ok.checked
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        with pytest.raises(ConfigError, match="CIBOT_WORKER_METRICS_PORT"):
            startup.check_port_free("127.0.0.1", holder.getsockname()[1])
    monkeypatch.setenv("CIBOT_LOG_FORMAT", "yaml")
    with pytest.raises(SystemExit) as stopped:
        celery_app.app_from_env()
    assert stopped.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cibot worker: CIBOT_LOG_FORMAT='yaml' is not valid")


def test_a_worker_leaves_its_unacked_messages_to_the_leases() -> None:
    """Kombu's restore on close and late acks die on a lost connection with an
    AttributeError; workers report it as a ConnectionError and leave restores to the lease."""
    from kombu.transport import redis as kombu_redis

    from workers.startup import leave_unacked_to_leases

    leave_unacked_to_leases()
    leave_unacked_to_leases()  # idempotent: the guard wraps once
    assert kombu_redis.QoS.restore_at_shutdown is False
    closed = SimpleNamespace(connection=None)
    with pytest.raises(redis.exceptions.ConnectionError, match="broker connection was closed"):
        kombu_redis.Channel._connparams(closed)
    with pytest.raises(redis.exceptions.ConnectionError):
        kombu_redis.Channel._connparams(SimpleNamespace(connection=SimpleNamespace(client=None)))
