"""Route pull_request events: summaries, auto-review, debounced refreshes and outcomes."""

from __future__ import annotations

import re

from bot.events import Context, Router, installation_of, is_bot
from bot.kernel.jobs import SUPERSEDE, JobRef
from bot.webhooks import Event

router = Router()

# The branch the tests job pushes generated tests to (workers.jobs.tests.BRANCH); a PR
# opened from it, once closed, says whether those tests were taken.
TESTS_BRANCH = re.compile(r"cibot/tests/(?P<pr>[1-9][0-9]{0,17})")


def _pull_job(event: Event, task: str, **args: str | int | bool) -> JobRef:
    """Build a job for the event's PR at its current head SHA."""
    return JobRef(
        task=task,
        installation_id=installation_of(event),
        repo=event.str_at("repository.full_name"),
        delivery_id=event.delivery_id,
        pr_number=event.int_at("pull_request.number"),
        head_sha=event.str_at("pull_request.head.sha"),
        args=dict(args),
    )


def skipped(event: Event, ctx: Context) -> bool:
    """Return whether policy says to leave this PR alone (a draft, or opened by a bot)."""
    behaviour = ctx.policy.behaviour
    if behaviour.skip_drafts and event.bool_at("pull_request.draft"):
        return True
    author = event.get("pull_request.user", None)
    return behaviour.skip_bots and is_bot(author, bot_login=ctx.bot_login)


@router.register("pull_request", action="opened")
@router.register("pull_request", action="reopened")
@router.register("pull_request", action="ready_for_review")
def on_opened(event: Event, ctx: Context) -> list[JobRef]:
    """Summarise a PR that is ready to look at, and review it when auto-review is on."""
    if skipped(event, ctx):
        return []
    jobs = [_pull_job(event, "summary")]
    if ctx.policy.review.auto and ctx.policy.tasks["review"].enabled:
        jobs.append(_pull_job(event, "review"))
    return jobs


@router.register("pull_request", action="synchronize")
def on_synchronize(event: Event, ctx: Context) -> list[JobRef]:
    """Refresh the summary after a push; the job is debounced per PR (see SUPERSEDE)."""
    if skipped(event, ctx):
        return []
    return [_pull_job(event, "summary", **{SUPERSEDE: True})]


@router.register("pull_request", action="closed")
def on_closed(event: Event, ctx: Context) -> list[JobRef]:
    """Record the PR's outcome (merged or not) for the ledger's cost per accepted PR.

    A PR from the bot's generated-tests branch also names the PR those tests were for.
    """
    merged = event.bool_at("pull_request.merged")
    tests_for = tests_branch_pr(event)
    extra = {"tests_for": tests_for} if tests_for is not None else {}
    return [_pull_job(event, "outcome", merged=merged, **extra)]


def tests_branch_pr(event: Event) -> int | None:
    """Return the PR number a closed PR's tests branch was written for, if it is one.

    Only a branch of the same repository counts: a fork can name a branch anything.
    """
    found = TESTS_BRANCH.fullmatch(event.str_at("pull_request.head.ref"))
    head_repo = event.get("pull_request.head.repo", None)
    same = isinstance(head_repo, dict) and head_repo.get("full_name") == event.str_at(
        "repository.full_name"
    )
    return int(found["pr"]) if found and same else None
