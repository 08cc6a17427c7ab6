"""Measure how full the local model's slots stay: 1,000 jobs through Redis and real workers.

Starts a private redis-server, a fake vLLM server (64 slots, 2 s per sequence), a fake
GitHub (the worker's runtime checks its App key at start), and real ``cibot worker
--queues local`` processes (thread pools, 64 threads in all). It then enqueues the jobs
with ``send_task``; each job is one real ``ModelClient.complete`` call through litellm.
It reports the fake model's time-weighted mean busy slots over the run, jobs per second
end to end (first enqueue to last completion), and the workers' RSS.

Goal on a 2-core machine: at least 90 % of the slots busy, i.e. at least 28 jobs/s.

    .venv/bin/python tests/benchmarks/bench_saturation.py [--jobs 1000] [--runs 3] [--workers 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from celery import shared_task  # noqa: E402

DONE_KEY = "bench:done"
LOCAL_ID = "openai/gpt-oss-120b"


@shared_task(name="bench.complete", bind=True, acks_late=True)
def complete(self: Any, n: int) -> None:
    """Make one private model call through the worker's real model client; count it."""
    rt = self.app.cibot_runtime.get()
    rt.model(lambda _record: None).complete(
        "local",
        [{"role": "user", "content": f"Summarise change {n} in one line."}],
        private_only=True,
        installation_id=1,
        task="bench",
    )
    rt.redis.incr(DONE_KEY)


@dataclass
class Run:
    """Hold one run's figures."""

    seconds: float
    jobs_per_s: float
    mean_busy: float
    max_in_flight: int
    rss_mb: float
    peak_rss_mb: float


def rss_mb(pid: int) -> tuple[float, float]:
    """Return (current, peak) resident set size of a process in MiB."""
    fields = dict(
        line.split(":", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":" in line
    )
    return (int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024)


def start_workers(
    count: int, slots: int, env: dict[str, str], logs: Path
) -> list[subprocess.Popen[bytes]]:
    """Start ``count`` local-queue workers sharing ``slots`` threads; wait until ready."""
    procs = []
    for index in range(count):
        log = logs / f"worker-{index}.log"
        with log.open("wb") as out:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "bot.cli",
                        "worker",
                        "--queues",
                        "local",
                        "--concurrency",
                        str(slots // count),
                        "--loglevel",
                        "WARNING",
                        "--hostname",
                        f"bench{index}@%h",
                        "--include",
                        "tests.benchmarks.bench_saturation",
                    ],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    return procs


def wait_ready(app: Any, count: int, timeout: float = 120) -> None:
    """Wait until ``count`` workers answer a ping."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=1.0) or []) >= count:
            return
    raise TimeoutError("workers did not come up; see the worker logs")


def one_run(app: Any, model: Any, client: Any, jobs: int, procs: list[Any]) -> Run:
    """Enqueue ``jobs`` jobs and wait for the last one; measure the model's busy slots."""
    client.delete(DONE_KEY)
    model.mark()
    started = time.monotonic()
    for n in range(jobs):
        app.send_task("bench.complete", args=[n], queue="local")
    while int(client.get(DONE_KEY) or 0) < jobs:
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    busy = model.mean_busy()
    sizes = [rss_mb(p.pid) for p in procs]
    return Run(
        elapsed,
        jobs / elapsed,
        busy,
        model.max_in_flight,
        sum(s[0] for s in sizes),
        sum(s[1] for s in sizes),
    )


def main() -> int:
    """Run the benchmark and print a table of the runs and their medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--slots", type=int, default=64)
    parser.add_argument("--latency", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=1, help="local-queue worker processes")
    args = parser.parse_args()

    import redis

    from bot.kernel.settings import Settings
    from policies.loading import load_policy
    from tests.fakes.github import FakeGitHub
    from tests.fakes.model import FakeModelServer
    from tests.services import RedisServer, redis_binary
    from workers.celery_app import create_app

    binary = redis_binary()
    if binary is None:
        print("redis-server is not installed", file=sys.stderr)
        return 2
    logs = Path(tempfile.mkdtemp(prefix="cibot-bench-sat-"))
    server = RedisServer(binary=binary)
    server.start()
    procs: list[subprocess.Popen[bytes]] = []
    with (
        FakeModelServer(
            "local", latency=args.latency, max_num_seqs=args.slots, model_ids=(LOCAL_ID,)
        ) as model,
        FakeGitHub() as github,
    ):
        env = {
            **os.environ,
            "CIBOT_REDIS_URL": server.url,
            "CIBOT_DATABASE_URL": f"sqlite:///{logs / 'ledger.db'}",
            "CIBOT_LOCAL_API_BASE": model.url,
            "CIBOT_GITHUB_API_URL": github.url,
            "CIBOT_GITHUB_APP_ID": github.app_id,
            "CIBOT_GITHUB_PRIVATE_KEY": github.private_key_pem,
        }
        env.pop("CIBOT_POLICY", None)
        settings = Settings.from_env(env)
        app = create_app(settings, load_policy(overrides=settings.tier_overrides))
        client = redis.Redis.from_url(server.url)
        try:
            procs = start_workers(args.workers, args.slots, env, logs)
            wait_ready(app, args.workers)
            one_run(app, model, client, min(args.slots * 2, args.jobs), procs)  # warm up
            runs = [one_run(app, model, client, args.jobs, procs) for _ in range(args.runs)]
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=30)
            client.close()
            app.close()
            server.stop()
    print_table(args, runs)
    return 0


def print_table(args: argparse.Namespace, runs: list[Run]) -> None:
    """Print each run and the medians."""
    print(
        f"model slots {args.slots}, latency {args.latency}s, {args.jobs} jobs, "
        f"{args.workers} worker process(es), {args.slots // args.workers} threads each, "
        f"{os.cpu_count()} cores"
    )
    print(
        f"{'run':>6} {'seconds':>8} {'jobs/s':>7} {'busy':>6} {'busy %':>7} "
        f"{'max in flight':>13} {'RSS MiB':>8} {'peak MiB':>8}"
    )
    rows = [(str(i + 1), r) for i, r in enumerate(runs)]
    median = Run(
        *(statistics.median(getattr(r, f) for r in runs) for f in Run.__dataclass_fields__)
    )
    for label, r in [*rows, ("median", median)]:
        print(
            f"{label:>6} {r.seconds:>8.1f} {r.jobs_per_s:>7.1f} {r.mean_busy:>6.1f} "
            f"{100 * r.mean_busy / args.slots:>6.1f}% {r.max_in_flight:>13.0f} "
            f"{r.rss_mb:>8.0f} {r.peak_rss_mb:>8.0f}"
        )


if __name__ == "__main__":
    sys.exit(main())
