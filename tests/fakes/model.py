"""Serve the OpenAI chat-completions API the way vLLM does, on loopback, for tests.

One instance plays the private tier (``hosted_vllm/<id>`` at ``.url``); another plays an
external API tier (``openai/<id>`` with ``api_base=.url``) and records every request, so a
test can prove what did, or did not, leave the building. Replies are scripted by matching
the request; failures (refused connections, 500s, timeouts, invalid JSON) are injectable;
``max_num_seqs`` caps concurrent sequences and queues the rest, like vLLM's scheduler.

Response shapes follow vLLM's OpenAI-compatible server:
https://docs.vllm.ai/en/latest/serving/openai_compatible_server.html
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from policies import tokens

Match = Callable[[dict[str, Any]], bool] | str | None
Reply = str | dict[str, Any] | Callable[[dict[str, Any]], "str | dict[str, Any]"]

FAIL_KINDS = ("refuse", "500", "timeout", "invalid_json")
BLOCK_SIZE = 16  # vLLM's default KV-cache block size; prefix-cache hits are whole blocks
INVALID_JSON = '{"summary": "the reply stops in the middle of a str'


@dataclass(frozen=True)
class RecordedRequest:
    """Hold one request as it arrived: method, path, headers (lower-cased names), raw body."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """Return the body parsed as JSON (None when empty)."""
        return json.loads(self.body) if self.body else None


@dataclass
class _Rule:
    """Hold one scripted reply or failure and how many more times it may fire."""

    match: Match
    reply: Reply | None = None
    fail: str | None = None
    times: int | None = None
    delay: float = 0.0

    def matches(self, body: dict[str, Any]) -> bool:
        """Return whether this rule applies to a chat request body."""
        if self.times is not None and self.times <= 0:
            return False
        if self.match is None:
            return True
        if isinstance(self.match, str):
            return self.match in prompt_text(body)
        return bool(self.match(body))


@dataclass
class _Slots:
    """Count busy and queued sequences and integrate busy slots over time."""

    capacity: int
    clock: Callable[[], float] = time.monotonic
    lock: threading.Lock = field(default_factory=threading.Lock)
    busy: int = 0
    queued: int = 0
    max_in_flight: int = 0
    max_queued: int = 0
    area: float = 0.0
    since: float = 0.0
    last: float = 0.0

    def __post_init__(self) -> None:
        """Start the busy-slot integral now."""
        self.semaphore = threading.BoundedSemaphore(self.capacity)
        self.since = self.last = self.clock()

    def _advance(self) -> None:
        """Add busy × elapsed to the integral (caller holds the lock)."""
        now = self.clock()
        self.area += self.busy * (now - self.last)
        self.last = now

    def enter(self) -> None:
        """Wait for a free slot (queueing beyond capacity) and take it."""
        with self.lock:
            self.queued += 1
            self.max_queued = max(self.max_queued, self.queued)
        self.semaphore.acquire()
        with self.lock:
            self._advance()
            self.queued -= 1
            self.busy += 1
            self.max_in_flight = max(self.max_in_flight, self.busy)

    def leave(self) -> None:
        """Give the slot back."""
        with self.lock:
            self._advance()
            self.busy -= 1
        self.semaphore.release()

    def mark(self) -> None:
        """Start a new measurement window for ``mean_busy`` and the maxima."""
        with self.lock:
            self._advance()
            self.area, self.since = 0.0, self.last
            self.max_in_flight, self.max_queued = self.busy, self.queued

    def mean_busy(self) -> float:
        """Return the time-weighted mean of busy slots since the last mark."""
        with self.lock:
            self._advance()
            elapsed = self.last - self.since
            return self.area / elapsed if elapsed > 0 else float(self.busy)


class _Server(ThreadingHTTPServer):
    """Accept hundreds of concurrent connections, one thread each, quietly."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    fake: FakeModelServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Stay quiet: clients that hang up or time out are part of the tests."""


class _Handler(BaseHTTPRequestHandler):
    """Answer /v1/models and /v1/chat/completions like vLLM's OpenAI server."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test output clean."""

    def setup(self) -> None:
        """Register the connection so a refusal can cut it."""
        super().setup()
        self.server.fake._track(self.connection, add=True)

    def finish(self) -> None:
        """Unregister the connection."""
        self.server.fake._track(self.connection, add=False)
        with contextlib.suppress(OSError):
            super().finish()

    def _body(self) -> bytes:
        """Read the request body named by Content-Length."""
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def do_GET(self) -> None:
        """Serve /v1/models (and /health, like vLLM)."""
        fake = self.server.fake
        fake._record(self, b"")
        if self.path.rstrip("/") == "/v1/models":
            self._send(200, fake._models_payload())
        elif self.path == "/health":
            self._send(200, {})
        else:
            self._send(404, {"detail": "Not Found"})

    def do_POST(self) -> None:
        """Serve /v1/chat/completions."""
        fake = self.server.fake
        raw = self._body()
        fake._record(self, raw)
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, {"detail": "Not Found"})
            return
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as exc:
            self._send(400, _error(f"invalid request body: {exc}", "BadRequestError", 400))
            return
        fake._chat(self, body)

    def _send(self, status: int, payload: Any) -> None:
        """Write a JSON response and keep the connection open."""
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        """Cut the connection with a TCP reset, as a crashed server would."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass


def _error(message: str, kind: str, code: int) -> dict[str, Any]:
    """Shape an error body the way vLLM does."""
    return {"object": "error", "message": message, "type": kind, "param": None, "code": code}


def prompt_text(body: dict[str, Any]) -> str:
    """Return every message's text content, joined, for substring matching."""
    return "\n".join(_content_text(m.get("content")) for m in body.get("messages") or [])


def _content_text(content: Any) -> str:
    """Flatten a message's content (a string or a list of parts) to text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _rendered_prompt(body: dict[str, Any]) -> str:
    """Render messages roughly as a chat template would, for token and cache counts."""
    parts = [
        f"<|{m.get('role', 'user')}|>{_content_text(m.get('content'))}<|end|>"
        for m in body.get("messages") or []
    ]
    return "".join(parts) + "<|assistant|>"


def minimal_instance(schema: dict[str, Any], root: dict[str, Any] | None = None) -> Any:
    """Build the smallest value that satisfies a JSON schema (objects, arrays, scalars, $ref)."""
    root = root or schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return minimal_instance(target, root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        if schema.get(key):
            return minimal_instance(schema[key][0], root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _MINIMAL[kind](schema, root)


def _minimal_object(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    """Fill in the required properties only."""
    props = schema.get("properties") or {}
    return {
        name: minimal_instance(props.get(name, {}), root) for name in schema.get("required", [])
    }


def _minimal_array(schema: dict[str, Any], root: dict[str, Any]) -> list[Any]:
    """Repeat the minimal item as often as minItems asks."""
    item = schema.get("items") or {"type": "string"}
    return [minimal_instance(item, root) for _ in range(int(schema.get("minItems", 0)))]


def _minimal_number(schema: dict[str, Any], root: dict[str, Any]) -> float | int:
    """Return the minimum, or zero."""
    low = schema.get("minimum", schema.get("exclusiveMinimum", 0))
    value = low + (1 if "exclusiveMinimum" in schema else 0)
    return int(value) if schema.get("type") == "integer" else value


_MINIMAL: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "object": _minimal_object,
    "array": _minimal_array,
    "string": lambda s, r: "x" * int(s.get("minLength", 0)),
    "integer": _minimal_number,
    "number": _minimal_number,
    "boolean": lambda s, r: False,
    "null": lambda s, r: None,
}


class FakeModelServer:
    """Run a loopback OpenAI-compatible chat server that behaves like vLLM.

    ``script`` chooses replies by matching requests; ``fail`` injects failures; every
    request is kept in ``requests``; ``max_in_flight`` and ``mean_busy`` report how full
    the ``max_num_seqs`` slots were.
    """

    def __init__(
        self,
        name: str,
        *,
        latency: float = 0.0,
        max_num_seqs: int = 256,
        model_ids: tuple[str, ...] | None = None,
        hang_s: float = 30.0,
    ) -> None:
        """Configure the server; call ``start`` (or use it as a context manager) to listen."""
        self.name = name
        self.latency = latency
        self.model_ids = model_ids
        self.hang_s = hang_s
        self.port = 0
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._failures: list[_Rule] = []
        self._requests: list[RecordedRequest] = []
        self._connections: set[socket.socket] = set()
        self._cached_blocks: set[bytes] = set()
        self._slots = _Slots(max_num_seqs)
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._refusing = False

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> FakeModelServer:
        """Listen on 127.0.0.1 (on the same port again after ``stop_listening``)."""
        server = _Server(("127.0.0.1", self.port), _Handler)
        server.fake = self
        self.port = int(server.server_address[1])
        self._server = server
        self._refusing = False
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            daemon=True,
            name=f"fake-model-{self.name}",
        )
        self._thread.start()
        return self

    def stop_listening(self) -> None:
        """Close the listening socket and cut open connections: new calls are refused."""
        self._refusing = True
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        with self._lock:
            conns = list(self._connections)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Stop listening and release any request held by a ``timeout`` failure."""
        self._closing.set()
        self.stop_listening()

    def __enter__(self) -> FakeModelServer:
        """Start listening."""
        return self.start()

    def __exit__(self, *exc: object) -> None:
        """Stop listening."""
        self.close()

    @property
    def url(self) -> str:
        """Return the OpenAI base URL (ending in /v1)."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- scripting ---------------------------------------------------------------------

    def script(
        self,
        match: Match = None,
        reply: Reply = "ok",
        *,
        times: int | None = None,
        delay: float = 0.0,
    ) -> None:
        """Answer requests that ``match`` (substring of the prompt, or a predicate) with ``reply``."""
        with self._lock:
            self._rules.append(_Rule(match=match, reply=reply, times=times, delay=delay))

    def fail(self, kind: str, *, times: int | None = 1, match: Match = None) -> None:
        """Fail the next ``times`` matching chat requests (None: until ``heal``).

        ``refuse`` with ``times=None`` stops listening, so connections are refused; with a
        count it resets each connection. ``timeout`` holds the request without answering.
        ``invalid_json`` answers 200 with a message that is not valid JSON.
        """
        if kind not in FAIL_KINDS:
            raise ValueError(f"unknown failure {kind!r}: use one of {', '.join(FAIL_KINDS)}")
        if kind == "refuse" and times is None:
            self.stop_listening()
            return
        with self._lock:
            self._failures.append(_Rule(match=match, fail=kind, times=times))

    def heal(self) -> None:
        """Drop every pending failure and listen again if refusing."""
        with self._lock:
            self._failures.clear()
        if self._refusing:
            self.start()

    # -- observations ------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Return every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def chat_requests(self) -> list[dict[str, Any]]:
        """Return the parsed bodies of the chat-completion requests received so far."""
        return [r.json() for r in self.requests if r.path.rstrip("/") == "/v1/chat/completions"]

    def raw_bodies(self) -> bytes:
        """Return every request's raw body joined, for "this never left" checks."""
        return b"\n".join(r.body for r in self.requests)

    @property
    def max_in_flight(self) -> int:
        """Return the most sequences running at once since the last ``mark``."""
        return self._slots.max_in_flight

    @property
    def max_queued(self) -> int:
        """Return the most requests waiting for a slot at once since the last ``mark``."""
        return self._slots.max_queued

    def mark(self) -> None:
        """Start a new window for ``mean_busy``, ``max_in_flight`` and ``max_queued``."""
        self._slots.mark()

    def mean_busy(self) -> float:
        """Return the time-weighted mean number of busy slots since the last ``mark``."""
        return self._slots.mean_busy()

    # -- request handling (called from handler threads) --------------------------------

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        """Remember or forget an open connection."""
        with self._lock:
            (self._connections.add if add else self._connections.discard)(conn)

    def _record(self, handler: _Handler, body: bytes) -> None:
        """Keep the request as received."""
        headers = {k.lower(): v for k, v in handler.headers.items()}
        entry = RecordedRequest(handler.command, handler.path, headers, body)
        with self._lock:
            self._requests.append(entry)

    def _take(self, rules: list[_Rule], body: dict[str, Any]) -> _Rule | None:
        """Return the first rule that matches and use up one of its times."""
        with self._lock:
            for rule in rules:
                if rule.matches(body):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def _models_payload(self) -> dict[str, Any]:
        """List the served model ids like vLLM's /v1/models."""
        ids = self.model_ids or (self.name,)
        created = int(time.time())
        return {
            "object": "list",
            "data": [
                {
                    "id": mid,
                    "object": "model",
                    "created": created,
                    "owned_by": "vllm",
                    "root": mid,
                    "parent": None,
                    "max_model_len": 131072,
                }
                for mid in ids
            ],
        }

    def _chat(self, handler: _Handler, body: dict[str, Any]) -> None:
        """Answer one chat request: failures first, then a slot, latency and a reply."""
        model = str(body.get("model", ""))
        if self.model_ids is not None and model not in self.model_ids:
            handler._send(404, _error(f"The model `{model}` does not exist.", "NotFoundError", 404))
            return
        if body.get("stream"):
            handler._send(
                400, _error("streaming is not supported by this fake", "BadRequestError", 400)
            )
            return
        failure = self._take(self._failures, body)
        if failure is not None and failure.fail != "invalid_json":
            self._inject(handler, str(failure.fail))
            return
        self._slots.enter()
        try:
            rule = None if failure is not None else self._take(self._rules, body)
            time.sleep(self.latency + (rule.delay if rule else 0.0))
            text = INVALID_JSON if failure is not None else self._reply_text(rule, body)
            handler._send(200, self._completion(body, model, text))
        finally:
            self._slots.leave()

    def _inject(self, handler: _Handler, kind: str) -> None:
        """Fail a request the way a broken server would."""
        if kind == "500":
            handler._send(500, _error("injected failure: engine error", "InternalServerError", 500))
        elif kind == "timeout":
            self._closing.wait(self.hang_s)
            handler._reset()
        else:
            handler._reset()

    def _reply_text(self, rule: _Rule | None, body: dict[str, Any]) -> str:
        """Pick the reply text: a scripted one, a schema-shaped one, or a plain default."""
        if rule is not None:
            reply = rule.reply(body) if callable(rule.reply) else rule.reply
            return reply if isinstance(reply, str) else json.dumps(reply)
        schema = _json_schema(body)
        if schema is not None:
            return json.dumps(minimal_instance(schema))
        return f"ok from {self.name}"

    def _completion(self, body: dict[str, Any], model: str, text: str) -> dict[str, Any]:
        """Build a vLLM chat.completion object with usage and cached-token details."""
        prompt_ids = tokens.encoding().encode(_rendered_prompt(body), disallowed_special=())
        cached = self._cache_hits(prompt_ids)
        out_ids = tokens.encoding().encode(text, disallowed_special=())
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        finish = "stop"
        if isinstance(limit, int) and len(out_ids) > limit:
            out_ids, text, finish = (
                out_ids[:limit],
                tokens.encoding().decode(out_ids[:limit]),
                "length",
            )
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": text,
                        "refusal": None,
                        "tool_calls": [],
                        "reasoning_content": None,
                    },
                    "logprobs": None,
                    "finish_reason": finish,
                    "stop_reason": None,
                }
            ],
            "usage": {
                "prompt_tokens": len(prompt_ids),
                "total_tokens": len(prompt_ids) + len(out_ids),
                "completion_tokens": len(out_ids),
                "prompt_tokens_details": {"cached_tokens": cached},
            },
            "prompt_logprobs": None,
        }

    def _cache_hits(self, ids: list[int]) -> int:
        """Count prompt tokens served from the prefix cache, in whole blocks, like vLLM."""
        digest = hashlib.sha256()
        hits, counting = 0, True
        # The last token is always recomputed, so only blocks before it can hit.
        for start in range(0, len(ids) - 1 - (len(ids) - 1) % BLOCK_SIZE, BLOCK_SIZE):
            digest.update(struct.pack(f"{BLOCK_SIZE}i", *ids[start : start + BLOCK_SIZE]))
            key = digest.copy().digest()
            with self._lock:
                if counting and key in self._cached_blocks:
                    hits += BLOCK_SIZE
                else:
                    counting = False
                    self._cached_blocks.add(key)
        return hits


def _json_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """Return the json_schema response_format's schema, if the request has one."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema") or {}
    schema = spec.get("schema")
    return schema if isinstance(schema, dict) else None
