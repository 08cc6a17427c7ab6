"""Start a worker process the same way under plain ``celery worker`` and ``cibot worker``.

In production each queue runs as ``celery -A workers.celery_app worker -Q <queue>``
under an orchestrator (Compose, Kubernetes, systemd). Celery's signals give every such
process cibot's setup (https://docs.celeryq.dev/en/stable/userguide/signals.html):

- ``celeryd_init``: structured logging, before Celery prints its first warning;
- ``worker_init`` (main process, before the pool starts): logging at the final level, the
  preflight checks (GitHub App id and key, Redis, the ledger), then the metrics
  endpoint. A check that fails logs one CRITICAL line saying what to set and exits with
  code 2, so the orchestrator sees a configuration error instead of a restart loop.
- ``setup_logging``: cibot's structlog setup (``bot.kernel.logsetup``) instead of Celery's own.
- ``worker_ready`` / ``worker_shutting_down``: what ``GET /healthz`` on the metrics port says.
- ``worker_process_shutdown`` (prefork children): retire the child's multiprocess series.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.kernel import logsetup
from bot.kernel.errors import CibotError, ConfigError
from bot.kernel.jobs import SANDBOX
from bot.kernel.settings import Settings
from policies.model import Policy
from workers import leases, metrics, outbox
from workers.queues import all_queues, model_queues, plan

log = logging.getLogger("cibot.worker")

THREAD_POOLS = ("threads", "solo")  # one process: the runtime is built before any task runs


@dataclass(frozen=True)
class Served:
    """Say what one worker process serves: its queues, pool kind and concurrency."""

    queues: tuple[str, ...]
    pool: str
    concurrency: int


@dataclass
class Boot:
    """Hold one worker process's startup state: settings, what it serves, its endpoint."""

    app: Any
    settings: Settings
    policy: Policy
    checked: bool = False
    ready: threading.Event = field(default_factory=threading.Event)
    server: metrics.MetricsServer | None = None
    depth: metrics.QueueDepth | None = None


_boot: Boot | None = None


def install(app: Any, settings: Settings, policy: Policy) -> Boot:
    """Give ``app``'s worker processes cibot's logging, checks and metrics (once per process)."""
    global _boot
    from celery import signals

    _boot = Boot(app=app, settings=settings, policy=policy)
    _fresh_multiprocess_dir()
    leave_unacked_to_leases()
    hooks = (
        (signals.celeryd_init, _on_celeryd_init),
        (signals.worker_init, _on_worker_init),
        (signals.setup_logging, _on_setup_logging),
        (signals.worker_ready, _on_ready),
        (signals.worker_shutting_down, _on_shutting_down),
        (signals.worker_shutdown, _on_shutdown),
        (signals.worker_process_shutdown, _on_child_exit),
    )
    for signal, receiver in hooks:
        signal.connect(receiver, weak=False, dispatch_uid=f"cibot.startup.{receiver.__name__}")
    return _boot


def leave_unacked_to_leases() -> None:
    """Keep a worker alive through a lost broker connection, and leave restores to the leases.

    Two of kombu's Redis-transport paths fail with an AttributeError, not a connection
    error, once the connection is gone (``Channel._connparams`` reads the closed
    connection's settings): the restore of unacked messages on channel close, and the ack of
    a task that finished meanwhile. Celery reports either as "Unrecoverable error" and the
    worker exits. So the closed connection is reported as the ConnectionError it is (an
    ack that fails is logged, and its message is redelivered and found done), and the
    restore on close is off: the messages stay in the unacked index, and once this worker
    stops renewing their leases (``workers.leases``) any worker restores them within 30 s.
    """
    import redis
    from kombu.transport import redis as kombu_redis

    kombu_redis.QoS.restore_at_shutdown = False
    channel_class: Any = kombu_redis.Channel  # kombu is untyped
    original: Callable[..., Any] = channel_class._connparams
    if getattr(original, "cibot_guarded", False):
        return

    def connparams(channel: Any, asynchronous: bool = False) -> Any:
        connection = getattr(channel, "connection", None)
        if connection is None or getattr(connection, "client", None) is None:
            raise redis.exceptions.ConnectionError("the broker connection was closed")
        return original(channel, asynchronous)

    connparams.cibot_guarded = True  # type: ignore[attr-defined]
    channel_class._connparams = connparams


def _fresh_multiprocess_dir() -> None:
    """Create PROMETHEUS_MULTIPROC_DIR if needed and drop a previous run's series files.

    Runs in the worker's main process before any child forks or any series is written.
    """
    directory = os.environ.get(metrics.MULTIPROC_ENV)
    if not directory:
        return
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        if name.endswith(".db"):
            os.remove(os.path.join(directory, name))


def preflight(boot: Boot, served: Served) -> None:
    """Check what the queues need before taking work; raise ConfigError saying what to set."""
    settings = boot.settings
    needs_github = any(queue != SANDBOX for queue in served.queues)
    if needs_github:
        check_github_app(settings)
    check_redis(settings.redis_url)
    if needs_github and served.pool in THREAD_POOLS:
        _build_runtime(boot.app, settings)
    boot.checked = True


def check_github_app(settings: Settings) -> None:
    """Parse the App id and key now (no network): a missing or bad one stops the worker."""
    from workers.github import GitHubApp

    GitHubApp.from_settings(settings).close()


def check_redis(url: str) -> None:
    """Ping Redis once with short timeouts; raise ConfigError naming CIBOT_REDIS_URL."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"Redis at {logsetup.scrub_text(url)} is not reachable ({type(exc).__name__}: "
            f"{logsetup.scrub_text(str(exc))}): start it, or point CIBOT_REDIS_URL at it",
            key="CIBOT_REDIS_URL",
            source="environment",
        ) from exc
    finally:
        client.close()


def _build_runtime(app: Any, settings: Settings) -> None:
    """Connect the worker's adapters and migrate the ledger now, not inside the first job."""
    import sqlalchemy.exc

    try:
        app.cibot_runtime.get()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        raise ConfigError(
            f"the ledger database at {logsetup.scrub_text(settings.database_url)} cannot be "
            f"opened ({type(exc).__name__}): start it, or point CIBOT_DATABASE_URL at it",
            key="CIBOT_DATABASE_URL",
            source="environment",
        ) from exc


def check_port_free(host: str, port: int) -> None:
    """Raise ConfigError when the metrics port cannot be bound (another worker holds it)."""
    try:
        with socket.socket() as probe:
            probe.bind((host, port))
    except OSError as exc:
        raise _busy(host, port, exc) from exc


def _busy(host: str, port: int, exc: OSError) -> ConfigError:
    """Explain a metrics port that cannot be bound."""
    return ConfigError(
        f"the worker metrics endpoint cannot listen on {host}:{port} ({exc.strerror}): give "
        "each worker on a host its own CIBOT_WORKER_METRICS_PORT, or set it to off",
        key="CIBOT_WORKER_METRICS_PORT",
        source="environment",
    )


# ---- what the worker serves -----------------------------------------------------------------


def served_by(worker: Any) -> Served:
    """Read the queues, pool and concurrency Celery resolved for this worker."""
    from celery.concurrency import ALIASES

    pool = worker.pool_cls
    if isinstance(pool, type):
        target = f"{pool.__module__}:{pool.__qualname__}"
        pool = next((alias for alias, path in ALIASES.items() if path == target), target)
    queues = tuple(worker.app.amqp.queues.consume_from)
    return Served(queues=queues, pool=str(pool), concurrency=int(worker.concurrency or 0))


def check_plan(served: Served, policy: Policy) -> None:
    """Warn when a worker's pool or size differs from what the policy plans for its queue."""
    if len(served.queues) != 1:
        log.warning(
            "worker consumes several queues; run one queue per worker (-Q) so each pool "
            "fits its work",
            extra={"queues": ",".join(served.queues)},
        )
        return
    (planned,) = plan(list(served.queues), policy)
    if (planned.pool, planned.concurrency) != (served.pool, served.concurrency):
        log.warning(
            "worker pool differs from the policy's plan",
            extra={
                "queue": planned.queue,
                "pool": served.pool,
                "concurrency": served.concurrency,
                "planned_pool": planned.pool,
                "planned_concurrency": planned.concurrency,
            },
        )


def start_metrics(boot: Boot, served: Served) -> None:
    """Serve this process's metrics and health on the configured port, if any."""
    settings = boot.settings
    slots = {name: tier.max_concurrency for name, tier in boot.policy.tiers.items()}
    metrics.set_slots(slots)
    port = settings.worker_metrics_port
    if port is None:
        log.info("worker metrics endpoint is off", extra={"queues": ",".join(served.queues)})
        return
    boot.depth = metrics.QueueDepth(settings.redis_url, all_queues(boot.policy))
    registry = metrics.scrape_registry([boot.depth])
    try:
        boot.server = metrics.MetricsServer(
            settings.worker_metrics_host, port, registry, boot.ready.is_set
        ).start()
    except OSError as exc:
        raise _busy(settings.worker_metrics_host, port, exc) from exc
    log.info(
        "worker metrics endpoint listening",
        extra={
            "host": settings.worker_metrics_host,
            "port": boot.server.port,
            "queues": ",".join(served.queues),
            "pool": served.pool,
            "concurrency": served.concurrency,
        },
    )


# ---- the signal receivers -------------------------------------------------------------------


def _configure_logging(boot: Boot, level: int | str) -> None:
    """Apply cibot's logging: CIBOT_LOG_LEVEL when set, else the worker's --loglevel."""
    name = logging.getLevelName(int(level)) if str(level).isdigit() else str(level)
    logsetup.configure(fmt=boot.settings.log_format, level=boot.settings.log_level or name)


def _on_celeryd_init(options: dict[str, Any] | None = None, **_kwargs: Any) -> None:
    """Set up logging before Celery says anything (its first words are warnings)."""
    if _boot is not None:
        _configure_logging(_boot, (options or {}).get("loglevel") or logging.INFO)


def _on_worker_init(sender: Any = None, **_kwargs: Any) -> None:
    """Set up logging, run the checks and open the metrics endpoint; exit 2 when unfit."""
    boot = _boot
    if boot is None or getattr(sender, "app", None) is not boot.app:
        return
    _configure_logging(boot, getattr(sender, "loglevel", logging.INFO))
    served = served_by(sender)
    try:
        if not boot.checked:
            preflight(boot, served)
        check_plan(served, boot.policy)
        start_metrics(boot, served)
        if served.pool in THREAD_POOLS and set(served.queues) & set(model_queues(boot.policy)):
            from workers.pipeline import warm_up

            warm_up(boot.policy)
    except CibotError as exc:
        log.critical(
            "worker cannot start",
            extra={
                "error": str(exc),
                "key": getattr(exc, "key", ""),
                "queues": ",".join(served.queues),
            },
        )
        raise SystemExit(2) from exc


def _on_setup_logging(loglevel: int | str = logging.INFO, **_kwargs: Any) -> None:
    """Replace Celery's logging setup with cibot's."""
    if _boot is not None:
        _configure_logging(_boot, loglevel)


def _on_ready(**_kwargs: Any) -> None:
    """Renew the leases of the messages this worker takes; say healthy on /healthz."""
    if _boot is not None:
        start_message_leases(_boot.settings)
        _boot.ready.set()


def start_message_leases(settings: Settings) -> leases.Leases:
    """Keep this worker's reserved and running messages from being restored to others."""
    import redis

    def client() -> Any:
        return redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)

    held = leases.for_process(client)
    held.watch_messages(leases.worker_tags)
    held.every(outbox.SWEEP_S, lambda: _sweep(held.client))
    return held


def _sweep(client: Any) -> None:
    """Send again any message Redis lost on its way to a worker (workers.outbox)."""
    pushed = outbox.sweep(client)
    if pushed > 0:
        log.warning("messages lost on the way to a worker were sent again", extra={"count": pushed})


def _on_shutting_down(**_kwargs: Any) -> None:
    """Say unhealthy on /healthz while the worker drains."""
    if _boot is not None:
        _boot.ready.clear()


def _on_shutdown(**_kwargs: Any) -> None:
    """Close the metrics endpoint and its Redis connection."""
    if _boot is None:
        return
    for closer in (_boot.server, _boot.depth):
        if closer is not None:
            closer.close()


def _on_child_exit(pid: int | None = None, **_kwargs: Any) -> None:
    """Retire a prefork child's live gauges in multiprocess mode."""
    if os.environ.get(metrics.MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid or os.getpid())  # type: ignore[no-untyped-call]
