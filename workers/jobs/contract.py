"""State the contract every model job module follows, and the types it trades in.

A job module (``workers.jobs.summary`` is the model) gathers what it needs from GitHub,
packs a prompt for the decided tier, validates the reply, renders a payload and publishes
it. The pipeline drives those steps through ``JobModule``; the module never sees Redis,
Celery or the ledger, only the ports below.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from bot.kernel.jobs import JobRef
from policies.evidence import Evidence
from policies.model import Policy
from policies.routing import Decision


class GitHubPort(Protocol):
    """The part of workers.github.GitHubClient the pipeline and jobs use."""

    def pull(self, repo: str, number: int) -> Any:
        """Return PullInfo."""

    def pull_diff(self, repo: str, number: int) -> str:
        """Return the PR's unified diff."""

    def pull_files(self, repo: str, number: int) -> list[Any]:
        """Return the PR's FileInfo list."""

    def default_branch_file(self, repo: str, path: str) -> str | None:
        """Return a file from the default branch, or None."""

    def upsert_comment(self, repo: str, number: int, *, marker: str, body: str) -> int:
        """Edit the comment carrying ``marker`` or create it; return its id."""

    def comment_reactions(self, repo: str, comment_id: int) -> dict[str, int]:
        """Return reaction counts on an issue comment."""

    def close(self) -> None:
        """Release connections."""


class ModelPort(Protocol):
    """The part of workers.llm.ModelClient the pipeline uses."""

    def complete(
        self,
        tier: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        schema: dict[str, Any] | None = None,
        validate: Callable[[Any], None] | None = None,
        private_only: bool,
        installation_id: int,
        task: str = "",
        delivery_id: str = "",
        reason: str | None = None,
    ) -> Any:
        """Return a Completion (.text, .data, .tier, .model, .calls, .fallbacks, ...)."""


@dataclass(frozen=True)
class Gathered:
    """Hold what a job read from GitHub: the PR, its diff, and the routing evidence."""

    pull: Any
    diff: str
    evidence: Evidence
    policy: Policy
    files: tuple[Any, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)

    def texts(self) -> list[str]:
        """Return every text the job read from the PR (its diff, title, body, logs)."""
        texts = [
            self.diff,
            str(getattr(self.pull, "title", "")),
            str(getattr(self.pull, "body", "")),
        ]
        return texts + [v for v in self.extra.values() if isinstance(v, str)]


@dataclass(frozen=True)
class ModelRequest:
    """Hold one model request: messages, an optional JSON schema and a validator."""

    messages: list[dict[str, str]]
    schema: dict[str, Any] | None = None
    validate: Callable[[Any], None] | None = None


class JobModule(Protocol):
    """The shape of a model job module in ``workers/jobs/`` (see workers.jobs.summary)."""

    MARKER: str
    SUPERSEDABLE: bool

    def gather(self, github: GitHubPort, ref: JobRef, policy: Policy) -> Gathered:
        """Read the PR and build the routing evidence."""

    def request(self, gathered: Gathered, decision: Decision) -> ModelRequest:
        """Pack the prompt for the decided tier."""

    def validate(self, gathered: Gathered, data: Any) -> None:
        """Raise ValueError when the reply is not usable (unanchored, empty)."""

    def render(
        self, gathered: Gathered, decision: Decision, completion: Any, cost_usd: float
    ) -> dict[str, Any]:
        """Return the JSON-safe payload to publish."""

    def publish(self, github: GitHubPort, ref: JobRef, payload: Mapping[str, Any]) -> int:
        """Post the payload (upsert by marker); return the posted object's id."""


def log_fields(ref: JobRef, tier: str = "", **extra: Any) -> dict[str, Any]:
    """Return the structured log fields every line carries."""
    return {
        "delivery_id": ref.delivery_id,
        "installation_id": ref.installation_id,
        "task": ref.task,
        "tier": tier,
        "repo": ref.repo,
        "pr": ref.pr_number,
        **extra,
    }


def nonce() -> str:
    """Return an unguessable tag for delimiting untrusted text in prompts."""
    return secrets.token_hex(6)
