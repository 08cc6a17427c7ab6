"""Route failed CI runs on a PR's head commit to the CI-failure explanation task."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from bot.events import Context, Router, installation_of
from bot.kernel.jobs import JobRef
from bot.webhooks import MAX_ID, Event

router = Router()

FAILED = "failure"
# GitHub Actions reports each workflow run twice: as a workflow_run and as the check
# suite of its own App. The workflow_run carries the run id, so it wins.
ACTIONS_APP_SLUG = "github-actions"


def _ci_jobs(event: Event, source: str, **args: str | int) -> list[JobRef]:
    """Return one ci job per PR whose head is the failed commit."""
    head_sha = event.str_at(f"{source}.head_sha")
    jobs = []
    for pull in event.list_at(f"{source}.pull_requests"):
        if not isinstance(pull, Mapping) or _head_sha(pull) != head_sha:
            continue
        number = pull.get("number")
        if not isinstance(number, int) or isinstance(number, bool) or not 0 < number <= MAX_ID:
            continue
        jobs.append(
            JobRef(
                task="ci",
                installation_id=installation_of(event),
                repo=event.str_at("repository.full_name"),
                delivery_id=event.delivery_id,
                pr_number=number,
                head_sha=head_sha,
                args=dict(args),
            )
        )
    return jobs


def _head_sha(pull: Mapping[str, Any]) -> str | None:
    """Return the head SHA of a PR entry in a run's ``pull_requests`` list."""
    head = pull.get("head")
    sha = head.get("sha") if isinstance(head, Mapping) else None
    return sha if isinstance(sha, str) else None


@router.register("workflow_run", action="completed")
def on_workflow_run(event: Event, ctx: Context) -> list[JobRef]:
    """Explain a failed workflow run on a PR's head."""
    if event.get("workflow_run.conclusion", None) != FAILED:
        return []
    return _ci_jobs(event, "workflow_run", run_id=event.int_at("workflow_run.id"))


@router.register("check_suite", action="completed")
def on_check_suite(event: Event, ctx: Context) -> list[JobRef]:
    """Explain a failed check suite from a third-party CI App on a PR's head."""
    if event.get("check_suite.conclusion", None) != FAILED:
        return []
    if event.get("check_suite.app.slug", None) == ACTIONS_APP_SLUG:
        return []
    return _ci_jobs(event, "check_suite", check_suite_id=event.int_at("check_suite.id"))
