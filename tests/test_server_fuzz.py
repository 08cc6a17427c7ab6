"""Fuzz the webhook endpoint over loopback: no 500 but injected faults, and it stays healthy."""

from __future__ import annotations

import copy
import json
import socket
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.intake import CeleryBroker, Intake, Message
from bot.kernel.settings import Settings
from bot.spool import Spool
from bot.webhooks import sign
from policies.loading import load_policy
from tests.edge_server import FIXTURES, SECRET, EdgeServer, fixture
from tests.services import RedisServer

pytestmark = pytest.mark.integration
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FAULT_PREFIX = "fault-"
REFUSALS = {200, 202, 400, 401, 413}


class FaultyBroker(CeleryBroker):
    """The real broker, with an injected bug for deliveries whose id starts with 'fault-'."""

    def enqueue(self, delivery_id: str, messages: Sequence[Message]) -> bool:
        if delivery_id.startswith(FAULT_PREFIX):
            raise RuntimeError("injected fault")
        return super().enqueue(delivery_id, messages)


@pytest.fixture(scope="module")
def server(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[EdgeServer]:
    if redis_server.process is None:
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(
        webhook_secret=SECRET, redis_url=redis_server.url, spool_path=tmp / "spool.db"
    )
    intake = Intake(FaultyBroker(redis_server.url), Spool(tmp / "spool.db"))
    edge = EdgeServer(settings_, load_policy(), intake=intake).start()
    yield edge
    edge.stop()


@pytest.fixture(scope="module")
def edge(server: EdgeServer) -> str:
    return server.url


@pytest.fixture(scope="module")
def client(edge: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge, timeout=10) as http:
        yield http


def assert_healthy(client: httpx.Client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


events = st.sampled_from(
    [
        "pull_request",
        "issue_comment",
        "workflow_run",
        "check_suite",
        "installation",
        "installation_repositories",
        "pull_request_review_comment",
        "pull_request_review_thread",
        "ping",
        "push",
        "star",
    ]
)
# What an HTTP client will send as a header value (httpx refuses edge whitespace);
# the raw-socket test below covers arbitrary bytes.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80
).map(str.strip)


@st.composite
def signatures(draw: st.DrawFn, body: bytes) -> dict[str, str]:
    kind = draw(st.sampled_from(["valid", "forged", "missing", "garbage", "sha1"]))
    if kind == "valid":
        return {"X-Hub-Signature-256": sign(body, secret=SECRET)}
    if kind == "forged":
        return {"X-Hub-Signature-256": sign(body, secret=draw(st.text(min_size=1)))}
    if kind == "garbage":
        return {"X-Hub-Signature-256": draw(header_text)}
    if kind == "sha1":
        return {"X-Hub-Signature": "sha1=" + "0" * 40}
    return {}


@given(
    body=st.binary(max_size=2048),
    event=st.one_of(events, header_text),
    delivery=st.one_of(st.uuids().map(str), header_text),
    content_type=st.sampled_from(
        ["application/json", "application/x-www-form-urlencoded", "text/plain", ""]
    ),
    data=st.data(),
)
@FUZZ
def test_random_bodies_and_headers_never_500(
    client: httpx.Client,
    body: bytes,
    event: str,
    delivery: str,
    content_type: str,
    data: st.DataObject,
) -> None:
    headers = {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery,
        "Content-Type": content_type,
        **data.draw(signatures(body)),
    }
    response = client.post("/webhook", content=body, headers=headers)
    assert response.status_code in REFUSALS, response.text
    assert response.json()["status"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Yield the path of every value inside a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield (*prefix, key)
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield (*prefix, index)
            yield from _paths(value, (*prefix, index))


FIXTURE_NAMES = sorted(p.stem for p in FIXTURES.glob("*.json"))
FIXTURE_PATHS = {name: list(_paths(fixture(name))) for name in FIXTURE_NAMES}


@st.composite
def mutated_payloads(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(FIXTURE_NAMES))
    payload = copy.deepcopy(fixture(name))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        path = draw(st.sampled_from(FIXTURE_PATHS[name]))
        parent: Any = payload
        try:
            for part in path[:-1]:
                parent = parent[part]
            if draw(st.booleans()) and isinstance(parent, dict):
                parent.pop(path[-1], None)
            else:
                parent[path[-1]] = draw(json_values)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier mutation removed or replaced this path
    return name, payload


@given(case=mutated_payloads(), fault=st.booleans(), uid=st.uuids())
@FUZZ
def test_signed_payloads_of_the_wrong_shape_never_500_unless_a_fault_is_injected(
    client: httpx.Client, case: tuple[str, dict[str, Any]], fault: bool, uid: Any
) -> None:
    name, payload = case
    body = json.dumps(payload).encode()
    delivery = f"{FAULT_PREFIX if fault else ''}{uid}"
    headers = {
        "X-GitHub-Event": name.split(".")[0],
        "X-GitHub-Delivery": delivery,
        "X-Hub-Signature-256": sign(body, secret=SECRET),
        "Content-Type": "application/json",
    }
    response = client.post("/webhook", content=body, headers=headers)
    if response.status_code == 500:
        assert fault, f"unexpected 500 for {name}: {response.text}"
        assert response.json() == {"status": "error", "delivery": delivery}
    else:
        assert response.status_code in REFUSALS, response.text


def test_unmutated_fixtures_are_accepted(client: httpx.Client) -> None:
    for n, name in enumerate(FIXTURE_NAMES):
        body = (FIXTURES / f"{name}.json").read_bytes()
        headers = {
            "X-GitHub-Event": name.split(".")[0],
            "X-GitHub-Delivery": f"fx-{n}",
            "X-Hub-Signature-256": sign(body, secret=SECRET),
        }
        response = client.post("/webhook", content=body, headers=headers)
        assert response.status_code == (200 if name == "ping" else 202), (name, response.text)


def _raw(edge: str, request: bytes) -> bytes:
    """Send raw bytes over a socket and return whatever comes back."""
    host, port = edge.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@given(
    name=st.binary(min_size=1, max_size=30).filter(
        lambda b: b":" not in b and b"\r" not in b and b"\n" not in b
    ),
    value=st.binary(max_size=200).filter(lambda b: b"\r" not in b and b"\n" not in b),
    length=st.one_of(st.none(), st.integers(min_value=-5, max_value=10**12).map(str), header_text),
)
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_raw_malformed_header_bytes_never_500(
    edge: str, name: bytes, value: bytes, length: str | None
) -> None:
    body = b'{"zen": "x"}'
    lines = [
        b"POST /webhook HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Connection: close",
        b"X-GitHub-Event: ping",
        b"X-GitHub-Delivery: raw-1",
        b"X-Hub-Signature-256: " + sign(body, secret=SECRET).encode(),
        name + b": " + value,
    ]
    if length is not None:
        lines.append(b"Content-Length: " + length.encode())
    answer = _raw(edge, b"\r\n".join(lines) + b"\r\n\r\n" + body)
    if answer:  # the server may also just close on a request it cannot parse
        status = int(answer.split(b" ", 2)[1])
        assert status != 500 and status < 600, answer[:300]


def test_the_server_is_healthy_after_the_fuzzing(client: httpx.Client, server: EdgeServer) -> None:
    assert_healthy(client)
    metrics = httpx.get(f"{server.admin_url}/metrics", timeout=10).text
    assert "cibot_webhook_deliveries_total" in metrics
