"""Test the webhook server end to end: loopback HTTP, a private Redis, the real Celery publish."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bot.intake import CeleryBroker, Intake, Message
from bot.kernel.errors import ConfigError
from bot.kernel.jobs import SUPERSEDE, JobRef, head_key
from bot.kernel.settings import Settings
from bot.server import create_app
from bot.spool import Spool
from bot.webhooks import MAX_BODY_BYTES, sign
from policies.loading import load_policy
from tests.edge_server import SECRET, EdgeServer, delivery, fixture, headers_for, queued
from tests.services import RedisServer, free_port, wait_for_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parent.parent


def settings_for(redis_url: str, tmp_path: Path) -> Settings:
    """Return settings pointing at the private Redis and a fresh spool."""
    return Settings(webhook_secret=SECRET, redis_url=redis_url, spool_path=tmp_path / "spool.db")


@pytest.fixture
def edge(redis_url: str, tmp_path: Path) -> Iterator[EdgeServer]:
    server = EdgeServer(settings_for(redis_url, tmp_path), load_policy(), debounce_seconds=5)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(edge: EdgeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.url, timeout=10) as http:
        yield http


@pytest.fixture
def admin(edge: EdgeServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=edge.admin_url, timeout=10) as http:
        yield http


def post(client: httpx.Client, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST a delivery to /webhook."""
    return client.post("/webhook", content=body, headers=headers)


def metric(admin: httpx.Client, prefix: str) -> float:
    """Return the value of the first /metrics sample line (admin listener) starting with ``prefix``."""
    for line in admin.get("/metrics").text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric line starts with {prefix}")


# --- signatures ------------------------------------------------------------------------


def test_a_signed_delivery_is_enqueued_with_identifiers_only(
    client: httpx.Client, redis_url: str
) -> None:
    body, headers = delivery("pull_request.opened", "7b2f0a10-0001")
    response = post(client, body, headers)
    assert response.status_code == 202
    assert response.json() == {"status": "enqueued", "jobs": ["summary"]}
    (message,) = queued(redis_url)
    assert message["headers"]["task"] == "cibot.dispatch"
    assert message["headers"]["id"] == "7b2f0a10-0001:0"
    assert JobRef.from_kwargs(message["kwargs"]) == JobRef(
        task="summary",
        installation_id=2311213,
        repo="octo-org/hello-world",
        delivery_id="7b2f0a10-0001",
        pr_number=2,
        head_sha="ec26c3e57ca3a959ca5aad62de7213c562f8c821",
    )


def _sha1_only(body: bytes, headers: dict[str, str]) -> dict[str, str]:
    import hashlib
    import hmac

    del headers["X-Hub-Signature-256"]
    headers["X-Hub-Signature"] = "sha1=" + hmac.new(SECRET.encode(), body, hashlib.sha1).hexdigest()
    return headers


FORGERIES = {
    "forged": lambda b, h: {**h, "X-Hub-Signature-256": sign(b, secret="guessed")},
    "missing": lambda b, h: {k: v for k, v in h.items() if k != "X-Hub-Signature-256"},
    "sha1 only": _sha1_only,
    "empty secret": lambda b, h: {**h, "X-Hub-Signature-256": sign(b, secret="")},
    "tampered body": lambda b, h: h,
}


@pytest.mark.parametrize("case", sorted(FORGERIES))
def test_unsigned_or_forged_deliveries_get_401_and_enqueue_nothing(
    case: str, client: httpx.Client, redis_url: str
) -> None:
    body, headers = delivery("pull_request.opened", f"forged-{case.replace(' ', '-')}")
    headers = FORGERIES[case](body, dict(headers))
    if case == "tampered body":
        body = body.replace(b'"opened"', b'"reopened"')
    response = post(client, body, headers)
    assert response.status_code == 401
    assert response.json()["status"] == "unauthorized"
    assert queued(redis_url) == []
    assert redis.Redis.from_url(redis_url).dbsize() == 0, "not even a dedupe key"


def test_the_app_cannot_be_built_without_a_secret(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="CIBOT_WEBHOOK_SECRET"):
        create_app(Settings(spool_path=tmp_path / "s.db"), load_policy())


def test_cibot_serve_refuses_to_start_without_the_secret(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "CIBOT_WEBHOOK_SECRET is not set" in lines[0]
    assert "set it to" in lines[0]


# --- duplicates, also across a restart of the real `cibot serve` --------------------------


def test_the_same_delivery_three_times_gives_one_job(client: httpx.Client, redis_url: str) -> None:
    body, headers = delivery("pull_request.opened", "dup-1")
    statuses = [post(client, body, headers).json()["status"] for _ in range(3)]
    assert statuses == ["enqueued", "duplicate", "duplicate"]
    assert len(queued(redis_url)) == 1


def _serve(
    redis_url: str, tmp_path: Path, port: int, extra_env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start the real `cibot serve` in a subprocess and wait until it listens."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")},
        "CIBOT_WEBHOOK_SECRET": SECRET,
        "CIBOT_REDIS_URL": redis_url,
        "CIBOT_SPOOL_PATH": str(tmp_path / "spool.db"),
        "CIBOT_ADMIN_PORT": str(free_port()),
        **(extra_env or {}),
    }
    log = tmp_path / "serve.log"
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bot.cli",
                "serve",
                "--port",
                str(port),
                *(["--log-level", "warning"] if extra_env is None else []),
            ],
            env=env,
            cwd=ROOT,
            stderr=stderr,
        )
    try:
        wait_for_port(port, timeout=30)
    except TimeoutError:
        process.kill()
        process.wait()
        raise AssertionError(log.read_text()) from None
    return process


def _shutdown(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def test_a_redelivery_after_a_server_restart_still_gives_one_job(
    redis_url: str, tmp_path: Path
) -> None:
    body, headers = delivery("pull_request.opened", "restart-1")
    port = free_port()
    statuses = []
    for _ in range(2):
        process = _serve(redis_url, tmp_path, port)
        try:
            response = httpx.post(
                f"http://127.0.0.1:{port}/webhook", content=body, headers=headers, timeout=10
            )
            statuses.append(response.json()["status"])
        finally:
            _shutdown(process)
    assert statuses == ["enqueued", "duplicate"]
    assert len(queued(redis_url)) == 1


# --- broker outage -------------------------------------------------------------------------


def test_200_deliveries_during_a_redis_outage_are_all_enqueued_once_in_order(
    redis_server: RedisServer, redis_url: str, tmp_path: Path
) -> None:
    intake = Intake(
        CeleryBroker(redis_url), Spool(tmp_path / "spool.db"), drain_interval=0.05, max_backoff=0.2
    )
    edge = EdgeServer(settings_for(redis_url, tmp_path), load_policy(), intake=intake).start()
    try:
        with (
            httpx.Client(base_url=edge.url, timeout=10) as client,
            httpx.Client(base_url=edge.admin_url, timeout=10) as admin,
        ):
            body, headers = delivery("pull_request.opened", "before-outage")
            assert post(client, body, headers).json()["status"] == "enqueued"
            redis_server.stop()
            ids = [f"outage-{n:03d}" for n in range(200)]
            for n, delivery_id in enumerate(ids):
                payload = fixture("pull_request.opened")
                payload["number"] = payload["pull_request"]["number"] = 1000 + n
                body = json.dumps(payload).encode()
                hdrs = headers_for(body, event="pull_request", delivery=delivery_id)
                response = post(client, body, hdrs)
                assert (response.status_code, response.json()["status"]) == (202, "spooled")
                if n == 100:  # GitHub retrying one mid-outage must not add a job
                    assert post(client, body, hdrs).json()["status"] == "duplicate"
            assert client.get("/healthz").json()["status"] == "degraded"
            assert metric(admin, "cibot_spool_depth") == 200

            redis_server.start()  # an empty Redis, as after a failover with no persistence
            deadline = time.monotonic() + 20
            while len(queued(redis_url)) < 200 and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.3)  # anything extra would show up now
            body, headers = delivery("pull_request.opened", "after-outage")
            assert post(client, body, headers).json()["status"] == "enqueued"

            messages = queued(redis_url)
            got = [m["kwargs"]["delivery_id"] for m in messages]
            assert got == [*ids, "after-outage"], "each exactly once, in arrival order"
            assert [m["kwargs"]["pr_number"] for m in messages[:200]] == list(range(1000, 1200))
            assert client.get("/healthz").json() == {
                "redis": "ok",
                "spool": "ok",
                "spool_depth": 0,
                "status": "ok",
            }
            assert metric(admin, "cibot_spool_depth") == 0
    finally:
        edge.stop()


# --- debounce -------------------------------------------------------------------------------


def test_a_burst_of_pushes_yields_one_effective_job_for_the_newest_head(
    client: httpx.Client, redis_url: str
) -> None:
    shas = [f"{n:040x}" for n in range(1, 6)]
    for n, sha in enumerate(shas):
        payload = fixture("pull_request.synchronize")
        payload["pull_request"]["head"]["sha"] = payload["after"] = sha
        body = json.dumps(payload).encode()
        response = post(client, body, headers_for(body, event="pull_request", delivery=f"push-{n}"))
        assert response.json()["status"] == "enqueued"
    store = redis.Redis.from_url(redis_url, decode_responses=True)
    newest = store.get(head_key("octo-org/hello-world", 2))
    assert newest == shas[-1]
    messages = queued(redis_url)
    assert len(messages) == 5
    for message in messages:
        assert message["headers"]["eta"] is not None, "each refresh waits for the debounce"
        assert message["kwargs"]["args"] == {SUPERSEDE: True}
    # The worker's contract: run a superseding job only if it is still the newest head.
    effective = [m["kwargs"]["head_sha"] for m in messages if m["kwargs"]["head_sha"] == newest]
    assert effective == [shas[-1]]


# --- answers for every kind of request ------------------------------------------------------


def test_ping_is_answered(client: httpx.Client, redis_url: str) -> None:
    body, headers = delivery("ping", "ping-1")
    response = post(client, body, headers)
    assert (response.status_code, response.json()["status"]) == (200, "pong")
    assert queued(redis_url) == []


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"{oops", None, 400),
        (b"[]", None, 400),
        (b"{}", {"X-GitHub-Event": ""}, 400),
        (b"{}", {"X-GitHub-Delivery": ""}, 400),
    ],
)
def test_malformed_json_or_missing_headers_get_400(
    client: httpx.Client,
    redis_url: str,
    body: bytes,
    headers: dict[str, str] | None,
    status: int,
) -> None:
    sent = headers_for(body, event="pull_request", delivery="bad-1")
    sent.update(headers or {})
    response = post(client, body, sent)
    assert response.status_code == status
    assert response.json()["status"] == "bad_request"
    assert queued(redis_url) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("pull_request", "number"), 10**30),
        (("pull_request", "number"), 0),
        (("pull_request", "number"), -4),
        (("pull_request", "number"), 2**63),
    ],
)
def test_identifiers_out_of_range_get_400_and_queue_nothing(
    client: httpx.Client, redis_url: str, path: tuple[str, str], value: int
) -> None:
    """A signed delivery with a PR number no GitHub PR has is refused at the edge."""
    payload = fixture("pull_request.opened")
    payload[path[0]][path[1]] = value
    body = json.dumps(payload).encode()
    response = post(client, body, headers_for(body, event="pull_request", delivery=f"id-{value}"))
    assert (response.status_code, response.json()["status"]) == (400, "bad_request"), response.text
    assert queued(redis_url) == []


def test_a_signed_payload_of_the_wrong_shape_gets_400(client: httpx.Client) -> None:
    payload = fixture("pull_request.opened")
    payload["pull_request"]["head"] = "not an object"
    body = json.dumps(payload).encode()
    response = post(client, body, headers_for(body, event="pull_request", delivery="shape-1"))
    assert response.status_code == 400
    assert "pull_request.head.sha" in response.json()["error"]


def test_bodies_over_25_mb_get_413(client: httpx.Client, redis_url: str) -> None:
    big = b'{"pad": "' + b"x" * MAX_BODY_BYTES + b'"}'
    response = post(client, big, headers_for(big, event="pull_request", delivery="big-1"))
    assert response.status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for _ in range(26):
            yield b"x" * (1024 * 1024)

    headers = {
        "X-GitHub-Event": "pull_request",
        "X-GitHub-Delivery": "big-2",
        "X-Hub-Signature-256": "sha256=00",
    }
    response = client.post("/webhook", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert queued(redis_url) == []
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("name", "reason"),
    [("star", "does not handle star"), ("pull_request", "names no App installation")],
)
def test_events_the_bot_does_not_handle_are_ignored_with_202(
    client: httpx.Client, redis_url: str, name: str, reason: str
) -> None:
    payload = fixture("pull_request.opened")
    del payload["installation"]
    body = json.dumps({**payload, "action": "created"} if name == "star" else payload).encode()
    response = post(client, body, headers_for(body, event=name, delivery=f"ign-{name}"))
    assert response.status_code == 202
    assert response.json()["status"] == "ignored"
    assert reason in response.json()["reason"]
    assert queued(redis_url) == []


def test_skipped_drafts_and_bot_comments_enqueue_nothing(
    client: httpx.Client, redis_url: str
) -> None:
    payload = fixture("pull_request.opened")
    payload["pull_request"]["draft"] = True
    body = json.dumps(payload).encode()
    assert (
        post(client, body, headers_for(body, event="pull_request", delivery="draft-1")).json()[
            "status"
        ]
        == "ignored"
    )
    payload = fixture("issue_comment.created")
    payload["comment"]["user"] = {"login": "cibot[bot]", "id": 1, "type": "Bot"}
    payload["comment"]["body"] = "/cibot review"
    body = json.dumps(payload).encode()
    assert (
        post(client, body, headers_for(body, event="issue_comment", delivery="own-1")).json()[
            "status"
        ]
        == "ignored"
    )
    assert queued(redis_url) == []


def test_a_human_command_comment_is_enqueued_as_a_command_job(
    client: httpx.Client, redis_url: str
) -> None:
    body, headers = delivery("issue_comment.created", "cmd-1")
    assert post(client, body, headers).json() == {"status": "enqueued", "jobs": ["command"]}
    (message,) = queued(redis_url)
    assert message["kwargs"]["args"] == {
        "command": "review",
        "argv": "",
        "comment_id": 492700400,
        "author": "alice",
    }


class ExplodingBroker(CeleryBroker):
    """A real broker with one injected fault: the next enqueue raises a bug."""

    explode = True

    def enqueue(self, delivery_id: str, messages: Sequence[Message]) -> bool:
        if self.explode:
            self.explode = False
            raise RuntimeError("injected fault")
        return super().enqueue(delivery_id, messages)


def test_an_unexpected_error_is_a_logged_500_and_the_server_keeps_serving(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    intake = Intake(ExplodingBroker(redis_url), Spool(tmp_path / "spool.db"))
    edge = EdgeServer(settings_for(redis_url, tmp_path), load_policy(), intake=intake).start()
    try:
        with (
            httpx.Client(base_url=edge.url, timeout=10) as client,
            httpx.Client(base_url=edge.admin_url, timeout=10) as admin,
            caplog.at_level(logging.ERROR, logger="bot.server"),
        ):
            body, headers = delivery("pull_request.opened", "boom-1")
            response = post(client, body, headers)
            assert response.status_code == 500
            assert response.json() == {"status": "error", "delivery": "boom-1"}
            (record,) = [r for r in caplog.records if r.name == "bot.server"]
            assert record.__dict__["delivery_id"] == "boom-1"
            assert record.exc_info is not None
            # GitHub's manual redelivery of the failed delivery now goes through.
            assert post(client, body, headers).json()["status"] == "enqueued"
            assert client.get("/healthz").json()["status"] == "ok"
            assert (
                metric(
                    admin, 'cibot_webhook_deliveries_total{event="pull_request",outcome="error"}'
                )
                == 1
            )
    finally:
        edge.stop()
    assert len(queued(redis_url)) == 1


# --- health and metrics ------------------------------------------------------------------------


def test_healthz_reports_a_dead_redis_as_degraded_and_a_broken_spool_as_503(
    redis_url: str, tmp_path: Path
) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    intake = Intake(CeleryBroker(dead, connect_timeout=0.2), Spool(tmp_path / "s.db"))
    edge = EdgeServer(settings_for(dead, tmp_path), load_policy(), intake=intake).start()
    try:
        with (
            httpx.Client(base_url=edge.url, timeout=10) as client,
            httpx.Client(base_url=edge.admin_url, timeout=10) as admin,
        ):
            response = client.get("/healthz")
            assert (response.status_code, response.json()["redis"]) == (200, "down")
            assert response.json()["status"] == "degraded"
            intake.spool.close()
            response = client.get("/healthz")
            assert (response.status_code, response.json()["status"]) == (503, "failing")
            assert metric(admin, "cibot_spool_depth") == -1
    finally:
        edge.stop()


def test_metrics_count_deliveries_by_event_and_outcome_and_time_acks(
    client: httpx.Client, admin: httpx.Client
) -> None:
    body, headers = delivery("pull_request.opened", "m-1")
    post(client, body, headers)
    post(client, body, headers)
    post(client, body, {**headers, "X-Hub-Signature-256": "sha256=00"})
    post(client, b"{}", {**headers_for(b"{}", event="made_up_event", delivery="m-2")})
    text = admin.get("/metrics").text
    counts: dict[str, Any] = {}
    for line in text.splitlines():
        if line.startswith("cibot_webhook_deliveries_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels] = float(value)
    assert counts == {
        'cibot_webhook_deliveries_total{event="pull_request",outcome="enqueued"}': 1.0,
        'cibot_webhook_deliveries_total{event="pull_request",outcome="duplicate"}': 1.0,
        'cibot_webhook_deliveries_total{event="pull_request",outcome="unauthorized"}': 1.0,
        'cibot_webhook_deliveries_total{event="other",outcome="ignored"}': 1.0,
    }
    assert metric(admin, "cibot_webhook_ack_seconds_count") == 4
    assert metric(admin, 'cibot_webhook_ack_seconds_bucket{le="+Inf"}') == 4
    assert "# TYPE cibot_spool_depth gauge" in text


def test_the_request_path_costs_one_script_of_a_constant_five_redis_commands(
    client: httpx.Client, redis_url: str
) -> None:
    store = redis.Redis.from_url(redis_url)

    def commands() -> dict[str, int]:
        stats = store.info("commandstats")
        return {k: int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}

    post(client, *delivery("pull_request.opened", "warm-up"))  # loads the script once
    before = commands()
    for n in range(20):
        post(client, *delivery("pull_request.opened", f"count-{n}"))
    after = commands()
    spent = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    # One EVALSHA per delivery, running SET NX (the claim), LPUSH (the job) and the job's
    # outbox entry (HSET, ZADD), which lets a lost message be sent again (workers.outbox).
    assert spent == {
        "cmdstat_evalsha": 20,
        "cmdstat_set": 20,
        "cmdstat_lpush": 20,
        "cmdstat_hset": 20,
        "cmdstat_zadd": 20,
    }
    store.close()


# --- the admin listener: /metrics and /dashboard off the public path ----------------------------

ADMIN_TOKEN = "admin-token-for-tests-0123456789abcdef"


def test_the_public_listener_serves_only_the_webhook_and_healthz(
    client: httpx.Client, admin: httpx.Client
) -> None:
    assert client.get("/metrics").status_code == 404
    assert client.get("/dashboard").status_code == 404
    assert client.get("/healthz").status_code == 200
    assert admin.get("/metrics").status_code == 200  # from 127.0.0.1: no token needed
    assert admin.get("/webhook").status_code == 404
    assert admin.post("/webhook", content=b"{}").status_code == 404


def non_loopback_address() -> str | None:
    """Return an address of this host that is not a loopback one, if it has one."""
    import socket

    from bot.admin import is_loopback

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1; connect() on UDP sends nothing
        except OSError:
            return None
        address = str(probe.getsockname()[0])
    if is_loopback(address) or address == "0.0.0.0":
        return None
    try:  # the address must be bindable here (not a NAT artefact)
        with socket.socket() as sock:
            sock.bind((address, 0))
    except OSError:
        return None
    return address


def ledger_settings(redis_url: str, tmp_path: Path, *, token: str) -> Settings:
    """Return settings with a ledger file, so the dashboard can answer."""
    return Settings(
        webhook_secret=SECRET,
        redis_url=redis_url,
        spool_path=tmp_path / "spool.db",
        database_url=f"sqlite:///{tmp_path / 'ledger.db'}",
        admin_token=token,
    )


def test_a_non_loopback_client_gets_the_dashboard_only_with_the_token(
    redis_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A real uvicorn admin listener on this host's LAN address, asked from that address."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("this host has no non-loopback IPv4 address to bind the admin listener to")
    settings = ledger_settings(redis_url, tmp_path, token=ADMIN_TOKEN)
    edge = EdgeServer(settings, load_policy(), admin_host=address).start()
    transport = httpx.HTTPTransport(local_address=address)
    try:
        with (
            httpx.Client(base_url=edge.admin_url, transport=transport, timeout=30) as lan,
            caplog.at_level(logging.WARNING, logger="bot.admin"),
        ):
            refused = lan.get("/dashboard")
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Bearer")
            assert "CIBOT_ADMIN_TOKEN" in refused.json()["error"]
            assert "Cost per accepted PR" not in refused.text
            forged = {"X-Forwarded-For": "127.0.0.1", "X-Real-IP": "127.0.0.1"}
            assert lan.get("/dashboard", headers=forged).status_code == 401
            wrong = {"Authorization": "Bearer " + ADMIN_TOKEN[:-1] + "X"}
            assert lan.get("/metrics", headers=wrong).status_code == 401
            good = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            page = lan.get("/dashboard", headers=good)
            assert page.status_code == 200 and "Cost per accepted PR" in page.text
            assert "cibot_webhook_deliveries" in lan.get("/metrics", headers=good).text
        refusals = [r for r in caplog.records if r.getMessage() == "admin request refused"]
        assert [r.__dict__["client"] for r in refusals] == [address] * 3
        assert ADMIN_TOKEN not in " ".join(str(r.__dict__) for r in caplog.records)
    finally:
        edge.stop()


def test_without_a_token_the_admin_app_answers_loopback_clients_only(
    redis_url: str, tmp_path: Path
) -> None:
    """Through the real ASGI stack, with the client address a remote peer would have."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from bot.server import create_apps

    async def ask(client_host: str, token: str, headers: dict[str, str]) -> httpx.Response:
        intake = Intake(CeleryBroker(redis_url), Spool(tmp_path / "spool.db"))
        settings = ledger_settings(redis_url, tmp_path, token=token)
        apps = create_apps(settings, load_policy(), enqueue=intake)
        transport = httpx.ASGITransport(app=apps.admin, client=(client_host, 40000))
        try:
            async with httpx.AsyncClient(transport=transport, base_url="http://cibot") as http:
                return await http.get("/metrics", headers=headers)
        finally:
            intake.close()

    def run(client_host: str, token: str, headers: dict[str, str]) -> httpx.Response:
        # In a thread of its own: asyncio.run in the main thread would replace (and so
        # orphan) any event loop another test left as the main thread's current one.
        with ThreadPoolExecutor(max_workers=1) as pool:
            return pool.submit(asyncio.run, ask(client_host, token, headers)).result()

    bearer = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    remote = run("203.0.113.7", "", bearer)
    assert remote.status_code == 403
    assert "only loopback clients" in remote.json()["error"]
    assert run("::ffff:203.0.113.7", ADMIN_TOKEN, {}).status_code == 401
    assert run("203.0.113.7", ADMIN_TOKEN, bearer).status_code == 200
    assert run("::1", "", {}).status_code == 200
    assert run("::ffff:127.0.0.1", "", {}).status_code == 200


def test_cibot_serve_refuses_an_exposed_admin_listener_without_a_token(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CIBOT_")}
    env |= {"CIBOT_WEBHOOK_SECRET": SECRET, "CIBOT_ADMIN_HOST": "0.0.0.0"}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "serve", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert "CIBOT_ADMIN_HOST=0.0.0.0 is not a loopback address" in line
    assert "set CIBOT_ADMIN_TOKEN" in line


def test_cibot_serve_logs_one_json_object_per_line_with_the_delivery_fields(
    redis_url: str, tmp_path: Path
) -> None:
    """The real `cibot serve`: two listeners, and every line it prints is structured."""
    port, admin_port = free_port(), free_port()
    env = {"CIBOT_LOG_FORMAT": "json", "CIBOT_LOG_LEVEL": "info"}
    process = _serve(redis_url, tmp_path, port, {**env, "CIBOT_ADMIN_PORT": str(admin_port)})
    try:
        wait_for_port(admin_port, timeout=30)
        body, headers = delivery("pull_request.opened", "json-log-1")
        response = httpx.post(
            f"http://127.0.0.1:{port}/webhook", content=body, headers=headers, timeout=10
        )
        assert response.status_code == 202
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).status_code == 404
        scraped = httpx.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10)
        assert 'cibot_webhook_deliveries_total{event="pull_request",outcome="enqueued"} 1.0' in (
            scraped.text
        )
    finally:
        _shutdown(process)
    assert process.returncode == 0
    lines = (tmp_path / "serve.log").read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line: one JSON object
    (answered,) = [r for r in records if r["event"] == "delivery answered"]
    assert answered["delivery_id"] == "json-log-1"
    assert answered["installation_id"] == 2311213
    assert (answered["task"], answered["status"], answered["outcome"]) == (
        "summary",
        202,
        "enqueued",
    )
    assert answered["level"] == "info" and answered["logger"] == "bot.server"
    for record in records:
        assert {"timestamp", "level", "event", "delivery_id", "task", "tier"} <= record.keys()
    assert SECRET not in "\n".join(lines)
