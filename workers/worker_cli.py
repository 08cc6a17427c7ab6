"""Run ``cibot worker``: Celery workers for the given queues, each with the right pool.

Model queues get a thread pool sized to keep the tier's concurrent slots full (the
``local`` queue: ``tiers.local.max_concurrency`` threads in one process), because model
calls wait on I/O. ``github`` gets a small thread pool; ``sandbox`` a small prefork pool,
since generated tests are CPU-bound and must be killable. One queue runs in this process;
several run as one child process each, supervised: a child that dies is restarted.

This is the one-box convenience. In production run each queue as a plain
``celery -A workers.celery_app worker -Q <queue> --pool ... --concurrency ...`` under the
orchestrator (``plan`` gives the pool and size; README, "Run workers in production").
Both paths share ``workers.startup``. A missing setting or an unreachable Redis stops
``cibot worker`` before any child starts: one line on stderr, exit code 2, no restarts.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from types import FrameType

from bot.kernel.errors import InputError
from bot.kernel.jobs import SANDBOX
from bot.kernel.settings import DISABLED, Settings
from policies.model import Policy
from workers.celery_app import create_app
from workers.queues import PoolPlan, Timing, all_queues, plan

log = logging.getLogger("cibot.worker")

RESTART_WINDOW_S = 60.0
MAX_RESTARTS = 5  # per child per window; more means it is crash-looping: give up
CONFIG_EXIT = 2  # a child that exits with this found a configuration error: never restart


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``cibot worker``'s flags."""
    parser.add_argument(
        "--queues",
        default="",
        help="comma-separated queues (default: every queue: the private tiers, external, "
        "github, sandbox)",
    )
    parser.add_argument("--concurrency", type=int, help="override the pool size (one queue only)")
    parser.add_argument("--loglevel", default="INFO", help="Celery log level (default INFO)")
    parser.add_argument(
        "--max-job-seconds",
        type=float,
        help="soft time limit of a model job; every other limit and the broker's visibility "
        "timeout derive from it (default: from the tiers' timeouts)",
    )
    parser.add_argument(
        "--retry-max-delay",
        type=float,
        default=300.0,
        help="longest wait between retries of a transient error, seconds (default 300)",
    )
    parser.add_argument(
        "--include", default="", help="comma-separated extra modules that register tasks"
    )
    parser.add_argument("--hostname", help="node name (default: <queue>.<pid>@<host>)")
    parser.add_argument(
        "--metrics-port",
        help="port of the worker's metrics endpoint, or off (default: "
        "CIBOT_WORKER_METRICS_PORT, else 9808; with several queues, queue N gets port+N)",
    )


def run(args: argparse.Namespace) -> int:
    """Start one worker in this process, or supervise one child per queue."""
    from policies.loading import load_policy

    settings = _with_metrics_port(Settings.from_env(), args.metrics_port)
    policy = load_policy(settings.policy_path, overrides=settings.tier_overrides)
    queues = [q.strip() for q in args.queues.split(",") if q.strip()] or all_queues(policy)
    if args.concurrency is not None and (args.concurrency < 1 or len(queues) > 1):
        raise InputError("--concurrency takes a positive number and applies to one queue only")
    plans = plan(queues, policy, concurrency=args.concurrency)
    if len(plans) == 1:
        return _run_one(plans[0], args, settings, policy)
    ports = _child_ports(settings, len(plans))
    _check_before_children(settings, plans, ports)
    return Supervisor(
        [child_argv(p, args, port) for p, port in zip(plans, ports, strict=True)]
    ).run()


def _with_metrics_port(settings: Settings, flag: str | None) -> Settings:
    """Apply --metrics-port over CIBOT_WORKER_METRICS_PORT."""
    if flag is None:
        return settings
    if flag.strip().lower() in DISABLED:
        return dataclasses.replace(settings, worker_metrics_port=None)
    if not flag.isdigit() or not 0 < int(flag) < 65536:
        raise InputError(f"--metrics-port {flag!r} is not a TCP port: use 1 to 65535, or off")
    return dataclasses.replace(settings, worker_metrics_port=int(flag))


def _child_ports(settings: Settings, count: int) -> list[int | None]:
    """Give child N the metrics port base+N, so workers on one host never collide."""
    base = settings.worker_metrics_port
    return [None if base is None else base + index for index in range(count)]


def _check_before_children(
    settings: Settings, plans: Sequence[PoolPlan], ports: Sequence[int | None]
) -> None:
    """Check the settings every child needs once, so a bad one is one line, not a loop."""
    from workers import startup

    if any(p.queue != SANDBOX for p in plans):
        startup.check_github_app(settings)
    startup.check_redis(settings.redis_url)
    for port in ports:
        if port is not None:
            startup.check_port_free(settings.worker_metrics_host, port)


def _run_one(chosen: PoolPlan, args: argparse.Namespace, settings: Settings, policy: Policy) -> int:
    """Run a single Celery worker in this process until it is told to stop."""
    from workers import startup

    timing = Timing.from_policy(
        policy, max_job_s=args.max_job_seconds, retry_max_delay_s=args.retry_max_delay
    )
    app = create_app(settings, policy, timing=timing)
    for module in filter(None, (m.strip() for m in args.include.split(","))):
        importlib.import_module(module)
    boot = startup.install(app, settings, policy)
    # Check now, before Celery starts: a bad setting is one line on stderr and exit code 2.
    # (A thread pool also connects and migrates here; prefork children connect after the fork.)
    startup.preflight(boot, startup.Served((chosen.queue,), chosen.pool, chosen.concurrency))
    if settings.worker_metrics_port is not None:
        startup.check_port_free(settings.worker_metrics_host, settings.worker_metrics_port)
    hostname = args.hostname or f"{chosen.queue}.{os.getpid()}@{socket.gethostname()}"
    argv = [
        "worker",
        f"--queues={chosen.queue}",
        f"--pool={chosen.pool}",
        f"--concurrency={chosen.concurrency}",
        f"--loglevel={args.loglevel}",
        f"--hostname={hostname}",
        "--without-gossip",
        "--without-mingle",
    ]
    if chosen.pool == "prefork":
        argv.append("--optimization=fair")
    app.worker_main(argv)
    return 0


def child_argv(chosen: PoolPlan, args: argparse.Namespace, port: int | None = None) -> list[str]:
    """Return the command line that runs one queue's worker as a child process."""
    argv = [
        sys.executable,
        "-m",
        "bot.cli",
        "worker",
        "--queues",
        chosen.queue,
        "--loglevel",
        args.loglevel,
        "--retry-max-delay",
        str(args.retry_max_delay),
        "--metrics-port",
        "off" if port is None else str(port),
    ]
    if args.max_job_seconds is not None:
        argv += ["--max-job-seconds", str(args.max_job_seconds)]
    if args.include:
        argv += ["--include", args.include]
    return argv


class Supervisor:
    """Run child workers; restart one that dies, and stop them all on SIGTERM or SIGINT."""

    def __init__(self, commands: Sequence[list[str]], *, poll_s: float = 0.5) -> None:
        """Keep the commands; nothing starts until ``run``."""
        self.commands = list(commands)
        self.poll_s = poll_s
        self.children: list[subprocess.Popen[bytes] | None] = [None] * len(self.commands)
        self.restarts: list[list[float]] = [[] for _ in self.commands]
        self.stopping = False

    def run(self) -> int:
        """Start every child and supervise until told to stop; return the exit code."""
        previous = {sig: signal.signal(sig, self._stop) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(len(self.commands)):
                self._start(index)
            code = self._watch()
        finally:
            self._terminate()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return code

    def _start(self, index: int) -> None:
        """Start (or restart) one child."""
        child = subprocess.Popen(self.commands[index])
        self.children[index] = child
        log.info(
            "worker started",
            extra={"command": " ".join(self.commands[index][3:]), "pid": child.pid},
        )

    def _watch(self) -> int:
        """Restart children that exit, unless they crash-loop; return when stopping."""
        while not self.stopping:
            for index, child in enumerate(self.children):
                if child is None or child.poll() is None or self.stopping:
                    continue
                if child.returncode == CONFIG_EXIT:
                    log.error(
                        "worker stopped on a configuration error; stopping all",
                        extra={"command": " ".join(self.commands[index][3:])},
                    )
                    return CONFIG_EXIT
                if not self._may_restart(index):
                    log.error(
                        "worker keeps crashing; stopping all", extra={"code": child.returncode}
                    )
                    return 1
                log.warning("worker exited; restarting", extra={"code": child.returncode})
                self._start(index)
            time.sleep(self.poll_s)
        return 0

    def _may_restart(self, index: int) -> bool:
        """Allow a restart unless this child died MAX_RESTARTS times within the window."""
        now = time.monotonic()
        recent = [t for t in self.restarts[index] if now - t < RESTART_WINDOW_S] + [now]
        self.restarts[index] = recent
        return len(recent) <= MAX_RESTARTS

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        """Note the request to stop; the watch loop ends and children get SIGTERM."""
        self.stopping = True

    def _terminate(self) -> None:
        """Ask every child for a warm shutdown, then kill those that do not finish."""
        alive = [c for c in self.children if c is not None and c.poll() is None]
        for child in alive:
            child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for child in alive:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
