"""Serve GitHub webhooks: verify, drop duplicates, route, enqueue or spool, answer fast.

``cibot serve`` runs one process (the spool is a local file) on uvicorn, with two
listeners. The public one (``--host``/``--port``) answers ``POST /webhook`` and
``GET /healthz``, and is the only one a proxy should forward to. The admin one
(``CIBOT_ADMIN_HOST``/``CIBOT_ADMIN_PORT``, 127.0.0.1:8081 by default) serves
``GET /metrics`` and ``GET /dashboard`` behind ``bot.admin.AdminGuard``.

The request path does no GitHub and no model call: it verifies the signature, maps the
event to jobs with the feature routers, and hands them to ``bot.intake`` (one Redis
round trip).

Answers to POST /webhook: 200 ``pong`` for ping; 202 ``enqueued``, ``duplicate``,
``spooled`` (Redis is down; the spool will deliver) or ``ignored``; 401 for a missing,
forged or non-SHA-256 signature; 400 for malformed JSON, missing headers or a payload
without the fields its event needs; 413 for a body over 25 MB; 500 for anything
unexpected, logged with the delivery id.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bot import webhooks
from bot.admin import AdminGuard, check_binding
from bot.events import Context, Router
from bot.features import checks, comments, feedback, installs, pulls
from bot.intake import DEFAULT_DEBOUNCE_SECONDS, CeleryBroker, Intake, log_fields
from bot.kernel import logsetup
from bot.kernel.errors import (
    InputError,
    PayloadError,
    PayloadTooLarge,
    SignatureError,
    WebhookError,
)
from bot.kernel.jobs import JobRef
from bot.kernel.settings import Settings
from bot.metrics import CONTENT_TYPE, Metrics
from bot.spool import Spool
from policies.model import Policy
from workers.dashboard import Dashboard

if TYPE_CHECKING:
    import uvicorn

log = logging.getLogger(__name__)

ROUTER = Router(pulls.router, checks.router, comments.router, feedback.router, installs.router)
REFUSALS: dict[type[WebhookError], str] = {
    SignatureError: "unauthorized",
    PayloadError: "bad_request",
    PayloadTooLarge: "too_large",
}


@dataclass
class Edge:
    """Hold what the endpoints share: the secret, routing, intake and metrics."""

    secret: str
    router: Router
    ctx: Context
    intake: Intake
    metrics: Metrics


@dataclass(frozen=True)
class Apps:
    """Hold the two ASGI apps of ``cibot serve``: what GitHub reaches, and what operators do."""

    public: Starlette
    admin: Starlette


def create_apps(
    settings: Settings,
    policy: Policy,
    *,
    enqueue: Intake | None = None,
    debounce_seconds: float = DEFAULT_DEBOUNCE_SECONDS,
) -> Apps:
    """Build the public and admin apps; refuse (ConfigError) when no webhook secret is set."""
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
    return Apps(
        public=_public_app(edge, owns_intake=enqueue is None),
        admin=_admin_app(edge, Dashboard(settings, policy), token=settings.admin_token),
    )


def create_app(
    settings: Settings,
    policy: Policy,
    *,
    enqueue: Intake | None = None,
    debounce_seconds: float = DEFAULT_DEBOUNCE_SECONDS,
) -> Starlette:
    """Build the public app alone (``POST /webhook``, ``GET /healthz``)."""
    return create_apps(settings, policy, enqueue=enqueue, debounce_seconds=debounce_seconds).public


def _public_app(edge: Edge, *, owns_intake: bool) -> Starlette:
    """Return the app GitHub reaches: the webhook and the health check, nothing else."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        edge.intake.start()
        try:
            yield
        finally:
            await run_in_threadpool(edge.intake.close if owns_intake else edge.intake.stop)

    async def healthz(request: Request) -> Response:
        return await health(edge)

    routes = [
        Route("/webhook", Webhook(edge), methods=["POST"]),
        Route("/healthz", healthz, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _admin_app(edge: Edge, board: Dashboard, *, token: str) -> Starlette:
    """Return the operators' app: Prometheus metrics and the dashboard, behind AdminGuard."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await run_in_threadpool(board.close)

    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(edge.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    async def dashboard(request: Request) -> Response:
        params = request.query_params
        try:
            page = await run_in_threadpool(
                board.page,
                days=params.get("days"),
                repo=params.get("repo"),
                task=params.get("task"),
            )
        except InputError as exc:
            return PlainTextResponse(f"{exc}\n", status_code=400)
        except Exception:
            log.exception("dashboard failed")
            return PlainTextResponse("the ledger is not reachable; see the logs\n", status_code=503)
        return HTMLResponse(page)

    routes = [
        Route("/metrics", metrics, methods=["GET"]),
        Route("/dashboard", dashboard, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(AdminGuard, token=token)
    return app


class Webhook:
    """Serve ``POST /webhook`` as a plain ASGI app inside the Starlette router.

    The webhook is the one hot path. A Starlette function endpoint wraps every call in a
    Request, an exception-handling layer and a Response, about 15 us a delivery or twice
    what checking the signature costs (tests/benchmarks/bench_webhook.py); this reads and
    writes the ASGI messages directly. Routing, 404, 405 and 500 stay Starlette's.
    """

    def __init__(self, edge: Edge) -> None:
        """Keep what the answer needs."""
        self.edge = edge

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one delivery with its status code and JSON answer."""
        status, answer = await respond(self.edge, Headers(scope=scope), receive)
        # The bytes and headers JSONResponse would send, without building one.
        body = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        headers = [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


async def respond(edge: Edge, headers: Headers, receive: Receive) -> tuple[int, dict[str, Any]]:
    """Answer one delivery; every failure becomes a status code, never a crash."""
    started = time.perf_counter()
    # Unauthenticated until verified: keep what we log and label short.
    name = headers.get("x-github-event", "")[:64]
    delivery = headers.get("x-github-delivery", "")[:128]
    try:
        body = await read_body(headers, receive)
        event = webhooks.parse(headers, body, secret=edge.secret)
        status, answer, jobs = await route(edge, event)
    except WebhookError as exc:
        outcome = REFUSALS.get(type(exc), "bad_request")
        status, answer, jobs = exc.status, {"status": outcome, "error": str(exc)}, []
    except Exception:
        log.exception("webhook failed", extra=log_fields(delivery_id=delivery, github_event=name))
        status, answer, jobs = 500, {"status": "error", "delivery": delivery}, []
    elapsed = time.perf_counter() - started
    edge.metrics.observe(name, str(answer["status"]), elapsed)
    log.info(
        "delivery answered",
        extra=log_fields(
            delivery_id=delivery,
            installation_id=jobs[0].installation_id if jobs else 0,
            task=",".join(job.task for job in jobs),
            github_event=name,
            status=status,
            outcome=answer["status"],
            ms=round(elapsed * 1000, 2),
        ),
    )
    return status, answer


async def read_body(headers: Headers, receive: Receive) -> bytes:
    """Read the body, refusing one over the size cap before reading it all."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit():
        webhooks.check_size(int(declared))
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        webhooks.check_size(size)
        chunks.append(chunk)
        more = message.get("more_body", False)
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
        "--log-level",
        choices=["debug", "info", "warning", "error"],
        help="log level (default: CIBOT_LOG_LEVEL, else info)",
    )


def run(args: argparse.Namespace) -> int:
    """Start both listeners; refuse to start without CIBOT_WEBHOOK_SECRET or an admin guard."""
    from policies.loading import load_policy

    settings = Settings.from_env()
    settings.require_webhook_secret()
    check_binding(settings)
    policy = load_policy(settings.policy_path, overrides=settings.tier_overrides)
    level = args.log_level or settings.log_level or "info"
    logsetup.configure(fmt=settings.log_format, level=level)
    apps = create_apps(settings, policy, debounce_seconds=args.debounce_seconds)
    public = listener(apps.public, host=args.host, port=args.port, level=level)
    admin = listener(
        apps.admin, host=settings.admin_host, port=settings.admin_port, level=level, proxied=False
    )
    log.info(
        "serving",
        extra={
            "public": f"{args.host}:{args.port}",
            "admin": f"{settings.admin_host}:{settings.admin_port}",
            "admin_guard": "bearer token" if settings.admin_token else "loopback only",
        },
    )
    serve_all([public, admin])
    return 0


def listener(
    app: Starlette, *, host: str, port: int, level: str, proxied: bool = True
) -> uvicorn.Server:
    """Return a uvicorn server for one app that leaves signals to ``serve_all``.

    ``proxied=False`` makes the server ignore X-Forwarded-For, so AdminGuard always sees
    the TCP peer.
    """
    import uvicorn

    class Listener(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield  # serve_all handles SIGINT and SIGTERM for every listener at once

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=False,
        log_config=None,
        log_level=level,
        server_header=False,
        proxy_headers=proxied,
        timeout_graceful_shutdown=10,
    )
    return Listener(config)


def serve_all(servers: Sequence[uvicorn.Server]) -> None:
    """Run the listeners in one event loop until SIGINT or SIGTERM stops them all."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        for server in servers:
            if server.should_exit and signum == signal.SIGINT:
                server.force_exit = True  # a second Ctrl-C: stop waiting for requests
            server.should_exit = True

    async def main() -> None:
        await asyncio.gather(*(server.serve() for server in servers))

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with asyncio.Runner(loop_factory=servers[0].config.get_loop_factory()) as runner:
            runner.run(main())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
