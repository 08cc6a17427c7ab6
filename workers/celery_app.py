"""Build the Celery app from the one Settings object and the Policy.

Queues: one per private tier (``local``, and ``mid`` when an operator makes mid private),
``external`` for API tiers, ``github`` for dispatch, publishing and bookkeeping, and
``sandbox`` for running generated tests. Delivery is at-least-once (acks_late, reject on
worker loss, prefetch 1); every task is idempotent, so redelivery is safe.

Every time limit derives from one number, the longest a model job may run. The visibility
timeout does not: it is a short lease (``workers.leases``) that each live worker renews for
the messages it holds, so a dead worker's job is restored within about half a minute
whatever the job's limit, and a live worker's long job or retry wait is never handed to
another. Celery enforces limits only in prefork and gevent pools; the thread pools the model
queues use check them cooperatively between pipeline steps (``workers.pipeline.Deadline``),
and each model call carries its tier's own timeout.

``celery -A workers.celery_app worker -Q <queue>`` finds ``app`` here: it is built from
the ``CIBOT_*`` environment on first access (never at import), with the worker hooks of
``workers.startup``. Task events are on, so Flower and ``celery events`` see every task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bot.settings import Settings
from policies.model import Policy
from workers.leases import LEASE_S, RESTORE_S

EXTERNAL = "external"
GITHUB = "github"
SANDBOX = "sandbox"

DISPATCH = "cibot.dispatch"
RUN_JOB = "cibot.run_job"
PUBLISH = "cibot.publish"
RUN_TESTS = "cibot.run_tests"  # reserved for the sandbox job (generated tests)

GITHUB_STEP_S = 120.0  # dispatch and publish: a few GitHub calls with their own retries


@dataclass(frozen=True)
class Limit:
    """Hold one task type's soft and hard time limits, in seconds."""

    soft: float
    hard: float


@dataclass(frozen=True)
class Timing:
    """Hold every time limit, the message and lock lease, and the retry pacing."""

    job: Limit
    github: Limit
    sandbox: Limit
    visibility_timeout: float  # the lease on an unacked message, renewed while its holder lives
    restore_interval: float
    retry_max_delay: float
    max_retries: int
    lease_s: float = LEASE_S  # the job lock's lease, renewed the same way

    @classmethod
    def from_policy(
        cls,
        policy: Policy,
        *,
        max_job_s: float | None = None,
        retry_max_delay_s: float = 300.0,
        max_retries: int = 12,
    ) -> Timing:
        """Derive limits: by default a job may try its tier twice and escalate once."""
        longest = max(tier.timeout_s for tier in policy.tiers.values())
        job = _limit(max_job_s if max_job_s is not None else 3 * longest + 60)
        github = _limit(min(GITHUB_STEP_S, job.soft))
        sandbox = job
        return cls(
            job=job,
            github=github,
            sandbox=sandbox,
            visibility_timeout=LEASE_S,
            restore_interval=RESTORE_S,
            # A retry's ETA wait is renewed like a running job, so it may be long.
            retry_max_delay=retry_max_delay_s,
            max_retries=max_retries,
        )

    def limit_for(self, task_name: str) -> Limit:
        """Return the limit of one task type."""
        if task_name == RUN_JOB:
            return self.job
        if task_name == RUN_TESTS:
            return self.sandbox
        return self.github


def _limit(soft: float) -> Limit:
    """Give a soft limit a hard one: ten percent more, at least two seconds."""
    return Limit(soft=soft, hard=soft + max(2.0, soft / 10))


def model_queues(policy: Policy) -> list[str]:
    """Return the queues that talk to models: one per private tier, then ``external``."""
    queues = policy.private_tiers()
    if any(not spec.private for spec in policy.tiers.values()):
        queues.append(EXTERNAL)
    return queues


def all_queues(policy: Policy) -> list[str]:
    """Return every queue the app declares."""
    return [*model_queues(policy), GITHUB, SANDBOX]


def queue_for_tier(tier: str, policy: Policy) -> str:
    """Return the queue a job for ``tier`` runs on."""
    spec = policy.tiers.get(tier)
    return tier if spec is not None and spec.private else EXTERNAL


def queue_concurrency(queue: str, policy: Policy) -> int:
    """Return the thread count that keeps a queue's model slots full (and no more)."""
    if queue in policy.tiers and policy.tiers[queue].private:
        return policy.tiers[queue].max_concurrency
    if queue == EXTERNAL:
        return sum(spec.max_concurrency for spec in policy.tiers.values() if not spec.private)
    if queue == SANDBOX:
        return 2
    return 8


def create_app(settings: Settings, policy: Policy, *, timing: Timing | None = None) -> Any:
    """Create the Celery app and register cibot's tasks on it."""
    from celery import Celery
    from kombu.entity import Queue as KombuQueue

    from workers import tasks

    timing = timing or Timing.from_policy(policy)
    queue: Any = KombuQueue  # kombu's constructor is untyped
    app = Celery("cibot", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,  # results live in the ledger and on GitHub
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # Tasks record failures and return; one that still raises (a retry that could not
        # reach the broker) stays unacked and is redelivered after the visibility timeout.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_queues=[queue(name) for name in all_queues(policy)],
        task_default_queue=GITHUB,
        task_routes={
            DISPATCH: {"queue": GITHUB},
            PUBLISH: {"queue": GITHUB},
            RUN_TESTS: {"queue": SANDBOX},
        },
        task_time_limit=timing.github.hard,
        task_soft_time_limit=timing.github.soft,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": timing.visibility_timeout,
            "unacked_restore_interval": timing.restore_interval,
            "unacked_restore_throttle": 1,
        },
        worker_hijack_root_logger=False,
        # Events for Flower and `celery events`: received, started, succeeded, failed,
        # retried; and "sent" for the tasks workers queue for each other.
        # https://docs.celeryq.dev/en/stable/userguide/monitoring.html#events
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    tasks.register(app, settings=settings, policy=policy, timing=timing)
    return app


def __getattr__(name: str) -> Any:
    """Build ``app`` on first access, for ``celery -A workers.celery_app``."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from workers.startup import app_from_env

    built = app_from_env()
    globals()["app"] = built
    return built
