"""Record edge events in the ledger: PR outcomes, feedback on bot results, installations.

``workers.pipeline.dispatch`` calls ``handle(ref, rt)`` for these edge tasks.
Every write is keyed (delivery id, or comment and reaction), so a redelivery counts once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

from bot.errors import GitHubNotFound, GitHubPermission
from workers.job import JobRef
from workers.pipeline import Runtime, log_fields

log = logging.getLogger("cibot.bookkeeping")

# installation event action → the installation's state afterwards
INSTALLATION_STATES = {
    "created": "active",
    "deleted": "deleted",
    "suspend": "suspended",
    "unsuspend": "active",
    "new_permissions_accepted": "active",
}
# review-thread feedback (kind, content) → acceptance value
THREAD_VALUES = {("thread", "resolved"): 1, ("thread", "unresolved"): -1, ("reply", "created"): 0}
VOTES = {"+1": 1, "-1": -1}


def handle(ref: JobRef, rt: Runtime) -> None:
    """Record one outcome, feedback or installation event."""
    HANDLERS[ref.task](ref, rt)


def outcome(ref: JobRef, rt: Runtime) -> None:
    """Record a PR merged or closed without merge, then settle 👍/👎 on the bot's comments."""
    if ref.pr_number is None:
        log.warning("outcome without a pull request", extra=log_fields(ref))
        return
    merged = bool(ref.args.get("merged")) or ref.args.get("outcome") == "merged"
    rt.ledger.record_outcome(
        installation_id=ref.installation_id,
        repo=ref.repo,
        pr_number=ref.pr_number,
        outcome="merged" if merged else "closed",
        delivery_id=ref.delivery_id,
    )
    settle_reactions(ref, rt)


def settle_reactions(ref: JobRef, rt: Runtime) -> None:
    """Read the 👍/👎 counts on each comment the bot posted on the PR into feedback rows.

    GitHub sends no webhook for reactions, so they are read once the PR is decided.
    """
    assert ref.pr_number is not None
    posted = rt.ledger.comments(repo=ref.repo, pr_number=ref.pr_number)
    if not posted:
        return
    with contextlib.closing(rt.github(ref.installation_id)) as github:
        for task, comment_id in posted:
            try:
                counts = github.comment_reactions(ref.repo, comment_id)
            except (GitHubNotFound, GitHubPermission):
                continue  # deleted, or not an issue comment: nothing to count
            for content, sign in VOTES.items():
                if counts.get(content):
                    rt.ledger.record_feedback(
                        key=f"reaction:{comment_id}:{content}",
                        installation_id=ref.installation_id,
                        repo=ref.repo,
                        pr_number=ref.pr_number,
                        task=task,
                        comment_id=comment_id,
                        signal="reaction",
                        value=sign * int(counts[content]),
                    )


def feedback(ref: JobRef, rt: Runtime) -> None:
    """Record a reply in, or a resolution of, a review thread the bot started."""
    kind, content = str(ref.args.get("kind", "")), str(ref.args.get("content", ""))
    comment_id = ref.args.get("comment_id")
    if (kind, content) not in THREAD_VALUES or not isinstance(comment_id, int):
        log.warning("feedback event not understood", extra=log_fields(ref, kind=kind))
        return
    rt.ledger.record_feedback(
        key=f"delivery:{ref.delivery_id}",
        installation_id=ref.installation_id,
        repo=ref.repo,
        pr_number=ref.pr_number,
        signal=f"{kind}_{content}",
        value=THREAD_VALUES[(kind, content)],
        comment_id=comment_id,
    )


def installation(ref: JobRef, rt: Runtime) -> None:
    """Record an installation's new state (repository changes keep it active)."""
    action = str(ref.args.get("action", ""))
    rt.ledger.record_installation(
        installation_id=ref.installation_id,
        status=INSTALLATION_STATES.get(action, "active"),
        account=str(ref.args.get("account", "")),
    )


HANDLERS: dict[str, Callable[[JobRef, Runtime], None]] = {
    "outcome": outcome,
    "feedback": feedback,
    "installation": installation,
}
