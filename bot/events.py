"""Map webhook events to jobs through per-feature routers with a decorator registry.

Each feature module owns a ``Router`` and registers handlers on it; the server
composes them with ``Router(pulls.router, checks.router, ...)``. Every handler has
the same shape, ``handler(event, ctx) -> list[JobRef]``, and is pure: it reads the
payload and the policy, and never calls GitHub, Redis or a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from bot.kernel.errors import PayloadError
from bot.kernel.jobs import JobRef
from bot.webhooks import Event
from policies.model import Policy

Handler = Callable[[Event, "Context"], list[JobRef]]


@dataclass(frozen=True, kw_only=True)
class Context:
    """Carry what handlers may consult besides the event: the policy and who the bot is."""

    policy: Policy
    bot_login: str = "cibot[bot]"


class Router:
    """Hold handlers keyed by event name and optional action; compose other routers."""

    def __init__(self, *others: Router) -> None:
        """Start empty, or merge the handlers of ``others`` in order."""
        self._table: dict[tuple[str, str | None], list[Handler]] = {}
        for other in others:
            for key, handlers in other._table.items():
                self._table.setdefault(key, []).extend(handlers)

    def register(self, event: str, *, action: str | None = None) -> Callable[[Handler], Handler]:
        """Register the decorated handler for ``event`` (and ``action``, if given)."""

        def decorator(handler: Handler) -> Handler:
            self._table.setdefault((event, action), []).append(handler)
            return handler

        return decorator

    def handlers(self, event: str, action: str) -> Iterator[Handler]:
        """Yield the handlers for an event: the action-specific ones, then the catch-alls."""
        yield from self._table.get((event, action), ())
        yield from self._table.get((event, None), ())

    def handles(self, event: str) -> bool:
        """Return whether any handler is registered for the event name."""
        return any(name == event for name, _ in self._table)

    def dispatch(self, event: Event, ctx: Context) -> list[JobRef]:
        """Run every matching handler and return all the jobs they produced."""
        jobs: list[JobRef] = []
        for handler in self.handlers(event.name, event.action):
            jobs.extend(handler(event, ctx))
        return jobs

    def routes(self) -> Mapping[tuple[str, str | None], int]:
        """Return how many handlers each (event, action) has, for docs and tests."""
        return {key: len(handlers) for key, handlers in self._table.items()}


def is_bot(user: object, *, bot_login: str) -> bool:
    """Return whether a payload ``user`` object is a bot, cibot itself included."""
    if not isinstance(user, Mapping):
        return False
    login = user.get("login")
    login = login if isinstance(login, str) else ""
    return (
        user.get("type") == "Bot" or login.endswith("[bot]") or login.lower() == bot_login.lower()
    )


def is_self(user: object, *, bot_login: str) -> bool:
    """Return whether a payload ``user`` object is cibot itself, not any other bot."""
    login = user.get("login") if isinstance(user, Mapping) else None
    return isinstance(login, str) and login.lower() == bot_login.lower()


def installation_of(event: Event) -> int:
    """Return the event's installation id, or raise PayloadError when it has none."""
    installation_id = event.installation_id
    if installation_id is None:
        raise PayloadError(f"{event.name} payload lacks 'installation.id'")
    return installation_id
