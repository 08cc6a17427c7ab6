"""Serve GitHub webhooks: verify, drop duplicates, route, enqueue or spool, answer fast.

``cibot serve`` runs one process (the spool is a local file) on uvicorn. The request
path does no GitHub and no model call: it verifies the signature, maps the event to
jobs with the feature routers, and hands them to ``bot.intake`` (one Redis round trip).

Answers to POST /webhook: 200 ``pong`` for ping; 202 ``enqueued``, ``duplicate``,
``spooled`` (Redis is down; the spool will deliver) or ``ignored``; 401 for a missing,
forged or non-SHA-256 signature; 400 for malformed JSON, missing headers or a payload
without the fields its event needs; 413 for a body over 25 MB; 500 for anything
unexpected, logged with the delivery id.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from bot import webhooks
from bot.dashboard import Dashboard
from bot.errors import InputError, PayloadError, PayloadTooLarge, SignatureError, WebhookError
from bot.events import Context, Router
from bot.features import checks, comments, feedback, installs, pulls
from bot.intake import DEFAULT_DEBOUNCE_SECONDS, CeleryBroker, Intake, log_fields
from bot.metrics import CONTENT_TYPE, Metrics
from bot.settings import Settings
from bot.spool import Spool
from policies.model import Policy
from workers.job import JobRef

log = logging.getLogger(__name__)

ROUTER = Router(pulls.router, checks.router, comments.router, feedback.router, installs.router)
REFUSALS: dict[type[WebhookError], str] = {
    SignatureError: "unauthorized",
    PayloadError: "bad_request",
    PayloadTooLarge: "too_large",
}
LOG_FIELDS = ("delivery_id", "installation_id", "task", "tier")


@dataclass
class Edge:
    """Hold what the endpoints share: the secret, routing, intake and metrics."""

    secret: str
    router: Router
    ctx: Context
    intake: Intake
    metrics: Metrics


def create_app(
    settings: Settings,
    policy: Policy,
    *,
    enqueue: Intake | None = None,
    debounce_seconds: float = DEFAULT_DEBOUNCE_SECONDS,
) -> Starlette:
    """Build the ASGI app; refuse (ConfigError) when no webhook secret is set."""
    secret = settings.require_webhook_secret()
    intake = enqueue or Intake(
        CeleryBroker(settings.redis_url),
        Spool(settings.spool_path),
        debounce_seconds=debounce_seconds,
    )
    edge = Edge(
        secret=secret,
        router=ROUTER,
        ctx=Context(policy=policy, bot_login=settings.bot_login),
        intake=intake,
        metrics=Metrics(lambda: _safe_depth(intake)),
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        intake.start()
        try:
            yield
        finally:
            await run_in_threadpool(intake.stop if enqueue else intake.close)
            await run_in_threadpool(board.close)

    async def webhook(request: Request) -> Response:
        return await receive(edge, request)

    async def healthz(request: Request) -> Response:
        return await health(edge)

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(edge.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    board = Dashboard(settings, policy)

    async def dashboard(request: Request) -> Response:
        params = request.query_params
        try:
            page = await run_in_threadpool(
                board.page, days=params.get("days"), repo=params.get("repo")
            )
        except InputError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        except Exception:
            log.exception("dashboard failed")
            return PlainTextResponse("the ledger is not reachable; see the logs\n", status_code=503)
        return HTMLResponse(page)

    routes = [
        Route("/webhook", webhook, methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def receive(edge: Edge, request: Request) -> Response:
    """Answer one delivery; every failure becomes a status code, never a crash."""
    started = time.perf_counter()
    # Unauthenticated until verified: keep what we log and label short.
    name = request.headers.get("x-github-event", "")[:64]
    delivery = request.headers.get("x-github-delivery", "")[:128]
    try:
        body = await read_body(request)
        event = webhooks.parse(request.headers, body, secret=edge.secret)
        status, answer, jobs = await route(edge, event)
    except WebhookError as exc:
        outcome = REFUSALS.get(type(exc), "bad_request")
        status, answer, jobs = exc.status, {"status": outcome, "error": str(exc)}, []
    except Exception:
        log.exception("webhook failed", extra=log_fields(delivery_id=delivery, event=name))
        status, answer, jobs = 500, {"status": "error", "delivery": delivery}, []
    elapsed = time.perf_counter() - started
    edge.metrics.observe(name, str(answer["status"]), elapsed)
    log.info(
        "delivery answered",
        extra=log_fields(
            delivery_id=delivery,
            installation_id=jobs[0].installation_id if jobs else 0,
            task=",".join(job.task for job in jobs),
            event=name,
            status=status,
            outcome=answer["status"],
            ms=round(elapsed * 1000, 2),
        ),
    )
    return JSONResponse(answer, status_code=status)


async def read_body(request: Request) -> bytes:
    """Read the body, refusing one over the size cap before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        webhooks.check_size(int(declared))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        webhooks.check_size(size)
        chunks.append(chunk)
    return b"".join(chunks)


async def route(edge: Edge, event: webhooks.Event) -> tuple[int, dict[str, Any], list[JobRef]]:
    """Map a verified event to jobs and hand them to the intake."""
    if event.name == "ping":
        return 200, {"status": "pong", "zen": event.get("zen", "")}, []
    if not edge.router.handles(event.name):
        return 202, {"status": "ignored", "reason": f"cibot does not handle {event.name}"}, []
    if event.installation_id is None:
        return 202, {"status": "ignored", "reason": "the delivery names no App installation"}, []
    jobs = edge.router.dispatch(event, edge.ctx)
    if not jobs:
        return 202, {"status": "ignored", "reason": "nothing to do for this event"}, []
    # Called inline, not in a thread pool: it is one Redis round trip, and handing it to a
    # thread costs more than that in GIL hand-offs (tests/benchmarks/bench_webhook.py).
    outcome = edge.intake.accept(event.delivery_id, jobs)
    return 202, {"status": str(outcome), "jobs": [job.task for job in jobs]}, jobs


async def health(edge: Edge) -> Response:
    """Report Redis and spool health: 200 while deliveries can be taken, 503 otherwise."""
    report = await run_in_threadpool(edge.intake.health)
    if report["spool"] != "ok":
        report["status"] = "failing"
    elif report["redis"] != "ok":
        report["status"] = "degraded"  # still answering 202: deliveries go to the spool
    else:
        report["status"] = "ok"
    return JSONResponse(report, status_code=503 if report["status"] == "failing" else 200)


def _safe_depth(intake: Intake) -> float:
    """Return the spool depth for the gauge, or -1 when the spool cannot be read."""
    try:
        return float(intake.spool.depth())
    except Exception:
        return -1.0


class LogfmtFormatter(logging.Formatter):
    """Format a record as ``time level logger message key=value ...``."""

    _standard = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        """Render the fixed message followed by the record's structured fields."""
        extra = {k: v for k, v in record.__dict__.items() if k not in self._standard}
        for name in LOG_FIELDS:
            extra.setdefault(name, "")
        pairs = " ".join(f"{key}={_quote(value)}" for key, value in extra.items())
        line = f"{self.formatTime(record)} {record.levelname} {record.name} {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return f"{line} {pairs}"


def _quote(value: object) -> str:
    """Quote a logfmt value when it has spaces or quotes."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{text}"' if (" " in text or '"' in text or "=" in text or not text) else text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``cibot serve`` flags."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    parser.add_argument(
        "--debounce-seconds",
        type=float,
        default=DEFAULT_DEBOUNCE_SECONDS,
        help="how long a summary refresh waits for more pushes to the same PR (default 30)",
    )
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )


def run(args: argparse.Namespace) -> int:
    """Start the webhook server; refuse to start without CIBOT_WEBHOOK_SECRET."""
    import uvicorn

    from policies.loading import load_policy

    settings = Settings.from_env()
    settings.require_webhook_secret()
    policy = load_policy(settings.policy_path, overrides=settings.tier_overrides)
    _configure_logging(args.log_level)
    app = create_app(settings, policy, debounce_seconds=args.debounce_seconds)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        access_log=False,
        log_config=None,
        log_level=args.log_level,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return 0


def _configure_logging(level: str) -> None:
    """Send logfmt lines to stderr at the chosen level."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
