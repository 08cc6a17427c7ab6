"""Hold one worker process's adapters: job state, the ledger, the GitHub App, the model client.

The pipeline and the edge-task handlers talk to the outside only through a ``Runtime``;
``Runtime.build`` connects the real adapters, and ``workers.inline`` builds one for a
GitHub Actions step.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.kernel.jobs import JobRef
from bot.kernel.settings import Settings
from policies.model import Policy
from workers import leases
from workers.capture import Capture
from workers.jobs.contract import GitHubPort, ModelPort
from workers.leases import Leases
from workers.ledger import Ledger
from workers.state import JobState, RedisJobState


@dataclass
class Runtime:
    """Hold one worker process's adapters; built once, shared by its threads."""

    settings: Settings
    policy: Policy
    redis: Any
    ledger: Ledger
    github: Callable[[int], GitHubPort]
    model: Callable[[Callable[[Any], None]], ModelPort]
    send: Callable[[str, JobRef, str], None]
    lock_ttl_s: float
    spent: Callable[[int], float] = lambda _installation_id: 0.0
    closers: list[Callable[[], None]] = field(default_factory=list)
    worker: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")
    # Renews the job locks this process holds, so they expire with it (workers.leases).
    leases: Leases | None = None
    # Opt-in, private record of prompts and replies for `cibot replay` (workers.capture).
    capture: Capture | None = None
    # Where a job's state lives between steps; Redis (with the leases) unless given.
    job_state: JobState | None = None

    @property
    def state(self) -> JobState:
        """Return the job-state port: the given one, else Redis through ``redis``."""
        if self.job_state is None:
            self.job_state = RedisJobState(self.redis, self.leases)
        return self.job_state

    @classmethod
    def build(
        cls,
        settings: Settings,
        policy: Policy,
        *,
        send: Callable[[str, JobRef, str], None],
        lock_ttl_s: float,
    ) -> Runtime:
        """Connect the real adapters: Redis, the ledger, the GitHub App and the model client."""
        import redis

        from workers.budget import Budget
        from workers.github import GitHubApp
        from workers.llm import ModelClient

        app = GitHubApp.from_settings(settings)
        budget = Budget(settings.redis_url)
        client = redis.Redis.from_url(
            settings.redis_url,
            socket_timeout=10,
            socket_connect_timeout=5,
            health_check_interval=30,
        )
        ledger = Ledger(settings.database_url)
        return cls(
            leases=leases.for_process(lambda: client),
            capture=Capture.from_settings(settings),
            settings=settings,
            policy=policy,
            redis=client,
            ledger=ledger,
            github=lambda installation_id: app.client(installation_id=installation_id),
            model=lambda recorder: ModelClient(policy, settings, budget, recorder=recorder),
            send=send,
            lock_ttl_s=lock_ttl_s,
            spent=budget.spent,
            closers=[client.close, budget.close, ledger.close, app.close],
        )

    def close(self) -> None:
        """Close every connection the runtime opened."""
        for close in self.closers:
            with contextlib.suppress(Exception):
                close()
