"""Record App installations and changes to the repositories they cover."""

from __future__ import annotations

from bot.events import Context, Router, installation_of
from bot.kernel.jobs import JobRef
from bot.webhooks import Event

router = Router()


def _record(event: Event) -> list[JobRef]:
    """Build one ``installation`` job; repo is empty because the event spans repos."""
    return [
        JobRef(
            task="installation",
            installation_id=installation_of(event),
            repo="",
            delivery_id=event.delivery_id,
            args={
                "event": event.name,
                "action": event.action,
                "account": event.str_at("installation.account.login"),
                "added": len(event.list_at("repositories_added")),
                "removed": len(event.list_at("repositories_removed")),
            },
        )
    ]


@router.register("installation")
def on_installation(event: Event, ctx: Context) -> list[JobRef]:
    """Record an installation being created, deleted, suspended or re-permissioned."""
    return _record(event)


@router.register("installation_repositories")
def on_repositories(event: Event, ctx: Context) -> list[JobRef]:
    """Record repositories being added to or removed from an installation."""
    return _record(event)
