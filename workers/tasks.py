"""Register cibot's thin Celery tasks; each one calls a plain function in workers.pipeline.

Retries: only transient errors (``bot.kernel.errors.TRANSIENT``, broker and database hiccups)
are retried, with ``workers.retry``'s jittered exponential backoff, a GitHub ``retry_after``
when one is given, and a bounded count. Anything else fails fast: the reason goes to the
ledger and, for model failures, to the PR. Tasks never raise for a failed job, so the message is
acked; only a retry that cannot reach the broker leaves it unacked, to be redelivered.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from bot.kernel import logsetup
from bot.kernel.errors import TRANSIENT, CibotError, PrivateTierDown
from bot.kernel.jobs import DISPATCH, PUBLISH, RUN_JOB, JobRef
from bot.kernel.settings import Settings
from policies.model import Policy
from workers import metrics, outbox, pipeline
from workers.jobs.contract import log_fields
from workers.pipeline import Deadline, StepOutcome
from workers.queues import Timing
from workers.retry import Backoff, retry_after, retrying
from workers.runtime import Runtime

log = logging.getLogger("cibot.tasks")

Step = Callable[[JobRef, Runtime], StepOutcome]


def retryable() -> tuple[type[BaseException], ...]:
    """Return the exception classes worth retrying: transient cibot errors and hiccups."""
    import kombu.exceptions
    import redis.exceptions
    import sqlalchemy.exc

    return (
        *TRANSIENT,
        kombu.exceptions.OperationalError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
        sqlalchemy.exc.OperationalError,
    )


def backoff(retries: int, exc: BaseException | None, timing: Timing) -> float:
    """Return the wait before retry number ``retries + 1``: retry-after, else jittered backoff."""
    return Backoff(base=2.0, cap=timing.retry_max_delay).delay(retries + 1, retry_after(exc))


class LazyRuntime:
    """Build the worker's Runtime on first use, once, even with many threads."""

    def __init__(self, factory: Callable[[], Runtime]) -> None:
        """Keep the factory; nothing connects until a task runs."""
        self._factory = factory
        self._runtime: Runtime | None = None
        self._lock = threading.Lock()

    def get(self) -> Runtime:
        """Return the Runtime, building it the first time."""
        if self._runtime is None:
            with self._lock:
                if self._runtime is None:
                    self._runtime = self._factory()
        return self._runtime


def register(app: Any, *, settings: Settings, policy: Policy, timing: Timing) -> None:
    """Register dispatch, run_job and publish on ``app``."""

    def send(name: str, ref: JobRef, queue: str) -> None:
        # Through the outbox, so a message Redis loses on its way to a worker is sent again.
        outbox.send(runtime.get().redis, name, ref.to_kwargs(), queue)

    runtime = LazyRuntime(
        lambda: Runtime.build(settings, policy, send=send, lock_ttl_s=timing.lease_s)
    )
    app.cibot_runtime = runtime  # lets tests and tools reach the worker's adapters
    steps: dict[str, Step] = {
        DISPATCH: pipeline.dispatch,
        RUN_JOB: lambda ref, rt: pipeline.run_job(ref, rt, deadline=Deadline(timing.job.soft)),
        PUBLISH: pipeline.publish,
    }
    for name, step in steps.items():
        limit = timing.limit_for(name)
        app.task(
            name=name,
            bind=True,
            acks_late=True,
            reject_on_worker_lost=True,
            soft_time_limit=limit.soft,
            time_limit=limit.hard,
            max_retries=None,  # run_step bounds retries itself (timing.max_retries, holds)
        )(_thin(name, step, runtime, timing))


def _thin(name: str, step: Step, runtime: LazyRuntime, timing: Timing) -> Callable[..., str]:
    """Wrap a pipeline step as a task body: rebuild the JobRef, run, retry or record.

    Every line the step logs carries the job's fields (``bot.kernel.logsetup.job_context``), and
    the step is counted in ``cibot_jobs_total`` with the tier it was routed to.
    """
    step_name = name.removeprefix("cibot.")

    def task(self: Any, **kwargs: Any) -> str:
        ref = JobRef.from_kwargs(kwargs)
        attempt = int(self.request.retries or 0) + 1
        fields = log_fields(ref, step=step_name, attempt=attempt)
        with logsetup.job_context(**fields):
            started, outcome = time.monotonic(), "error"
            rt = runtime.get()
            try:
                outcome = run_step(self, step, ref, rt, timing)
                _outbox(outbox.done, rt, self.request.id)
                return outcome
            except Exception as exc:
                # Celery's Retry is how a task asks to run again; anything else escaped.
                outcome = "retry" if type(exc).__name__ == "Retry" else "error"
                if outcome == "retry":
                    wait = getattr(exc, "when", 0)
                    wait = float(wait) if isinstance(wait, int | float) else timing.retry_max_delay
                    _outbox(outbox.postpone, rt, self.request.id, wait)
                raise
            finally:
                tier = str(logsetup.context().get("tier", ""))
                metrics.observe_job(step_name, ref.task, tier, outcome, time.monotonic() - started)

    return task


def _outbox(action: Callable[..., None], rt: Runtime, *args: Any) -> None:
    """Update the outbox; if Redis is away, the sweep finds the step done later (idempotent)."""
    try:
        action(rt.redis, *args)
    except Exception as exc:
        log.info("outbox not updated", extra={"error": repr(exc)})


def run_step(task: Any, step: Step, ref: JobRef, rt: Runtime, timing: Timing) -> str:
    """Run one step; retry transient errors and busy jobs, record permanent failures.

    A task must never raise anything but Celery's Retry: with late acks Celery rejects the
    message of a task that raised, without requeueing it, and the job would be lost.
    """
    retries = int(task.request.retries or 0)
    try:
        outcome = step(ref, rt)
    except retryable() as exc:
        # A held private_only job waits as long as the policy says (pipeline._hold turns it
        # into a failure then), however many retries that takes.
        if retries >= timing.max_retries and not isinstance(exc, PrivateTierDown):
            return _fail(task, ref, rt, exc, timing)
        delay = backoff(retries, exc, timing)
        log.info(
            "retrying",
            extra=log_fields(
                ref, error_kind=type(exc).__name__, retry=retries + 1, countdown=delay
            ),
        )
        raise retry_later(task, exc=exc, countdown=delay) from exc
    except (CibotError, TimeoutError, ValueError) as exc:
        return _fail(task, ref, rt, exc, timing)
    except Exception as exc:  # a bug: record it and keep the worker alive
        log.exception("job crashed", extra=log_fields(ref))
        return _fail(task, ref, rt, exc, timing)
    if outcome is StepOutcome.BUSY:
        if retries >= timing.max_retries:
            log.warning("job still busy; giving up", extra=log_fields(ref))
            return str(outcome)
        # The holder renews its lock every few seconds; a dead one's lapses within the lease.
        raise retry_later(task, exc=None, countdown=random.uniform(0.25, 0.5) * timing.lease_s)
    return str(outcome)


def _fail(task: Any, ref: JobRef, rt: Runtime, exc: BaseException, timing: Timing) -> str:
    """Record a permanent failure; if Redis or the database is away, retry the step later."""
    try:
        pipeline.fail(ref, rt, exc)
    except retryable() as error:
        raise retry_later(task, exc=error, countdown=backoff(0, error, timing)) from error
    return "failed"


BROKER_WAIT_S = 300.0  # how long a retry waits for the broker to come back before giving up
BROKER_BACKOFF = Backoff(base=0.5, cap=5.0)  # the wait between tries to send it


def retry_later(task: Any, *, exc: BaseException | None, countdown: float) -> BaseException:
    """Ask Celery to run the task again, waiting out a broker outage rather than losing it.

    The retry is a new message; while Redis is down it cannot be sent, and the task's own
    message stays unacked (its lease outlives a short outage), so the task waits here.
    """
    import kombu.exceptions
    import redis.exceptions
    from celery.exceptions import Reject

    broker_down = (kombu.exceptions.OperationalError, redis.exceptions.ConnectionError, OSError)
    waited = 0.0

    def pause(error: Exception, attempt: int) -> float | None:
        # Celery turns a retry it could not send into Reject(requeue=False): the message
        # would be dropped. Wait for the broker instead, while our lease keeps it.
        nonlocal waited
        cause = error.reason if isinstance(error, Reject) else error
        if not isinstance(cause, broker_down) or waited >= BROKER_WAIT_S:
            return None
        log.warning("broker unavailable; waiting to send the retry", extra={"waited_s": waited})
        wait = BROKER_BACKOFF.delay(attempt)
        waited += wait
        return wait

    def send() -> BaseException:
        return cast(BaseException, task.retry(exc=exc, countdown=countdown))

    return retrying(send, on=(Reject, *broker_down), pause=pause)
