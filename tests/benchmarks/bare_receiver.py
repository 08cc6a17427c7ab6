"""Serve the least a webhook receiver can do: verify HMAC-SHA256, LPUSH the body, answer 202.

bench_webhook.py measures cibot's edge against this. It is a raw ASGI app (no framework)
run by ``bot.server.listener`` and ``serve_all``, i.e. under exactly the uvicorn settings
``cibot serve`` uses. It keeps none of the edge's other checks: no size limit, no JSON,
no dedupe, no routing, no outbox, no spool, no metrics and no log line.

    CIBOT_WEBHOOK_SECRET=... CIBOT_REDIS_URL=... python tests/benchmarks/bare_receiver.py --port N
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bot.server import listener, serve_all  # noqa: E402

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

QUEUE = "github"
ACCEPTED = b'{"status":"enqueued"}'
REFUSED = b'{"status":"unauthorized"}'


def receiver(secret: str, redis_url: str) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """Return the ASGI app: one HMAC check and one LPUSH per request."""
    import redis

    key = secret.encode()
    client = redis.Redis.from_url(redis_url)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        body = await read(receive)
        signature = dict(scope["headers"]).get(b"x-hub-signature-256", b"")
        expected = b"sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest().encode()
        if not hmac.compare_digest(expected, signature):
            await answer(send, 401, REFUSED)
            return
        client.lpush(QUEUE, body)
        await answer(send, 202, ACCEPTED)

    return app


async def lifespan(receive: Receive, send: Send) -> None:
    """Acknowledge uvicorn's startup and shutdown."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read(receive: Receive) -> bytes:
    """Return the whole request body."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def answer(send: Send, status: int, body: bytes) -> None:
    """Send a JSON answer."""
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> int:
    """Serve the bare receiver on 127.0.0.1 until SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    app = receiver(os.environ["CIBOT_WEBHOOK_SECRET"], os.environ["CIBOT_REDIS_URL"])
    serve_all([listener(app, host="127.0.0.1", port=args.port, level=args.log_level)])
    return 0


if __name__ == "__main__":
    sys.exit(main())
