"""State the job contract once: the identifiers-only job reference and the queue it crosses.

The web edge writes this contract and the workers read it; neither imports the other.
It names the queues and Celery tasks, the Redis keys both sides share (a PR's newest head,
the outbox that keeps every message until its step ends), and the message envelope.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.kernel.errors import InputError

# Task names a JobRef may carry. The first five are model work; the rest are
# bookkeeping the edge hands to workers (commands, PR outcomes, feedback, installs).
MODEL_TASKS = ("summary", "review", "ci", "tests", "deps", "refactor", "incident")
JOB_TASKS = ("summary", "review", "ci", "tests", "deps")  # the model tasks that have a job
EDGE_TASKS = ("command", "outcome", "feedback", "installation")
MAX_ID = 2**63 - 1  # GitHub's ids fit a signed 64-bit integer, as the ledger stores them

# Queues: one per private tier (named after it), EXTERNAL for API tiers, GITHUB for
# dispatch, publishing and bookkeeping, SANDBOX for running generated tests.
EXTERNAL = "external"
GITHUB = "github"
SANDBOX = "sandbox"

# Celery task names: the edge sends DISPATCH; each step sends the next.
DISPATCH = "cibot.dispatch"
RUN_JOB = "cibot.run_job"
PUBLISH = "cibot.publish"
RUN_TESTS = "cibot.run_tests"  # reserved for the sandbox job (generated tests)

# A JobRef whose args carry SUPERSEDE=True is debounced: the edge records the newest head
# SHA of its PR under head_key() and delays the job; the worker drops it when the recorded
# head is no longer its head_sha. A burst of pushes so yields one job.
SUPERSEDE = "supersede"

# The outbox (workers.outbox): every message is kept here, by task id, until its step ends.
OUTBOX = "cibot:outbox"
DUE = "cibot:outbox:due"
GRACE_S = 60.0  # how long a message may be out of sight (taken, not yet unacked) before a resend


def head_key(repo: str, pr_number: int | None) -> str:
    """Return the Redis key holding the newest head SHA the edge saw for a PR."""
    return f"cibot:head:{repo}#{pr_number}"


@dataclass(frozen=True, kw_only=True)
class JobRef:
    """Name one unit of work by identifiers only; never a client or a payload."""

    task: str
    installation_id: int
    repo: str
    delivery_id: str
    pr_number: int | None = None
    head_sha: str = ""
    # Small scalar arguments: a command's name and args, the comment id, an outcome.
    args: dict[str, str | int | bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse identifiers no GitHub payload holds, before the job is queued."""
        numbers = {"installation_id": self.installation_id, "pr_number": self.pr_number}
        numbers |= {f"args.{k}": v for k, v in self.args.items() if type(v) is int}
        for name, value in numbers.items():
            if value is not None and not 0 <= value <= MAX_ID:
                raise ValueError(f"job {name} {str(value)[:24]} is not a 64-bit GitHub id")

    def pr(self) -> int:
        """Return the PR number, or raise InputError: every model job is about one PR."""
        if self.pr_number is None:
            raise InputError(f"a {self.task} job needs a pull request number")
        return self.pr_number

    def key(self) -> str:
        """Return the idempotency key: (head SHA, or delivery id, and task)."""
        anchor = self.head_sha or self.delivery_id
        extra = self.args.get("command", "")
        return (
            f"{self.repo}#{self.pr_number}:{anchor}:{self.task}{':' + str(extra) if extra else ''}"
        )

    def to_kwargs(self) -> dict[str, Any]:
        """Return the JSON-safe keyword arguments for a Celery message."""
        return asdict(self)

    @classmethod
    def from_kwargs(cls, data: dict[str, Any]) -> JobRef:
        """Rebuild a JobRef from a Celery message's keyword arguments."""
        return cls(**data)


def envelope(
    name: str,
    queue: str,
    kwargs: dict[str, Any],
    *,
    task_id: str,
    countdown: float | None = None,
    kwargsrepr: str | None = None,
) -> str:
    """Return the kombu Redis envelope of a Celery protocol-2 message, as send_task builds it.

    Built field for field as ``app.amqp.as_task_v2`` and kombu's Redis publish write it,
    so the edge needs no Celery app (nor Celery's import) to queue a job, and builds it in
    about two thirds of the time. tests/test_spool.py checks it against send_task's own
    message and a kombu consumer. https://docs.celeryq.dev/en/stable/internals/protocol.html
    """
    eta = datetime.now(UTC) + timedelta(seconds=countdown) if countdown else None
    embed = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
    body = json.dumps(((), kwargs, embed)).encode("utf-8")
    headers: dict[str, Any] = {
        "lang": "py",
        "task": name,
        "id": task_id,
        "shadow": None,
        "eta": eta and eta.isoformat(),
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": "()",
        "kwargsrepr": kwargsrepr if kwargsrepr is not None else repr(kwargs),
        "origin": f"gen{os.getpid()}@{socket.gethostname()}",
        "ignore_result": False,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    return json.dumps(
        {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
    )
