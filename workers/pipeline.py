"""Run cibot's jobs as plain functions, with no Celery imports.

A model job goes through the steps gather → route → pack → complete → validate →
escalate → publish → record, split over three queue hops so that each runs on the pool
sized for it:

- ``dispatch`` (github queue): drop a superseded job, gather and route, queue the job on
  its tier's queue (or post "needs a human"). Edge tasks (outcomes, feedback,
  installations, commands) go to their job module instead.
- ``run_job`` (tier queue): under a Redis ``SET NX`` lock on ``JobRef.key()``, gather and
  route again (only identifiers cross the queue), pack the prompt, complete it on the
  model tier with validation and escalation, record every call, and store the result.
- ``publish`` (github queue): upsert the result by its marker and close the job in the
  ledger, exactly once. A GitHub outage or rate limit is retried here without calling the
  model again.

A job is idempotent at every hop: a done marker, a stored result and the ledger's
exactly-once ``finish_job`` make a redelivered or retried message leave one result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

from bot.kernel import logsetup
from bot.kernel.errors import (
    CibotError,
    ConfigError,
    InputError,
    InvalidOutput,
    ModelError,
    ModelUnavailable,
    NothingToDo,
    PrivateTierDown,
    describe,
)
from bot.kernel.jobs import (
    EDGE_TASKS,
    GITHUB,
    MODEL_TASKS,
    PUBLISH,
    RUN_JOB,
    SUPERSEDE,
    JobRef,
)
from policies.loading import REPO_SOURCE
from policies.model import Policy, TaskPolicy
from policies.routing import Decision, route
from workers import capture, redaction, repo_config
from workers.jobs import bookkeeping, command
from workers.jobs.contract import (
    Gathered,
    GitHubPort,
    JobModule,
    ModelPort,
    ModelRequest,
    StaleGathered,
    dump,
    load,
    log_fields,
)
from workers.jobs.registry import job_for
from workers.ledger import FAILED, SUCCEEDED, JobResult, job_key
from workers.llm import CallRecord
from workers.queues import queue_for_tier
from workers.runtime import Runtime
from workers.shadow import ShadowGitHub, shadowed

log = logging.getLogger("cibot.pipeline")


# ---- text the bot posts --------------------------------------------------------------------

WAITING_TEMPLATE = """\
⏳ **cibot is waiting for the private model** to write the {task} for `{sha}`.
This pull request's data must stay on self-hosted models and none is answering right now.
Nothing was sent to an external model. cibot keeps retrying on its own until {until} UTC
and will replace this note with the {task}, or say that it gave up.
{marker}"""

HUMAN_TEMPLATE = """\
🧑‍💻 **This {task} needs a person.** cibot routed it to a human reviewer rather than a model.

{reasons}
{marker}"""

CONFIG_MARKER = "<!-- cibot:config -->"
CONFIG_TEMPLATE = """\
⚙️ **cibot ignored part of `{source}`** on the default branch:

{errors}

The operator's policy applies instead. Fix the file on the default branch to use it.
{marker}"""

NOTHING_TEMPLATE = """\
ℹ️ **Nothing for cibot to do here:** {reason}.
{marker}"""

FAILED_TEMPLATE = """\
⚠️ **cibot could not finish the {task}** for `{sha}`{walked}: {reason}.
{hint}
{marker}"""
WALKED = " (tried the {path} tiers)"
RETRY_HINT = "Comment `/cibot {task}` to try again."
PERSON_HINT = (
    "Every tier up to frontier was tried: comment `/cibot {task}` to try again, or "
    "`/cibot escalate human {task}` to hand it to a person."
)
# What a PR reader can do, by error (most specific first); the default is RETRY_HINT.
PR_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (
        InvalidOutput,
        "Comment `/cibot {task}` to try again, or `/cibot escalate frontier` for a stronger model.",
    ),
    (
        ModelUnavailable,
        "The model endpoints did not answer; comment `/cibot {task}` once they are back, or "
        "ask the bot's operator to check them.",
    ),
    (
        TimeoutError,
        "It ran out of time; comment `/cibot {task}` to try again, or ask the bot's operator "
        "for a longer limit.",
    ),
    (
        InputError,
        "Check the command's arguments (`/cibot help`) and try again.",
    ),
)


class StepOutcome(StrEnum):
    """Say what one pipeline step did."""

    QUEUED = "queued"  # dispatch queued the model job
    COMPUTED = "computed"  # run_job stored a result and asked for it to be published
    PUBLISHED = "published"
    RECORDED = "recorded"  # a bookkeeping or command job finished
    STALE = "stale"  # superseded by a newer head SHA: dropped
    DUPLICATE = "duplicate"  # already done: nothing to do
    BUSY = "busy"  # another worker holds the job: try again shortly
    IGNORED = "ignored"  # no job module, or the task is disabled


@dataclass
class Deadline:
    """Enforce a soft time limit between steps (thread pools cannot interrupt a task)."""

    seconds: float
    started: float = field(default_factory=time.monotonic)

    def check(self, step: str) -> None:
        """Raise TimeoutError when the limit has passed before ``step``."""
        if time.monotonic() - self.started > self.seconds:
            raise TimeoutError(f"the {self.seconds:.0f}s soft time limit passed before {step}")


def warm_up(policy: Policy) -> None:
    """Import the model client's libraries now and warn about API models with no price.

    A cold first import of litellm takes seconds; paying it while the worker starts keeps
    the first job inside its time limits.
    """
    from workers.llm import price_per_token

    for name, tier in policy.tiers.items():
        for model in tier.models:
            try:
                price_per_token(model, tier.price)
            except ConfigError as exc:
                if not tier.private:
                    log.warning(
                        "API model has no price",
                        extra={"tier": name, "model": model, "error": str(exc)},
                    )


# ---- small helpers --------------------------------------------------------------------------


def github_for(rt: Runtime, ref: JobRef, *, shadow: bool = False) -> ShadowGitHub:
    """Return the job's GitHub client, which swallows writes when the job is in shadow mode."""
    on = shadow or shadowed(rt.policy, installation_id=ref.installation_id, repo=ref.repo)
    return ShadowGitHub(rt.github(ref.installation_id), shadow=on)


def job_module(task: str) -> JobModule | None:
    """Return the job module for a task (``workers.jobs.registry``), or None."""
    return job_for(task)


def is_stale(ref: JobRef, rt: Runtime, job: JobModule) -> str | None:
    """Return the newer head SHA when a newer push supersedes this job, else None."""
    if not ref.head_sha or ref.pr_number is None:
        return None
    if not (ref.args.get(SUPERSEDE) or job.SUPERSEDABLE):
        return None
    newest = rt.state.newest_head(ref.repo, ref.pr_number)
    return newest if newest is not None and newest != ref.head_sha else None


def repo_policy(
    github: GitHubPort,
    repo: str,
    policy: Policy,
    *,
    ref: JobRef | None = None,
    rt: Runtime | None = None,
) -> Policy:
    """Merge the repo's ``.github/cibot.yml`` onto the policy; bad keys are logged, skipped.

    Given the job, a refused file (over a size or depth limit, a risky pattern, a bad key)
    is also explained on its PR, once per PR and file content: the operator's policy stays
    in force for whatever was refused.
    """
    merged, text = repo_config.read(github, repo, policy)
    if merged.errors and ref is not None and rt is not None and ref.pr_number is not None:
        _tell_config_errors(github, ref, rt, text, merged.errors)
    if isinstance(github, ShadowGitHub) and shadowed(
        merged.policy, installation_id=ref.installation_id if ref else 0, repo=repo
    ):
        github.shadow = True  # the repo's config turned shadow mode on for itself
    return merged.policy


def _tell_config_errors(
    github: GitHubPort, ref: JobRef, rt: Runtime, text: str, errors: Sequence[ConfigError]
) -> None:
    """Post what was refused in the repo's config on the PR, once per PR and file content."""
    digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
    once = f"config-note:{ref.repo}#{ref.pr_number}:{digest}"
    if not rt.state.first_note(once):
        return
    lines = "\n".join(f"- {str(error)[:300]}" for error in errors[:10])
    body = CONFIG_TEMPLATE.format(source=REPO_SOURCE, errors=lines, marker=CONFIG_MARKER)
    if not post_note(rt, ref, CONFIG_MARKER, body, github=github):
        rt.state.unnote(once)  # say it next time instead


def decide(ref: JobRef, gathered: Gathered, rt: Runtime) -> Decision:
    """Route the task, adding the ledger's acceptance history and the month's spend."""
    try:
        spent = rt.spent(ref.installation_id)
    except CibotError:
        spent = float("inf")  # a budget we cannot read counts as spent: stay private
    forced = ref.args.get("force_tier")
    evidence = dataclasses.replace(
        gathered.evidence,
        acceptance=rt.ledger.acceptance(installation_id=ref.installation_id),
        frontier_spend_usd=spent,
        force_tier=str(forced) if forced else gathered.evidence.force_tier,
    )
    return route(ref.task, evidence, gathered.policy)


def job_cost(calls: Sequence[Any]) -> float:
    """Sum a job's call costs (the model client prices private calls at the marginal rate)."""
    return sum(float(call.cost_usd) for call in calls)


# ---- dispatch -------------------------------------------------------------------------------


def dispatch(ref: JobRef, rt: Runtime) -> StepOutcome:
    """Handle one job from the edge: bookkeeping inline, model work onto its tier's queue."""
    if ref.task == "command":
        return _command(ref, rt)
    if ref.task in EDGE_TASKS:
        bookkeeping.handle(ref, rt)
        return StepOutcome.RECORDED
    return enqueue_model_job(ref, rt)


def _command(ref: JobRef, rt: Runtime) -> StepOutcome:
    """Run a comment command; queue the model jobs it asks for."""
    with contextlib.closing(github_for(rt, ref)) as github:
        merged, _ = repo_config.read(github, ref.repo, rt.policy)
        follow: list[JobRef] = command.handle_command(
            ref,
            gh=github,
            policy=rt.policy,
            merged=merged,
            ledger=rt.ledger,
            bot_login=rt.settings.bot_login,
        )
    for job in follow:
        enqueue_model_job(job, rt, policy=merged.policy)  # the config is read once
    return StepOutcome.RECORDED if not follow else StepOutcome.QUEUED


def enqueue_model_job(ref: JobRef, rt: Runtime, *, policy: Policy | None = None) -> StepOutcome:
    """Route a model job and queue it on its tier's queue (commands call this too).

    ``policy`` is the repo's merged policy when the caller has read it already.
    """
    job = job_module(ref.task) if ref.task in MODEL_TASKS else None
    tasks = cast(Mapping[str, TaskPolicy], rt.policy.tasks)
    if job is None or ref.task not in tasks or not tasks[ref.task].enabled:
        rt.ledger.drop_job(ref, reason=f"no enabled job for task {ref.task!r}")
        log.info("job ignored", extra=log_fields(ref))
        return StepOutcome.IGNORED
    if rt.state.dispatched(ref):
        return StepOutcome.DUPLICATE
    newer = is_stale(ref, rt, job)
    if newer:
        rt.ledger.drop_job(ref, reason=f"superseded by {newer[:12]}")
        log.info("stale job dropped", extra=log_fields(ref, newer=newer))
        return StepOutcome.STALE
    # The claim is atomic: of several copies of one job (a webhook redelivered under
    # fresh delivery ids), one gathers and routes; the others stop here.
    with rt.state.claim(ref, rt.lock_ttl_s) as claimed:
        if rt.state.dispatched(ref):
            return StepOutcome.DUPLICATE
        if not claimed:
            # Another copy is dispatching it, or an attempt that failed left its claim to
            # expire (say Redis went away before it could let go): look again shortly.
            return StepOutcome.BUSY
        outcome = _route_and_queue(ref, rt, job, policy)
        rt.state.mark_dispatched(ref)
    return outcome


def _route_and_queue(
    ref: JobRef, rt: Runtime, job: JobModule, policy: Policy | None
) -> StepOutcome:
    """Gather and route a claimed job, then queue it on its tier (or post "needs a human")."""
    with contextlib.closing(github_for(rt, ref)) as github:
        gathered = job.gather(
            github, ref, policy or repo_policy(github, ref.repo, rt.policy, ref=ref, rt=rt)
        )
        decision = decide(ref, gathered, rt)
        logsetup.bind(tier=decision.tier)
        if decision.tier == "human":
            return _publish_human(ref, rt, job, github, decision)
    rt.state.keep_gathered(ref, dump(gathered))  # run_job computes from this, not GitHub
    rt.ledger.queue_job(ref, tier=decision.tier)
    rt.send(RUN_JOB, ref, queue_for_tier(decision.tier, rt.policy))
    log.info("job queued", extra=log_fields(ref, decision.tier))
    return StepOutcome.QUEUED


def _publish_human(
    ref: JobRef, rt: Runtime, job: JobModule, github: ShadowGitHub, decision: Decision
) -> StepOutcome:
    """Tell the PR a person must do this one, and close the job on the human tier."""
    reasons = "\n".join(f"- `{r.trigger}`: {r.evidence}" for r in decision.reasons)
    body = HUMAN_TEMPLATE.format(task=ref.task, reasons=reasons, marker=job.MARKER)
    comment_id = github.upsert_comment(ref.repo, ref.pr(), marker=job.MARKER, body=body)
    rt.ledger.finish_job(ref, _result(github, tier="human", model="human", comment_id=comment_id))
    rt.state.mark_done(ref)
    return StepOutcome.PUBLISHED


def _result(
    github: ShadowGitHub, *, tier: str, model: str, comment_id: int | None, removed: int = 0
) -> JobResult:
    """Describe a published job: what the post scan removed, and in shadow mode what it
    would have posted (it posted nothing, so there is no comment to rate)."""
    return JobResult(
        status=SUCCEEDED,
        tier=tier,
        model=model,
        comment_id=None if github.shadow else comment_id,
        shadow=github.shadow,
        would_post=github.note(),
        post_removals=removed + sum(getattr(github, "removed", {}).values()),
    )


# ---- run_job --------------------------------------------------------------------------------


def run_job(ref: JobRef, rt: Runtime, *, deadline: Deadline) -> StepOutcome:
    """Compute a model job once, under its lock, and hand the result to ``publish``."""
    job = job_module(ref.task)
    if job is None:
        rt.ledger.drop_job(ref, reason=f"no job module for task {ref.task!r}")
        return StepOutcome.IGNORED
    if rt.state.done(ref):
        return StepOutcome.DUPLICATE
    with rt.state.lock(ref, rt.lock_ttl_s) as held:
        if not held:
            return StepOutcome.BUSY
        _settle_killed(ref, rt)
        if rt.state.done(ref):
            return StepOutcome.DUPLICATE
        if not rt.state.has_result(ref):
            newer = is_stale(ref, rt, job)
            if newer:
                rt.ledger.drop_job(ref, reason=f"superseded by {newer[:12]}")
                return StepOutcome.STALE
            if _compute(ref, rt, job, deadline) is StepOutcome.PUBLISHED:
                return StepOutcome.PUBLISHED
    rt.send(PUBLISH, ref, GITHUB)
    return StepOutcome.COMPUTED


def _compute(ref: JobRef, rt: Runtime, job: JobModule, deadline: Deadline) -> StepOutcome:
    """Route, pack, complete, validate and render what dispatch gathered; store the result."""
    calls: list[Any] = []
    attempt = uuid.uuid4().hex[:12]
    with contextlib.closing(github_for(rt, ref)) as github:
        gathered = _stored(ref, rt, job, github) or job.gather(
            github, ref, repo_policy(github, ref.repo, rt.policy, ref=ref, rt=rt)
        )
        decision = decide(ref, gathered, rt)
        logsetup.bind(tier=decision.tier)
        if decision.tier == "human":  # the evidence changed since dispatch routed it
            return _publish_human(ref, rt, job, github, decision)
        rt.ledger.start_job(
            ref,
            tier=decision.tier,
            private_only=decision.private_only,
            human_review=decision.human_review,
            worker=rt.worker,
            triggers=[r.trigger for r in decision.reasons],
        )
        deadline.check("the model call")
        trail = rt.state.journal(ref, attempt, calls)
        complete = capture.wrap(
            rt.capture,
            _completer(ref, decision, rt.model(trail)),
            ref=ref,
            gathered=gathered,
            private_only=decision.private_only,
        )
        try:
            completion = _complete_job(job, gathered, decision, complete)
        except PrivateTierDown as exc:
            _hold(ref, rt, job, github, exc)
            raise
        except ValueError as exc:
            raise InvalidOutput(f"the reply failed validation: {exc}") from exc
        finally:
            # Every call is recorded and priced, however the step ends: failed calls cost
            # money too, and the job's tier walk is read from them. (Keys make it once.)
            # Were this worker killed instead, the next attempt records the journal.
            _record_calls(ref, rt, calls, attempt)
            trail.close()
        shadow = github.shadow
    payload = _scrub_echoes(
        job.render(gathered, decision, completion, job_cost(completion.calls)), gathered
    )
    _store(ref, rt, payload, completion, shadow=shadow)
    return StepOutcome.COMPUTED


def _completer(ref: JobRef, decision: Decision, model: ModelPort) -> Callable[..., Any]:
    """Bind the job's ids and residency to the model client: complete(tier, request, reason)."""

    def complete(tier: str, request: ModelRequest, reason: str = "") -> Any:
        return model.complete(
            tier,
            request.messages,
            schema=request.schema,
            validate=request.validate,
            private_only=decision.private_only,
            installation_id=ref.installation_id,
            task=ref.task,
            delivery_id=ref.delivery_id,
            reason=reason or None,
        )

    return complete


def _stored(ref: JobRef, rt: Runtime, job: JobModule, github: ShadowGitHub) -> Gathered | None:
    """Return what dispatch gathered for the job, or None when it must be gathered again.

    It is gone once its day has passed (a job held that long for the private model), and
    unreadable when another version of cibot stored it; then run_job reads GitHub itself.
    """
    text = rt.state.gathered(ref)
    if text is None:
        return None
    try:
        gathered = load(text, job.STATE)
    except StaleGathered as exc:
        log.info("stored gathering not used", extra=log_fields(ref, error=str(exc)))
        return None
    if shadowed(gathered.policy, installation_id=ref.installation_id, repo=ref.repo):
        github.shadow = True  # the repo's config, merged at dispatch, turned shadow mode on
    gathered.reopen(github, ref)  # the tests job checks its head out again
    return gathered


def _complete_job(
    job: JobModule, gathered: Gathered, decision: Decision, complete: Callable[..., Any]
) -> Any:
    """Get a validated completion from the job's own ``compute`` (one request, or rounds)."""
    completion = job.compute(gathered, decision, complete)
    job.validate(gathered, completion.data)
    return completion


def _scrub_echoes(payload: dict[str, Any], gathered: Gathered) -> dict[str, Any]:
    """Take out of the post every secret the job's inputs hold, wherever the model echoed it.

    A private model sees the diff unredacted and may repeat a secret in its words, where no
    key or shape gives it away any more; the values found in the inputs find it anyway.
    The count joins the ledger's post_removals.
    """
    texts = gathered.texts()
    values = frozenset().union(*(redaction.secret_values(t) for t in texts if t))
    if not values:
        return payload
    removed = 0

    def clean(node: Any) -> Any:
        nonlocal removed
        if isinstance(node, str):
            text, count = redaction.scrub(node, values)
            removed += count
            return text
        if isinstance(node, dict):
            return {k: clean(v) for k, v in node.items()}
        if isinstance(node, list):
            return [clean(v) for v in node]
        return node

    cleaned = clean(payload)
    cleaned["removed"] = int(cleaned.get("removed", 0)) + removed
    return cast(dict[str, Any], cleaned)


def _store(
    ref: JobRef, rt: Runtime, payload: Mapping[str, Any], completion: Any, *, shadow: bool
) -> None:
    """Keep the rendered result for the publish step."""
    # The ledger counts fallbacks from the recorded calls, so only the result travels here.
    result = {
        "payload": payload,
        "tier": completion.tier,
        "model": completion.model,
        "shadow": shadow,
    }
    rt.state.keep_result(ref, result)
    logsetup.bind(tier=completion.tier)  # where a fallback took the job
    log.info(
        "job computed",
        extra=log_fields(
            ref, completion.tier, model=completion.model, fallbacks=completion.fallbacks
        ),
    )


def _record_calls(ref: JobRef, rt: Runtime, calls: Sequence[Any], attempt: str) -> None:
    """Write this attempt's model calls to the ledger (they cost money even if it failed)."""
    if calls:
        rt.ledger.record_calls(
            ref,
            calls,
            attempt=attempt,
            private_tiers=frozenset(rt.policy.private_tiers()),
        )


def _settle_killed(ref: JobRef, rt: Runtime) -> None:
    """Record the calls a killed attempt journaled (we hold the lock: it is not running)."""

    def record(attempt: str, calls: list[CallRecord]) -> None:
        rt.ledger.record_calls(
            ref, calls, attempt=attempt, private_tiers=frozenset(rt.policy.private_tiers())
        )
        log.warning(
            "recorded the calls of a killed attempt",
            extra=log_fields(ref, attempt=attempt, calls=len(calls)),
        )

    rt.state.settle(ref, record)


def _hold(ref: JobRef, rt: Runtime, job: JobModule, github: GitHubPort, exc: Exception) -> None:
    """Tell the PR the job waits for the private model, and mark it held.

    It waits as long as the operator's policy says (``behaviour.hold_private_hours``),
    counted from the first time it was held; after that it fails and the PR is told so.
    """
    hours = rt.policy.behaviour.hold_private_hours
    until = rt.state.held_since(ref) + hours * 3600
    if time.time() >= until:
        raise ModelError(
            f"the private model stayed unavailable for over {hours:g} hours and this pull "
            "request's data may not go to an external model, so cibot stopped waiting"
        ) from exc
    rt.ledger.hold_job(ref, reason=str(exc), error_kind=type(exc).__name__)
    body = WAITING_TEMPLATE.format(
        task=ref.task,
        sha=ref.head_sha[:12] or "this PR",
        until=datetime.fromtimestamp(until, UTC).strftime("%Y-%m-%d %H:%M"),
        marker=job.MARKER,
    )
    if not rt.state.waiting_noted(ref) and post_note(rt, ref, job.MARKER, body, github=github):
        rt.state.note_waiting(ref)
    log.info("job held for the private model", extra=log_fields(ref, "local"))


# ---- publish ----------------------------------------------------------------------------------


def publish(ref: JobRef, rt: Runtime) -> StepOutcome:
    """Post a computed result by upserting its marker, then close the job once."""
    job = job_module(ref.task)
    if job is None or rt.state.done(ref):
        return StepOutcome.DUPLICATE
    result = rt.state.result(ref)
    if result is None:
        log.warning("no stored result to publish", extra=log_fields(ref))
        return StepOutcome.DUPLICATE
    newer = is_stale(ref, rt, job)
    if newer:
        rt.ledger.drop_job(ref, reason=f"superseded by {newer[:12]} before publishing")
        rt.state.drop_result(ref)
        return StepOutcome.STALE
    logsetup.bind(tier=result["tier"])
    # One publisher per PR and marker: the upsert reads then writes, and two at once
    # would both create a comment.
    with rt.state.publishing(ref, job.MARKER) as held:
        if not held:
            return StepOutcome.BUSY
        if rt.state.done(ref):
            return StepOutcome.DUPLICATE
        shadow = bool(result.get("shadow"))
        with contextlib.closing(github_for(rt, ref, shadow=shadow)) as github:
            posted = job.publish(github, ref, result["payload"])
            removed = int(result["payload"].get("removed", 0))
            closed = _result(
                github,
                tier=result["tier"],
                model=result["model"],
                comment_id=posted,
                removed=removed,
            )
        rt.ledger.finish_job(ref, closed)
        rt.state.mark_done(ref)
    rt.state.finish(ref)
    log.info("job published", extra=log_fields(ref, result["tier"], comment_id=posted))
    return StepOutcome.PUBLISHED


# ---- failure --------------------------------------------------------------------------------

# Errors the PR hears about: the model side could not produce a result. A job someone
# asked for with a comment command also hears about bad input (say, no failed CI to explain).
TOLD = (ModelError, TimeoutError)
TOLD_ON_REQUEST = (*TOLD, InputError)


def fail(ref: JobRef, rt: Runtime, exc: BaseException) -> None:
    """Record a job's permanent failure with its reason, and tell the PR when it helps.

    The reason is a sentence for people (``bot.kernel.errors.describe``), never a class name; the
    ledger's ``error_kind`` keeps the class for queries, and the traceback stays in the log.
    """
    reason = describe(exc).what[:200]
    if isinstance(exc, NothingToDo):
        _nothing_to_do(ref, rt, exc, reason)
        return
    rt.ledger.finish_job(ref, JobResult(status=FAILED, error_kind=type(exc).__name__, error=reason))
    log.warning("job failed", extra=log_fields(ref, error_kind=type(exc).__name__, error=reason))
    log.debug("job failure traceback", extra=log_fields(ref), exc_info=exc)
    job = job_module(ref.task) if ref.task in MODEL_TASKS else None
    told = TOLD_ON_REQUEST if ref.args.get("requested_by") else TOLD
    if job is None or ref.pr_number is None or not isinstance(exc, told):
        return
    body = failure_note(ref, exc, reason, marker=job.MARKER, path=_tier_path(ref, rt))
    post_note(rt, ref, job.MARKER, body)


def failure_note(ref: JobRef, exc: BaseException, reason: str, *, marker: str, path: str) -> str:
    """Write the note a failed job posts: what failed, the tiers it tried, what to do."""
    tiers = list(dict.fromkeys(path.split(">"))) if path else []
    hint = next((h for kind, h in PR_HINTS if isinstance(exc, kind)), RETRY_HINT)
    if isinstance(exc, InvalidOutput) and "frontier" in tiers:
        hint = PERSON_HINT  # a stronger model is not on offer any more
    walked = (
        WALKED.format(path=", ".join(tiers[:-1]) + f" and {tiers[-1]}") if len(tiers) > 1 else ""
    )
    return FAILED_TEMPLATE.format(
        task=ref.task,
        sha=ref.head_sha[:12] or "this PR",
        walked=walked,
        reason=reason,
        hint=hint.format(task=ref.task),
        marker=marker,
    )


def _tier_path(ref: JobRef, rt: Runtime) -> str:
    """Return the tier path the ledger recorded for the job, or an empty string."""
    row = rt.ledger.job(job_key(ref))
    return str(row["tier_path"]) if row else ""


def _nothing_to_do(ref: JobRef, rt: Runtime, exc: NothingToDo, reason: str) -> None:
    """Drop a job with nothing to work on; answer a request the job did not answer itself."""
    rt.ledger.drop_job(ref, reason=reason)
    rt.state.mark_done(ref)
    log.info("nothing to do", extra=log_fields(ref, reason=reason))
    job = job_module(ref.task) if ref.task in MODEL_TASKS else None
    if exc.posted or job is None or ref.pr_number is None or not ref.args.get("requested_by"):
        return
    post_note(rt, ref, job.MARKER, NOTHING_TEMPLATE.format(reason=reason, marker=job.MARKER))


def post_note(
    rt: Runtime, ref: JobRef, marker: str, body: str, *, github: GitHubPort | None = None
) -> bool:
    """Upsert a note on the job's PR; say whether it was posted.

    A note is a courtesy: when GitHub refuses it (or the client cannot be had), the refusal
    is logged and the job goes on. ``github`` is the job's open client, if it has one.
    """
    try:
        with contextlib.ExitStack() as stack:
            client = github or stack.enter_context(contextlib.closing(github_for(rt, ref)))
            client.upsert_comment(ref.repo, ref.pr(), marker=marker, body=body)
    except CibotError as exc:
        log.warning("note not posted", extra=log_fields(ref, marker=marker, error=str(exc)))
        return False
    return True
