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

import sys
from typing import Any

from bot.kernel.errors import CibotError
from bot.kernel.jobs import DISPATCH, GITHUB, PUBLISH, RUN_TESTS, SANDBOX
from bot.kernel.settings import Settings
from policies.model import Policy
from workers.queues import Timing, all_queues


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


def app_from_env() -> Any:
    """Build the app ``celery -A workers.celery_app`` runs, from the CIBOT_* environment.

    A configuration error is one line on stderr and exit code 2, before Celery starts.
    """
    from policies.loading import load_policy
    from workers.startup import install

    try:
        settings = Settings.from_env()
        policy = load_policy(settings.policy_path, overrides=settings.tier_overrides)
        app = create_app(settings, policy)
    except CibotError as exc:
        print(f"cibot worker: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    install(app, settings, policy)
    return app


# ---- the checks -------------------------------------------------------------------------------


def __getattr__(name: str) -> Any:
    """Build ``app`` on first access, for ``celery -A workers.celery_app``."""
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    built = app_from_env()
    globals()["app"] = built
    return built
