"""Share fixtures: a private Redis per test session, a PostgreSQL URL, and a clean env."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.services import RedisServer, redis_binary

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

POSTGRES_URL = os.environ.get(
    "CIBOT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
# CI sets this: there the integration and fault tests must run, so a missing Redis or
# PostgreSQL fails the run instead of skipping its tests.
REQUIRE_SERVICES = os.environ.get("CIBOT_TEST_REQUIRE_SERVICES", "") not in ("", "0")


def unavailable(reason: str) -> None:
    """Skip a test whose service is missing, saying why; fail instead where CI requires it."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason} (CIBOT_TEST_REQUIRE_SERVICES is set: CI needs this service)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Run one private redis-server for the session; tests may stop and restart it."""
    binary = redis_binary()
    if binary is None:
        unavailable("redis-server is not installed: apt-get install redis-server to run this test")
    server = RedisServer(binary=binary)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """Give a test an empty Redis database on the private server."""
    import redis

    if redis_server.process is None:
        redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """Return the PostgreSQL URL, or skip with the reason when the server is not there."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(POSTGRES_URL)
    try:
        with engine.connect():
            pass
    except Exception as exc:
        unavailable(
            f"PostgreSQL at {POSTGRES_URL} is not reachable ({type(exc).__name__}); "
            "set CIBOT_TEST_POSTGRES_URL to run the PostgreSQL tests"
        )
    finally:
        engine.dispose()
    return POSTGRES_URL
