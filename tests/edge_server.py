"""Run the webhook edge on loopback for tests, sign deliveries, and read the queue."""

from __future__ import annotations

import base64
import json
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from bot.intake import Intake
from bot.kernel.jobs import GITHUB as QUEUE
from bot.kernel.settings import Settings
from bot.server import create_apps
from bot.webhooks import sign
from policies.model import Policy
from tests.services import wait_for_port

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRET = "It's a Secret to Everybody"


def fixture(name: str) -> dict[str, Any]:
    """Return a webhook fixture, e.g. ``pull_request.opened``, as a dict."""
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return data


def headers_for(body: bytes, *, event: str, delivery: str, secret: str = SECRET) -> dict[str, str]:
    """Return the headers GitHub sends with a signed delivery."""
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(body, secret=secret),
        "Content-Type": "application/json",
        "User-Agent": "GitHub-Hookshot/044aadd",
    }


def delivery(name: str, delivery_id: str, **changes: Any) -> tuple[bytes, dict[str, str]]:
    """Return (body, headers) for a fixture, with top-level keys replaced by ``changes``."""
    payload = {**fixture(name), **changes}
    body = json.dumps(payload).encode()
    return body, headers_for(body, event=name.split(".")[0], delivery=delivery_id)


def bound(host: str, port: int) -> socket.socket:
    """Return a listening-ready TCP socket bound to host:port (port 0: any free one)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


@dataclass
class EdgeServer:
    """Serve ``create_apps`` with uvicorn in threads: the public and the admin listener."""

    settings: Settings
    policy: Policy
    intake: Intake | None = None
    debounce_seconds: float = 30.0
    port: int = 0
    admin_port: int = 0
    admin_host: str = "127.0.0.1"
    servers: list[uvicorn.Server] = field(default_factory=list)
    threads: list[threading.Thread] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Return the public base URL (POST /webhook, GET /healthz)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        """Return the admin base URL (GET /metrics, GET /dashboard)."""
        return f"http://{self.admin_host}:{self.admin_port}"

    def start(self) -> EdgeServer:
        """Build the apps and serve them until stop()."""
        apps = create_apps(
            self.settings,
            self.policy,
            enqueue=self.intake,
            debounce_seconds=self.debounce_seconds,
        )
        # Bind the sockets here and hand them to uvicorn: a port picked first and bound
        # later can be taken in between by another test's process.
        public, admin = bound("127.0.0.1", self.port), bound(self.admin_host, self.admin_port)
        self.port, self.admin_port = public.getsockname()[1], admin.getsockname()[1]
        for app, sock, proxied in ((apps.public, public, True), (apps.admin, admin, False)):
            config = uvicorn.Config(
                app, log_level="warning", access_log=False, proxy_headers=proxied
            )
            server = uvicorn.Server(config)
            thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
            thread.start()
            self.servers.append(server)
            self.threads.append(thread)
        wait_for_port(self.port)
        wait_for_port(self.admin_port, host=self.admin_host)
        return self

    def stop(self) -> None:
        """Shut the servers down and wait for them."""
        for server in self.servers:
            server.should_exit = True
        for thread in self.threads:
            thread.join(timeout=15)
        self.servers.clear()
        self.threads.clear()


def queued(redis_url: str, queue: str = QUEUE) -> list[dict[str, Any]]:
    """Return the Celery messages waiting on a queue, oldest first, decoded.

    kombu's Redis transport LPUSHes each message onto a list named after the queue,
    and workers pop from the other end, so the list read backwards is arrival order.
    """
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.lrange(queue, 0, -1)
    finally:
        client.close()
    messages = []
    for item in reversed(raw):
        message = json.loads(item)
        args, kwargs, _embed = json.loads(base64.b64decode(message["body"]))
        messages.append({"headers": message["headers"], "args": args, "kwargs": kwargs})
    return messages
