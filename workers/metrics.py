"""Count what the workers do, for Prometheus: jobs, model calls, tokens, spend, queues, slots.

Every worker process serves these on ``CIBOT_WORKER_METRICS_HOST:CIBOT_WORKER_METRICS_PORT``
(``GET /metrics``; ``GET /healthz`` answers 200 once the worker consumes). The series:

- ``cibot_jobs_total{step,task,tier,outcome}`` and ``cibot_job_seconds{step,task}``: each
  pipeline step a task ran (dispatch, run_job, publish) and how it ended;
- ``cibot_model_calls_total{tier,outcome}``, ``cibot_model_call_seconds{tier}`` (histogram),
  ``cibot_model_tokens_total{tier,kind}`` (prompt, completion, cached),
  ``cibot_model_cost_usd_total{tier}`` (private tiers at the marginal rate) and
  ``cibot_api_spend_usd_total{tier}`` (what the API tiers billed);
- ``cibot_model_fallbacks_total{tier,reason}``: each time a model or tier was left, and why;
- ``cibot_model_inflight{tier}`` against ``cibot_model_slots{tier}`` (the tier's
  ``max_concurrency``): how full a private model's batch is kept;
- ``cibot_queue_depth{queue}``: messages waiting on each Celery queue (Redis LLEN), read
  per scrape; -1 when Redis cannot be read.

A prefork pool (the sandbox queue) runs tasks in child processes: set
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory before the worker starts, and the
endpoint adds up every child's series (https://prometheus.github.io/client_python/multiprocess/).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily

REGISTRY = CollectorRegistry(auto_describe=True)
CALL_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
JOB_BUCKETS = (0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 120, 300, 900)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

JOBS = Counter(
    "cibot_jobs",
    "Pipeline steps run by workers, by step, task, tier and outcome.",
    ["step", "task", "tier", "outcome"],
    registry=REGISTRY,
)
JOB_SECONDS = Histogram(
    "cibot_job_seconds",
    "Time one pipeline step took in a worker.",
    ["step", "task"],
    buckets=JOB_BUCKETS,
    registry=REGISTRY,
)
MODEL_CALLS = Counter(
    "cibot_model_calls",
    "Model calls by tier and outcome (ok, error, invalid).",
    ["tier", "outcome"],
    registry=REGISTRY,
)
MODEL_SECONDS = Histogram(
    "cibot_model_call_seconds",
    "Latency of one model call, by tier.",
    ["tier"],
    buckets=CALL_BUCKETS,
    registry=REGISTRY,
)
TOKENS = Counter(
    "cibot_model_tokens",
    "Tokens used by model calls, by tier and kind (prompt, completion, cached).",
    ["tier", "kind"],
    registry=REGISTRY,
)
COST = Counter(
    "cibot_model_cost_usd",
    "What model calls cost in USD, by tier (private tiers at the marginal rate).",
    ["tier"],
    registry=REGISTRY,
)
API_SPEND = Counter(
    "cibot_api_spend_usd",
    "What external API tiers billed, in USD, by tier.",
    ["tier"],
    registry=REGISTRY,
)
FALLBACKS = Counter(
    "cibot_model_fallbacks",
    "Times a model or a whole tier was left for the next one, by tier left and reason.",
    ["tier", "reason"],
    registry=REGISTRY,
)
INFLIGHT = Gauge(
    "cibot_model_inflight",
    "Model calls in flight in this process, by tier.",
    ["tier"],
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
SLOTS = Gauge(
    "cibot_model_slots",
    "The tier's max_concurrency: the concurrent sequences its model is sized for.",
    ["tier"],
    registry=REGISTRY,
    multiprocess_mode="max",
)


def observe_call(record: Any, *, private: bool) -> None:
    """Count one model call (a workers.llm.CallRecord): outcome, latency, tokens, dollars."""
    tier = str(record.tier)
    MODEL_CALLS.labels(tier=tier, outcome=str(record.outcome)).inc()
    MODEL_SECONDS.labels(tier=tier).observe(float(record.latency_s))
    for kind in ("prompt", "completion", "cached"):
        TOKENS.labels(tier=tier, kind=kind).inc(int(getattr(record, f"{kind}_tokens")))
    COST.labels(tier=tier).inc(float(record.cost_usd))
    if not private:
        API_SPEND.labels(tier=tier).inc(float(record.cost_usd))


def observe_fallback(tier: str, reason: str) -> None:
    """Count one fallback away from ``tier`` for ``reason`` (the ledger's vocabulary)."""
    FALLBACKS.labels(tier=tier, reason=reason or "unknown").inc()


@contextlib.contextmanager
def in_flight(tier: str) -> Iterator[None]:
    """Count a model call as in flight on ``tier`` while the block runs."""
    gauge = INFLIGHT.labels(tier=tier)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def observe_job(step: str, task: str, tier: str, outcome: str, seconds: float) -> None:
    """Count one pipeline step and how long it took."""
    JOBS.labels(step=step, task=task, tier=tier or "none", outcome=outcome).inc()
    JOB_SECONDS.labels(step=step, task=task).observe(seconds)


def set_slots(slots: dict[str, int]) -> None:
    """Publish each tier's max_concurrency beside its in-flight count."""
    for tier, count in slots.items():
        SLOTS.labels(tier=tier).set(count)
        INFLIGHT.labels(tier=tier).inc(0)  # show the series at 0 before the first call


class QueueDepth:
    """Report each queue's waiting messages (LLEN of kombu's Redis list) at scrape time."""

    def __init__(self, redis_url: str, queues: Sequence[str]) -> None:
        """Connect lazily with short timeouts: a scrape must not hang on a dead Redis."""
        import redis

        self._queues = list(queues)
        self._redis = redis.Redis.from_url(
            redis_url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )

    def collect(self) -> Iterable[GaugeMetricFamily]:
        """Yield cibot_queue_depth for every queue; -1 when Redis cannot be read."""
        family = GaugeMetricFamily(
            "cibot_queue_depth", "Messages waiting on each Celery queue.", labels=["queue"]
        )
        try:
            pipe = self._redis.pipeline(transaction=False)
            for queue in self._queues:
                pipe.llen(queue)
            depths = [float(n) for n in pipe.execute()]
        except Exception:
            depths = [-1.0] * len(self._queues)
        for queue, depth in zip(self._queues, depths, strict=True):
            family.add_metric([queue], depth)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        """Describe the family without touching Redis."""
        yield GaugeMetricFamily("cibot_queue_depth", "Messages waiting on each Celery queue.")

    def close(self) -> None:
        """Close the Redis connection pool."""
        self._redis.close()


class _QuietHandler(WSGIRequestHandler):
    """Keep wsgiref's per-request lines off stderr; the scrape is not news."""

    def log_message(self, format: str, *args: Any) -> None:
        """Drop the access line."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """Serve each scrape in its own daemon thread, so a slow one never blocks the next."""

    daemon_threads = True


def scrape_registry(extra: Sequence[Any] = ()) -> CollectorRegistry:
    """Return the registry a scrape reads: this process's, or every child's in multiprocess mode."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        registry = CollectorRegistry()
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


class _Forward:
    """Expose another registry's metrics through this one (so extras can be added per endpoint)."""

    def __init__(self, source: CollectorRegistry) -> None:
        """Keep the registry to read."""
        self._source = source

    def collect(self) -> Iterable[Any]:
        """Yield the source registry's families."""
        return self._source.collect()

    def describe(self) -> Iterable[Any]:
        """Describe nothing: the source already checked its names."""
        return []


class MetricsServer:
    """Serve GET /metrics and GET /healthz from a background thread of the worker process."""

    def __init__(
        self, host: str, port: int, registry: CollectorRegistry, ready: Callable[[], bool]
    ) -> None:
        """Bind now (an OSError names a busy port at startup); serve after ``start``."""
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO") == "/healthz":
                ok = ready()
                start_response(
                    "200 OK" if ok else "503 Service Unavailable",
                    [("Content-Type", "text/plain; charset=utf-8")],
                )
                return [b"ok\n" if ok else b"starting\n"]
            result: Iterable[bytes] = metrics(environ, start_response)
            return result

        self._server = make_server(
            host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cibot-metrics", daemon=True
        )

    def start(self) -> MetricsServer:
        """Start answering in a daemon thread."""
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop answering and release the port."""
        self._server.shutdown()
        self._server.server_close()
