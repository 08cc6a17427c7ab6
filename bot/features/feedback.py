"""Route what people do with the bot's results to ledger feedback jobs.

Three events carry acceptance: a human reply in a review thread the bot started, a
review thread resolved or reopened, and a human edit of one of the bot's comments.
GitHub sends no webhook for emoji reactions, and a suggestion applied shows only in
a later commit, so the worker reads those when it settles a PR's outcome
(workers.jobs.bookkeeping). Whose comment a reply or thread belongs to is checked
there too: these handlers only read the payload.
"""

from __future__ import annotations

from collections.abc import Mapping

from bot.events import Context, Router, installation_of, is_bot, is_self
from bot.kernel import commands
from bot.kernel.errors import PayloadError
from bot.kernel.jobs import MAX_ID, JobRef
from bot.webhooks import Event

router = Router()


def _feedback(
    event: Event, *, kind: str, comment_id: int, content: str, pull: str = "pull_request"
) -> JobRef:
    """Build a feedback job for the PR at ``pull`` (the issue of a PR comment)."""
    head = event.get(f"{pull}.head.sha", "")
    return JobRef(
        task="feedback",
        installation_id=installation_of(event),
        repo=event.str_at("repository.full_name"),
        delivery_id=event.delivery_id,
        pr_number=event.int_at(f"{pull}.number"),
        head_sha=head if isinstance(head, str) else "",
        args={"kind": kind, "comment_id": comment_id, "content": content},
    )


def _id(event: Event, value: object, where: str) -> int | None:
    """Return an optional payload id: None when absent, PayloadError when not a GitHub id."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_ID:
        raise PayloadError(f"{event.name} payload field '{where}' must be a positive id")
    return value


@router.register("pull_request_review_comment", action="created")
def on_review_comment(event: Event, ctx: Context) -> list[JobRef]:
    """Record a human reply in a review thread; a reply that is a command is not feedback."""
    if is_bot(event.get("comment.user", None), bot_login=ctx.bot_login):
        return []
    reply_to = _id(event, event.get("comment.in_reply_to_id", None), "comment.in_reply_to_id")
    if reply_to is None:
        return []  # a new thread by a human is not feedback on the bot
    if commands.parse(event.str_at("comment.body")) is not None:
        return []
    return [_feedback(event, kind="reply", comment_id=reply_to, content="created")]


@router.register("pull_request_review_thread", action="resolved")
@router.register("pull_request_review_thread", action="unresolved")
def on_thread(event: Event, ctx: Context) -> list[JobRef]:
    """Record a resolved or reopened review thread, keyed by its first comment."""
    if not isinstance(event.get("thread"), Mapping):
        raise PayloadError(f"{event.name} payload field 'thread' must be an object")
    comments = event.list_at("thread.comments")
    first = comments[0] if comments else None
    if first is None:
        return []
    if not isinstance(first, Mapping):
        raise PayloadError(f"{event.name} payload field 'thread.comments' must hold objects")
    comment_id = _id(event, first.get("id"), "thread.comments[0].id")
    if comment_id is None:
        raise PayloadError(f"{event.name} payload lacks 'thread.comments[0].id'")
    return [_feedback(event, kind="thread", comment_id=comment_id, content=event.action)]


@router.register("issue_comment", action="edited")
def on_comment_edited(event: Event, ctx: Context) -> list[JobRef]:
    """Record a person editing one of the bot's comments on a PR (they cared to fix it)."""
    if event.get("issue.pull_request", None) is None:
        return []  # a comment on a plain issue, not on a PR
    if not is_self(event.get("comment.user"), bot_login=ctx.bot_login):
        return []
    if is_bot(event.get("sender"), bot_login=ctx.bot_login):
        return []  # the bot refreshing its own comment, or another bot
    comment_id = event.int_at("comment.id")
    return [_feedback(event, kind="edited", comment_id=comment_id, content="edited", pull="issue")]
