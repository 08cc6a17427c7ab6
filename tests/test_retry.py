"""Test the one backoff formula and the one in-process retry loop."""

from __future__ import annotations

import pytest

from bot.kernel.errors import GitHubTransient, RateLimited
from workers.retry import Backoff, retry_after, retrying


def test_the_delay_doubles_with_equal_jitter_up_to_the_cap() -> None:
    """Half of each wait is fixed and half random; the ceiling doubles, then stops at the cap."""
    low = Backoff(base=1.0, cap=5.0, jitter=lambda: 0.0)
    high = Backoff(base=1.0, cap=5.0, jitter=lambda: 1.0)
    assert [low.delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 2.5, 2.5]
    assert [high.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_a_retry_after_hint_is_honoured_up_to_the_cap() -> None:
    """An error that says how long to wait is waited for exactly, never beyond the cap."""
    backoff = Backoff(base=1.0, cap=60.0, jitter=lambda: 0.0)
    assert backoff.delay(1, retry_after=42.0) == 42.0
    assert backoff.delay(1, retry_after=600.0) == 60.0
    assert backoff.delay(3, retry_after=0.0) == 2.0  # no real hint: the backoff
    assert retry_after(RateLimited("slow down", retry_after=7)) == 7.0
    assert retry_after(GitHubTransient("502")) is None
    assert retry_after(None) is None


def test_pause_gives_up_once_every_attempt_is_spent() -> None:
    """Three attempts in all: two waits, then None."""
    backoff = Backoff(base=1.0, cap=10.0, attempts=3, jitter=lambda: 0.0)
    error = GitHubTransient("502")
    assert [backoff.pause(error, n) for n in (1, 2, 3)] == [0.5, 1.0, None]


def test_retrying_calls_again_after_each_listed_error() -> None:
    """Listed errors are retried after the pause asked for; the result is returned."""
    answers: list[Exception | str] = [GitHubTransient("502"), GitHubTransient("503"), "ok"]
    slept: list[float] = []

    def call() -> str:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    result = retrying(
        call, on=(GitHubTransient,), pause=lambda _e, attempt: attempt * 10.0, sleep=slept.append
    )
    assert result == "ok"
    assert slept == [10.0, 20.0]


def test_retrying_raises_when_the_pause_gives_up_or_the_error_is_not_listed() -> None:
    """None from the pause re-raises the error; an unlisted error is never retried."""
    slept: list[float] = []
    calls: list[int] = []

    def failing() -> None:
        calls.append(1)
        raise GitHubTransient("502")

    give_up = Backoff(base=1.0, cap=1.0, attempts=2, jitter=lambda: 0.0)
    with pytest.raises(GitHubTransient):
        retrying(failing, on=(GitHubTransient,), pause=give_up.pause, sleep=slept.append)
    assert (len(calls), slept) == (2, [0.5])
    with pytest.raises(GitHubTransient):
        retrying(failing, on=(RateLimited,), pause=give_up.pause, sleep=slept.append)
    assert (len(calls), slept) == (3, [0.5])
