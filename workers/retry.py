"""Wait and retry one way everywhere: one backoff formula and one in-process retry loop.

GitHub calls (``workers.github.RetryPolicy``), Celery task retries (``workers.tasks``) and
the Actions mode's pipeline steps (``workers.inline``) all wait ``Backoff.delay``: an
exponential delay with equal jitter (half fixed, half random, so retries spread out but
never come back at once), capped, unless the error says how long to wait (a
``retry_after``, as ``RateLimited`` carries GitHub's Retry-After or rate-limit reset).
Celery schedules its retries as countdowns; the other two loop in ``retrying``.
https://aws.amazon.com/blogs/architecture/exponential-backoff-and-jitter/
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

# Return the seconds to wait after failed attempt ``attempt`` (1 for the first call), or
# None to re-raise the error; it may also raise an error of its own (a translated one).
Pause = Callable[[Exception, int], float | None]


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Wait exponentially longer after each failure, up to ``cap``, or as long as asked."""

    base: float = 1.0
    cap: float = 30.0
    attempts: int = 4  # calls in all, the first one included
    jitter: Callable[[], float] = random.random

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Return the wait after failed attempt ``attempt``: the hint if any, else backoff."""
        if retry_after is not None and retry_after > 0:
            return min(retry_after, self.cap)
        ceiling = min(self.cap, self.base * 2.0 ** (attempt - 1))
        return ceiling / 2 + self.jitter() * ceiling / 2

    def pause(self, error: Exception, attempt: int) -> float | None:
        """Return the wait before the next attempt, or None once every attempt is spent."""
        if attempt >= self.attempts:
            return None
        return self.delay(attempt, retry_after(error))


def retry_after(error: BaseException | None) -> float | None:
    """Return how long an error asks us to wait (``RateLimited.retry_after``), if it does."""
    hint = getattr(error, "retry_after", None)
    return float(hint) if isinstance(hint, int | float) else None


def retrying(
    call: Callable[[], T],
    *,
    on: tuple[type[Exception], ...],
    pause: Pause,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Return what ``call`` returns, calling again after each error of a type in ``on``.

    ``pause(error, attempt)`` says how long to wait first; when it answers None the error
    is raised.
    """
    attempt = 1
    while True:
        try:
            return call()
        except on as exc:
            wait = pause(exc, attempt)
            if wait is None:
                raise
        sleep(wait)
        attempt += 1
