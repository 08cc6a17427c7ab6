"""Route PR comments that carry a ``/cibot`` or ``@cibot`` command to a command job.

The edge only parses the command and drops comments by bots (cibot included, so the
bot can never trigger itself). The 👀 reaction, the permission check and the reply
happen in the worker (workers/jobs/command.py): no GitHub call in the request path.
"""

from __future__ import annotations

from bot.events import Context, Router, installation_of, is_bot
from bot.kernel import commands
from bot.kernel.jobs import JobRef
from bot.webhooks import Event

router = Router()


@router.register("issue_comment", action="created")
def on_comment(event: Event, ctx: Context) -> list[JobRef]:
    """Turn a command in a new PR comment into a ``command`` job."""
    if event.get("issue.pull_request", None) is None:
        return []  # a comment on a plain issue, not on a PR
    if is_bot(event.get("comment.user", None), bot_login=ctx.bot_login):
        return []
    command = commands.parse(event.str_at("comment.body"))
    if command is None:
        return []
    return [
        JobRef(
            task="command",
            installation_id=installation_of(event),
            repo=event.str_at("repository.full_name"),
            delivery_id=event.delivery_id,
            pr_number=event.int_at("issue.number"),
            args={
                "command": command.name,
                "argv": command.argv,
                "comment_id": event.int_at("comment.id"),
                "author": event.str_at("comment.user.login"),
            },
        )
    ]
