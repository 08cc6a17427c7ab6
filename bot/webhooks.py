"""Verify and parse GitHub webhook deliveries without doing any I/O.

This is the sans-I/O core of the edge: the server hands it raw headers and the raw
body, and gets back an ``Event`` or a ``WebhookError`` that carries the HTTP status.
See https://docs.github.com/en/webhooks/using-webhooks/validating-webhook-deliveries
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from bot.kernel.errors import PayloadError, PayloadTooLarge, SignatureError

# GitHub's ids and numbers are positive and fit a signed 64-bit integer (the ledger's
# INTEGER); anything larger is refused at the edge instead of failing a worker later.
MAX_ID = 2**63 - 1

# GitHub caps payloads at 25 MB and drops bigger ones itself; we refuse them too.
# https://docs.github.com/en/webhooks/webhook-events-and-payloads#payload-cap
MAX_BODY_BYTES = 25 * 1024 * 1024
SIGNATURE_PREFIX = "sha256="
_EVENT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_MISSING = object()


def check_size(length: int) -> None:
    """Refuse a body longer than the GitHub payload cap."""
    if length > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"body of {length} bytes exceeds the {MAX_BODY_BYTES} byte limit")


def sign(body: bytes, *, secret: str) -> str:
    """Return the ``X-Hub-Signature-256`` value GitHub would send for ``body``."""
    digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    return SIGNATURE_PREFIX + digest


def verify_signature(body: bytes, header: str | None, *, secret: str) -> None:
    """Check ``X-Hub-Signature-256`` against the body in constant time, or raise."""
    if not secret:
        raise SignatureError("no webhook secret is configured; every delivery is refused")
    if not header:
        raise SignatureError("X-Hub-Signature-256 header is missing")
    if not header.startswith(SIGNATURE_PREFIX):
        raise SignatureError("X-Hub-Signature-256 must be 'sha256=<hex digest>'")
    expected = sign(body, secret=secret)
    # compare_digest on bytes: a non-ASCII header must be refused, not raise TypeError.
    if not hmac.compare_digest(expected.encode(), header.encode("utf-8", "replace")):
        raise SignatureError("X-Hub-Signature-256 does not match the body")


@dataclass(frozen=True)
class Event:
    """Hold one verified delivery: event name, delivery id and decoded payload."""

    name: str
    delivery_id: str
    payload: Mapping[str, Any]

    @property
    def action(self) -> str:
        """Return the payload's ``action``, or "" for events without one."""
        action = self.payload.get("action")
        return action if isinstance(action, str) else ""

    @property
    def installation_id(self) -> int | None:
        """Return the App installation id the delivery belongs to, if any."""
        installation = self.payload.get("installation")
        if isinstance(installation, Mapping):
            value = installation.get("id")
            if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_ID:
                return value
        return None

    @property
    def repo(self) -> str:
        """Return the repository's ``owner/name``, or "" when the event has none."""
        repository = self.payload.get("repository")
        if isinstance(repository, Mapping):
            name = repository.get("full_name")
            if isinstance(name, str):
                return name
        return ""

    def get(self, path: str, default: Any = _MISSING) -> Any:
        """Return the value at a dotted path, or ``default``; raise PayloadError if absent."""
        node: Any = self.payload
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                if default is _MISSING:
                    raise PayloadError(f"{self.name} payload lacks '{path}'")
                return default
            node = node[part]
        return node

    def str_at(self, path: str) -> str:
        """Return the string at a dotted path or raise PayloadError naming it."""
        value = self.get(path)
        if not isinstance(value, str):
            raise PayloadError(f"{self.name} payload field '{path}' must be a string")
        return value

    def int_at(self, path: str) -> int:
        """Return the integer at a dotted path or raise PayloadError naming it."""
        value = self.get(path)
        if not isinstance(value, int) or isinstance(value, bool):
            raise PayloadError(f"{self.name} payload field '{path}' must be an integer")
        if not 0 < value <= MAX_ID:
            raise PayloadError(
                f"{self.name} payload field '{path}' is {str(value)[:24]}: GitHub's ids and "
                "numbers are positive 64-bit integers"
            )
        return value

    def bool_at(self, path: str, default: bool = False) -> bool:
        """Return the boolean at a dotted path, ``default`` when absent or null."""
        value = self.get(path, None)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise PayloadError(f"{self.name} payload field '{path}' must be a boolean")
        return value

    def list_at(self, path: str) -> list[Any]:
        """Return the list at a dotted path, an empty list when absent or null."""
        value = self.get(path, None)
        if value is None:
            return []
        if not isinstance(value, list):
            raise PayloadError(f"{self.name} payload field '{path}' must be a list")
        return value


def header(headers: Mapping[str, str], name: str) -> str | None:
    """Return a header by case-insensitive name, or None."""
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def parse(headers: Mapping[str, str], body: bytes, *, secret: str) -> Event:
    """Verify a delivery and decode it into an Event; raise a WebhookError otherwise.

    The order matters: size first (cheap), then the signature, so nothing about an
    unauthenticated body is ever parsed; then headers and JSON.
    """
    check_size(len(body))
    verify_signature(body, header(headers, "X-Hub-Signature-256"), secret=secret)
    name = _required(headers, "X-GitHub-Event", _EVENT_NAME)
    delivery_id = _required(headers, "X-GitHub-Delivery", _DELIVERY_ID)
    payload = _decode(body, header(headers, "Content-Type") or "application/json")
    return Event(name=name, delivery_id=delivery_id, payload=payload)


def _required(headers: Mapping[str, str], name: str, shape: re.Pattern[str]) -> str:
    """Return a required header that matches ``shape``, or raise PayloadError."""
    value = header(headers, name)
    if value is None or not value.strip():
        raise PayloadError(f"{name} header is missing")
    value = value.strip()
    if not shape.match(value):
        raise PayloadError(f"{name} header is malformed")
    return value


def _decode(body: bytes, content_type: str) -> dict[str, Any]:
    """Decode a JSON body, or the ``payload=`` form GitHub sends for form content type."""
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        try:
            fields = parse_qs(body.decode("utf-8"), strict_parsing=True)
        except (UnicodeDecodeError, ValueError) as exc:
            raise PayloadError("form body is not valid urlencoded text") from exc
        if len(fields.get("payload", ())) != 1:
            raise PayloadError("form body must carry exactly one 'payload' field")
        body = fields["payload"][0].encode("utf-8")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise PayloadError("body is not valid JSON") from exc
    if not isinstance(data, dict):
        raise PayloadError("body must be a JSON object")
    return data
