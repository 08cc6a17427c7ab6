"""Guard the admin listener (``/metrics``, ``/dashboard``): loopback passes, others need a token.

``cibot serve`` answers GitHub on its public listener and keeps the ledger's figures and
the Prometheus metrics on a second one, bound to 127.0.0.1 by default. When an operator
binds it elsewhere (a container network, so Prometheus can scrape it), every request
from a non-loopback address must carry ``Authorization: Bearer $CIBOT_ADMIN_TOKEN``,
compared in constant time. The check runs on the TCP peer's address: the admin
listener never trusts ``X-Forwarded-For``, so a proxy on the same host cannot lend
its loopback address to the outside. Only ``POST /webhook`` and ``GET /healthz``
belong behind the public proxy.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from bot.kernel.errors import ConfigError
from bot.kernel.settings import Settings

log = logging.getLogger(__name__)

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})
LOOPBACK_ONLY = (
    "the admin endpoints answer only loopback clients: set CIBOT_ADMIN_TOKEN on the server "
    "and send it as a bearer token, or ask from the server's own host"
)
BEARER_NEEDED = "send the admin token as 'Authorization: Bearer <CIBOT_ADMIN_TOKEN>'"


def is_loopback(host: str) -> bool:
    """Say whether a host name or address is a loopback one (IPv4-mapped IPv6 included)."""
    name = host.strip().strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_binding(settings: Settings) -> None:
    """Refuse to expose the admin listener beyond loopback without a token."""
    if not is_loopback(settings.admin_host) and not settings.admin_token:
        raise ConfigError(
            f"CIBOT_ADMIN_HOST={settings.admin_host} is not a loopback address, so the admin "
            "endpoints need a token: set CIBOT_ADMIN_TOKEN to a long random string (Prometheus "
            "sends it as a bearer token), or bind CIBOT_ADMIN_HOST to 127.0.0.1",
            key="CIBOT_ADMIN_TOKEN",
            source="environment",
        )


class AdminGuard:
    """Let loopback clients through; ask everyone else for the bearer token."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        """Wrap the admin app; an empty token means loopback only."""
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request, or answer 401/403 without touching the app."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client") or ("", 0)
        if is_loopback(str(client[0])) or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        status, reason = (401, BEARER_NEEDED) if self._token else (403, LOOPBACK_ONLY)
        log.warning(
            "admin request refused",
            extra={"client": str(client[0]), "path": str(scope.get("path", "")), "status": status},
        )
        await _refuse(send, status, reason, challenge=bool(self._token))

    def _authorized(self, scope: Scope) -> bool:
        """Say whether the request carries the admin token (constant-time comparison)."""
        if not self._token:
            return False
        headers = dict(scope.get("headers") or [])
        scheme, _, credentials = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)


async def _refuse(send: Send, status: int, reason: str, *, challenge: bool) -> None:
    """Answer a refused admin request with a JSON reason."""
    body = json.dumps({"status": "refused", "error": reason}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if challenge:
        headers.append((b"www-authenticate", b'Bearer realm="cibot-admin"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
