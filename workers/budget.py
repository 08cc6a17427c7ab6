"""Track each installation's month-to-date external-model spend in Redis, atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from bot.kernel.errors import BudgetExhausted

log = logging.getLogger("cibot.budget")

MICRO = 1_000_000  # spend is kept in integer micro-dollars so INCRBY never drifts
GRACE = timedelta(days=40)  # keep last month's figure readable well into this month

# KEYS[1] = the month's counter; ARGV = estimate, limit (both micro-USD), expire-at (epoch s).
# One script so the check and the add cannot interleave with another worker's.
_RESERVE = """
local spent = tonumber(redis.call('GET', KEYS[1]) or '0')
local want = tonumber(ARGV[1])
if spent + want > tonumber(ARGV[2]) then
  return 0
end
redis.call('INCRBY', KEYS[1], want)
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] = the month's counter; ARGV = delta (micro-USD), expire-at. Never goes below zero.
_SETTLE = """
local after = redis.call('INCRBY', KEYS[1], ARGV[1])
if after < 0 then
  redis.call('SET', KEYS[1], 0)
end
redis.call('EXPIREAT', KEYS[1], ARGV[2])
return after
"""


def month_of(now: float) -> str:
    """Return the UTC calendar month of a timestamp as ``YYYY-MM``."""
    return datetime.fromtimestamp(now, tz=UTC).strftime("%Y-%m")


def expiry_after_month(now: float) -> int:
    """Return the epoch second at which this month's counter may be dropped."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    first_next = (moment.replace(day=1) + timedelta(days=32)).replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    return int((first_next + GRACE).timestamp())


def to_micro(usd: float) -> int:
    """Round dollars up to whole micro-dollars (never under-count spend)."""
    return max(0, -int(-usd * MICRO // 1))


class Budget:
    """Reserve, settle and read an installation's month-to-date external spend."""

    def __init__(
        self, redis_url: str, *, clock: Callable[[], float] = time.time, prefix: str = "cibot"
    ) -> None:
        """Connect lazily to ``redis_url``; ``clock`` gives the month (UTC)."""
        self._redis: Any = redis.Redis.from_url(
            redis_url, socket_timeout=5, socket_connect_timeout=5
        )
        self._clock = clock
        self._prefix = prefix
        self._reserve = self._redis.register_script(_RESERVE)
        self._settle = self._redis.register_script(_SETTLE)

    def key(self, installation_id: int) -> str:
        """Return the Redis key of this installation's counter for the current month."""
        return f"{self._prefix}:budget:{installation_id}:{month_of(self._clock())}"

    def reserve(self, installation_id: int, usd: float, limit: float) -> bool:
        """Add ``usd`` to the month's spend if that keeps it within ``limit``; say whether it did.

        Raises BudgetExhausted when Redis cannot be reached: spend that cannot be
        checked is refused, so an outage never turns into an unbounded bill.
        """
        now = self._clock()
        args = [to_micro(usd), to_micro(limit), expiry_after_month(now)]
        ok = self._run(self._reserve, installation_id, args)
        return bool(ok)

    def settle(self, installation_id: int, reserved: float, actual: float) -> None:
        """Replace a reservation with the call's actual cost."""
        delta = to_micro(actual) - to_micro(reserved)
        if delta:
            self._run(self._settle, installation_id, [delta, expiry_after_month(self._clock())])

    def spent(self, installation_id: int) -> float:
        """Return the installation's month-to-date spend in dollars."""
        try:
            raw = self._redis.get(self.key(installation_id))
        except redis.RedisError as exc:
            raise _unreachable(exc, installation_id) from exc
        return int(raw or 0) / MICRO

    def close(self) -> None:
        """Close the Redis connections."""
        self._redis.close()

    def _run(self, script: Any, installation_id: int, args: list[int]) -> Any:
        """Run a Lua script on this installation's key, translating Redis failures."""
        try:
            return script(keys=[self.key(installation_id)], args=args)
        except redis.RedisError as exc:
            raise _unreachable(exc, installation_id) from exc


def _unreachable(exc: Exception, installation_id: int) -> BudgetExhausted:
    """Log and build the error for a budget store that cannot be reached."""
    log.warning(
        "budget store unreachable",
        extra={"installation_id": installation_id, "error": type(exc).__name__},
    )
    return BudgetExhausted(
        f"cannot check the frontier budget: Redis is unreachable ({type(exc).__name__}); "
        "external calls stay off until CIBOT_REDIS_URL answers again"
    )
