"""Check the Redis budget: atomic reservations, settlement, calendar months and outages."""

from __future__ import annotations

import concurrent.futures
from datetime import UTC, datetime, timedelta

import pytest
import redis

from bot.kernel.errors import BudgetExhausted
from tests.services import free_port
from workers.budget import GRACE, Budget, expiry_after_month, month_of, to_micro

JAN_31_LATE = datetime(2025, 1, 31, 23, 59, 30, tzinfo=UTC).timestamp()
FEB_1_EARLY = datetime(2025, 2, 1, 0, 0, 30, tzinfo=UTC).timestamp()
DEC_15 = datetime(2025, 12, 15, 12, tzinfo=UTC).timestamp()


def test_reserve_within_limit_adds_and_beyond_limit_refuses(redis_url):
    budget = Budget(redis_url)
    assert budget.reserve(7, 3.0, 5.0)
    assert budget.reserve(7, 2.0, 5.0)  # exactly at the limit is allowed
    assert not budget.reserve(7, 0.01, 5.0)
    assert budget.spent(7) == pytest.approx(5.0)
    assert budget.spent(8) == 0.0  # installations do not share a counter


def test_concurrent_reservations_never_overshoot(redis_url):
    budget = Budget(redis_url)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda _: budget.reserve(1, 1.0, 20.0), range(60)))
    assert results.count(True) == 20
    assert budget.spent(1) == pytest.approx(20.0)


def test_settle_replaces_the_reservation_with_the_actual_cost(redis_url):
    budget = Budget(redis_url)
    assert budget.reserve(3, 1.0, 10.0)
    budget.settle(3, 1.0, 0.25)
    assert budget.spent(3) == pytest.approx(0.25)
    budget.settle(3, 0.0, 0.5)  # an over-run is added
    assert budget.spent(3) == pytest.approx(0.75)
    budget.settle(3, 5.0, 0.0)  # never below zero
    assert budget.spent(3) == 0.0


def test_counter_is_per_utc_month_and_expires_after_it(redis_url):
    # Redis expires keys on its own clock, so the fake clock sits at the end of this month.
    real = datetime.now(UTC)
    next_month = (real.replace(day=1) + timedelta(days=32)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    now = [next_month.timestamp() - 30]
    budget = Budget(redis_url, clock=lambda: now[0])
    assert budget.reserve(5, 4.0, 4.0)
    assert budget.key(5).endswith(f":5:{real:%Y-%m}")
    ttl = redis.Redis.from_url(redis_url).ttl(budget.key(5))
    assert next_month.timestamp() - real.timestamp() < ttl <= GRACE.total_seconds() + 32 * 86400
    now[0] = next_month.timestamp() + 30
    assert budget.key(5).endswith(f":5:{next_month:%Y-%m}")
    assert budget.spent(5) == 0.0  # a new month starts from zero
    assert budget.reserve(5, 4.0, 4.0)


def test_month_helpers():
    assert month_of(JAN_31_LATE) == "2025-01" and month_of(FEB_1_EARLY) == "2025-02"
    assert datetime.fromtimestamp(expiry_after_month(DEC_15), tz=UTC).year == 2026
    assert expiry_after_month(JAN_31_LATE) > datetime(2025, 2, 1, tzinfo=UTC).timestamp()
    assert to_micro(0.0000001) == 1 and to_micro(-3) == 0 and to_micro(1.5) == 1_500_000


def test_unreachable_redis_refuses_spend_with_a_clear_error():
    budget = Budget(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BudgetExhausted, match="CIBOT_REDIS_URL"):
        budget.reserve(1, 1.0, 10.0)
    with pytest.raises(BudgetExhausted):
        budget.settle(1, 1.0, 0.5)


def test_budget_survives_a_redis_restart(redis_server, redis_url):
    budget = Budget(redis_url)
    assert budget.reserve(9, 1.0, 10.0)
    redis_server.stop()
    try:
        with pytest.raises(BudgetExhausted):
            budget.reserve(9, 1.0, 10.0)
    finally:
        redis_server.start()
    assert budget.reserve(9, 1.0, 10.0)  # reconnects; the counter restarted empty
    assert budget.spent(9) == pytest.approx(1.0)
