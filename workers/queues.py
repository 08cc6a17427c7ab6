"""Say which queues cibot declares, where a tier's jobs go, and how each queue's pool runs.

Pure functions of the policy: the queues, each queue's pool and size, and every time limit
(``Timing``). The Celery app, the worker launcher, the worker's start-up checks and the
pipeline all read the same plan from here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.kernel.errors import InputError
from bot.kernel.jobs import EXTERNAL, GITHUB, RUN_JOB, RUN_TESTS, SANDBOX
from policies.model import Policy
from workers.leases import LEASE_S, RESTORE_S


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


@dataclass(frozen=True)
class PoolPlan:
    """Say how one queue's worker runs: its pool kind and concurrency."""

    queue: str
    pool: str
    concurrency: int


def plan(
    queues: Sequence[str], policy: Policy, *, concurrency: int | None = None
) -> list[PoolPlan]:
    """Choose a pool per queue: prefork for the sandbox, threads for everything else."""
    known = all_queues(policy)
    unknown = [q for q in queues if q not in known]
    if unknown:
        raise InputError(f"unknown queue {unknown[0]!r}: choose from {', '.join(known)}")
    return [
        PoolPlan(
            queue=q,
            pool="prefork" if q == SANDBOX else "threads",
            concurrency=concurrency or queue_concurrency(q, policy),
        )
        for q in dict.fromkeys(queues)
    ]


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
