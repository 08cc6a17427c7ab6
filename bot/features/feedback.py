"""Route human reactions to the bot's review comments to ledger feedback jobs.

GitHub sends no webhook for emoji reactions, so 👍/👎 on bot comments are read by the
worker through the reactions API (GitHubClient.comment_reactions) when it settles a
PR's outcome; what arrives here are replies in review threads and thread resolutions.
"""

from __future__ import annotations

from bot.events import Context, Router, installation_of, is_bot
from bot.webhooks import Event
from workers.job import JobRef

router = Router()


def _feedback(event: Event, *, kind: str, comment_id: int, content: str) -> JobRef:
    """Build a feedback job for the event's PR."""
    return JobRef(
        task="feedback",
        installation_id=installation_of(event),
        repo=event.str_at("repository.full_name"),
        delivery_id=event.delivery_id,
        pr_number=event.int_at("pull_request.number"),
        head_sha=event.str_at("pull_request.head.sha"),
        args={"kind": kind, "comment_id": comment_id, "content": content},
    )


@router.register("pull_request_review_comment", action="created")
def on_review_comment(event: Event, ctx: Context) -> list[JobRef]:
    """Record a human reply in a review thread; the ledger keeps those on bot threads."""
    if is_bot(event.get("comment.user", None), bot_login=ctx.bot_login):
        return []
    reply_to = event.get("comment.in_reply_to_id", None)
    if not isinstance(reply_to, int) or isinstance(reply_to, bool):
        return []  # a new thread by a human is not feedback on the bot
    return [_feedback(event, kind="reply", comment_id=reply_to, content="created")]


@router.register("pull_request_review_thread", action="resolved")
@router.register("pull_request_review_thread", action="unresolved")
def on_thread(event: Event, ctx: Context) -> list[JobRef]:
    """Record a resolved or reopened review thread, keyed by its first comment."""
    comments = event.list_at("thread.comments")
    first = comments[0] if comments else None
    comment_id = first.get("id") if isinstance(first, dict) else None
    if not isinstance(comment_id, int) or isinstance(comment_id, bool):
        return []
    return [_feedback(event, kind="thread", comment_id=comment_id, content=event.action)]
