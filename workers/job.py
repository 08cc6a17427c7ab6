"""Define the identifiers-only job reference that crosses the queue."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Task names a JobRef may carry. The first five are model work; the rest are
# bookkeeping the edge hands to workers (commands, PR outcomes, feedback, installs).
MODEL_TASKS = ("summary", "review", "ci", "tests", "deps", "refactor", "incident")
EDGE_TASKS = ("command", "outcome", "feedback", "installation")
MAX_ID = 2**63 - 1  # GitHub's ids fit a signed 64-bit integer, as the ledger stores them


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
