"""Record model calls, jobs, PR outcomes, feedback and installations (SQLAlchemy 2 + Alembic).

The ledger never stores prompt, completion or code text: only identifiers, tiers, token
counts, costs, timings, trigger names and short operator-facing error reasons.
Every write is idempotent, so a redelivered task cannot double-count anything.

A job's tier path, its fallbacks and their reasons all come from one place: the model
calls it recorded, in order (``walk``). Each change of tier between consecutive calls is
one fallback step, kept in ``fallback_steps`` with its reason, so ``jobs.fallbacks`` is
always the number of steps after the first tier of ``jobs.tier_path``, whether the job
succeeded or failed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Integer,
    String,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from bot.kernel.errors import ConfigError
from bot.kernel.jobs import JobRef

if TYPE_CHECKING:
    from workers.llm import CallRecord

log = logging.getLogger(__name__)

# Job states. A job ends in exactly one of FINAL; "held" waits for a private model.
QUEUED, RUNNING, HELD, SUCCEEDED, FAILED, DROPPED = (
    "queued",
    "running",
    "held",
    "succeeded",
    "failed",
    "dropped",
)
FINAL = (SUCCEEDED, FAILED, DROPPED)
OUTCOMES = ("merged", "closed")
ERROR_LIMIT = 300
MIGRATION_LOCK_ID = 0x6C6564676572  # pg_advisory_lock key: "ledger"
SKIPPED = "skipped"  # a call record for a tier ruled out before any call (workers.llm)
TIER_ORDER = ("local", "mid", "frontier", "human")

# Fallback reason (the model client's vocabulary, or a job's escalation trigger) → kind.
# A reason not listed here is an escalation trigger a job passed (tests_failed_twice, ...).
REASON_KINDS: dict[str, str] = {
    "invalid_output": "invalid_output",  # the reply failed validation (after a local repair)
    "timeout": "timeout",
    **dict.fromkeys(
        ("connection", "unavailable", "server_error", "rate_limited", "api_error", "bad_response"),
        "tier_down",
    ),
    "over_budget": "budget",
    "budget_unavailable": "budget",
    "context_window": "context_window",
    "private_only": "private_only",
    **dict.fromkeys(
        ("content_policy", "bad_request", "auth", "not_found", "unexpected"), "model_error"
    ),
    "restart": "restart",  # a new request (or a retried attempt) began again lower down
}
TRIGGER = "trigger"


class Base(DeclarativeBase):
    """Base of the ledger's tables."""


class InstallationRow(Base):
    """One GitHub App installation and its current state."""

    __tablename__ = "installations"
    installation_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    account: Mapped[str] = mapped_column(String(255), default="")
    status: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class JobRecord(Base):
    """One unit of work, keyed on JobRef.key(): status, tier path, fallbacks, cost."""

    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_key: Mapped[str] = mapped_column(String(512), unique=True)
    task: Mapped[str] = mapped_column(String(32), index=True)
    installation_id: Mapped[int] = mapped_column(BigInteger, index=True)
    repo: Mapped[str] = mapped_column(String(255), index=True)
    pr_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    head_sha: Mapped[str] = mapped_column(String(64), default="")
    delivery_id: Mapped[str] = mapped_column(String(128), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)
    tier: Mapped[str] = mapped_column(String(16), default="")
    tier_path: Mapped[str] = mapped_column(String(128), default="")
    model: Mapped[str] = mapped_column(String(255), default="")
    private_only: Mapped[bool] = mapped_column(Boolean, default=False)
    human_review: Mapped[bool] = mapped_column(Boolean, default=False)
    triggers: Mapped[str] = mapped_column(String(512), default="")
    fallbacks: Mapped[int] = mapped_column(Integer, default=0)
    fallback_reasons: Mapped[str] = mapped_column(String(512), default="")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    api_cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    private_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    comment_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    error_kind: Mapped[str] = mapped_column(String(64), default="")
    error: Mapped[str] = mapped_column(String(ERROR_LIMIT), default="")
    worker: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    shadow: Mapped[bool] = mapped_column(Boolean, default=False)
    post_removals: Mapped[int] = mapped_column(Integer, default=0)
    would_post: Mapped[str] = mapped_column(String(300), default="")


class ModelCallRecord(Base):
    """One model call: tier, model, tokens, latency, cost, outcome; never its text."""

    __tablename__ = "model_calls"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    call_key: Mapped[str] = mapped_column(String(600), unique=True)
    job_key: Mapped[str] = mapped_column(String(512), index=True)
    installation_id: Mapped[int] = mapped_column(BigInteger)
    repo: Mapped[str] = mapped_column(String(255), index=True)
    pr_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    task: Mapped[str] = mapped_column(String(32))
    tier: Mapped[str] = mapped_column(String(16))
    model: Mapped[str] = mapped_column(String(255))
    private: Mapped[bool] = mapped_column(Boolean)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    outcome: Mapped[str] = mapped_column(String(32), default="ok")
    error_kind: Mapped[str] = mapped_column(String(64), default="")
    escalation_reason: Mapped[str] = mapped_column(String(128), default="")
    redactions: Mapped[int] = mapped_column(Integer, default=0)
    redaction_kinds: Mapped[str] = mapped_column(String(512), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class OutcomeRecord(Base):
    """A PR outcome event from the edge: merged, or closed without merge."""

    __tablename__ = "pr_outcomes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    delivery_id: Mapped[str] = mapped_column(String(128), unique=True)
    installation_id: Mapped[int] = mapped_column(BigInteger)
    repo: Mapped[str] = mapped_column(String(255), index=True)
    pr_number: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


class FallbackStepRecord(Base):
    """One step of a job's tier walk: from which tier to which, and why."""

    __tablename__ = "fallback_steps"
    __table_args__ = (UniqueConstraint("job_key", "position", name="uq_fallback_steps_position"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_key: Mapped[str] = mapped_column(String(512), index=True)
    position: Mapped[int] = mapped_column(Integer)
    from_tier: Mapped[str] = mapped_column(String(16))
    to_tier: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(32), index=True)


class FeedbackRecord(Base):
    """An acceptance signal on a bot result: a 👍/👎, an applied suggestion, merged tests."""

    __tablename__ = "feedback"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    feedback_key: Mapped[str] = mapped_column(String(255), unique=True)
    installation_id: Mapped[int] = mapped_column(BigInteger)
    repo: Mapped[str] = mapped_column(String(255), index=True)
    pr_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    task: Mapped[str] = mapped_column(String(32), default="")
    comment_id: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    signal: Mapped[str] = mapped_column(String(32))
    value: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)


# ---- plain rows handed to the pure report code -------------------------------------------


@dataclass(frozen=True)
class JobRow:
    """A job as the report sees it."""

    job_key: str
    task: str
    installation_id: int
    repo: str
    pr_number: int | None
    status: str
    tier: str
    tier_path: str
    fallbacks: int
    api_cost_usd: float
    created_at: datetime
    duration_s: float | None
    shadow: bool = False  # ran and was recorded, but posted nothing (shadow mode)
    post_removals: int = 0  # what the post scan removed from its posts
    would_post: str = ""  # shadow mode: what it would have posted, by shape


@dataclass(frozen=True)
class CallRow:
    """A model call as the report sees it."""

    job_key: str
    repo: str
    pr_number: int | None
    task: str
    tier: str
    private: bool
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    created_at: datetime

    @property
    def tokens(self) -> int:
        """Return prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class StepRow:
    """A fallback step as the report sees it, with its job's identity."""

    job_key: str
    repo: str
    task: str
    position: int
    from_tier: str
    to_tier: str
    reason: str
    kind: str


@dataclass(frozen=True)
class Step:
    """One change of tier in a job's walk, and the reason for it."""

    position: int
    from_tier: str
    to_tier: str
    reason: str

    @property
    def kind(self) -> str:
        """Return the reason's kind: invalid_output, timeout, tier_down, budget, trigger, ..."""
        return reason_kind(self.reason)


@dataclass(frozen=True)
class OutcomeRow:
    """A PR outcome event as the report sees it."""

    repo: str
    pr_number: int
    outcome: str
    at: datetime


@dataclass(frozen=True)
class JobResult:
    """Describe how a job ended, for ``Ledger.finish_job``."""

    status: str
    tier: str = ""
    model: str = ""
    calls: Sequence[CallRecord] = ()
    private_tiers: frozenset[str] = frozenset({"local"})
    comment_id: int | None = None
    error_kind: str = ""
    error: str = ""
    shadow: bool = False
    post_removals: int = 0
    would_post: str = ""


def now() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` as an aware UTC datetime (SQLite hands back naive ones)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def job_key(ref: JobRef) -> str:
    """Return the job's identity: ``JobRef.key()``, plus the delivery for an explicit request.

    A comment command (``/cibot summary``) asks for the work again on purpose, so each
    request is its own job; everything else is one job per (head SHA or delivery, task).
    """
    key = ref.key()
    return f"{key}@{ref.delivery_id}" if ref.args.get("command") else key


def tier_path(tiers: Iterable[str]) -> str:
    """Join the tiers a job went through, collapsing repeats: local>local>mid -> local>mid."""
    path, _ = walk((tier, "") for tier in tiers)
    return ">".join(path)


def reason_kind(reason: str) -> str:
    """Return the kind of a fallback reason; an unknown reason is an escalation trigger."""
    return REASON_KINDS.get(reason, TRIGGER)


def walk(calls: Iterable[tuple[str, str]]) -> tuple[list[str], list[Step]]:
    """Return the tier path and its steps from (tier, escalation reason) per call, in order.

    A step is a change of tier between consecutive calls; its reason is the one the first
    call on the new tier was made for. A step without one is named for its direction: up
    is an unnamed ``escalation`` (a job asked a higher tier itself), down a ``restart``.
    """
    path: list[str] = []
    steps: list[Step] = []
    for tier, reason in calls:
        if path and path[-1] == tier:
            continue
        if path:
            why = reason or ("restart" if _rank(tier) < _rank(path[-1]) else "escalation")
            steps.append(Step(len(steps) + 1, path[-1], tier, why[:128]))
        path.append(tier)
    return path, steps


def _rank(tier: str) -> int:
    """Return a tier's place in the ladder (unknown tiers sort last)."""
    return TIER_ORDER.index(tier) if tier in TIER_ORDER else len(TIER_ORDER)


class Ledger:
    """Open the ledger database, migrate it to head, and record what workers do."""

    def __init__(self, database_url: str, *, migrate: bool = True) -> None:
        """Connect to ``database_url`` (SQLite or PostgreSQL) and run ``upgrade head``."""
        self.url = database_url
        self.engine = _engine(database_url)
        if migrate:
            upgrade(self.engine)

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()

    # ---- jobs ------------------------------------------------------------------------

    def queue_job(self, ref: JobRef, *, tier: str = "", at: datetime | None = None) -> None:
        """Create the job's row in state queued, unless it exists."""
        with self.engine.begin() as conn:
            _insert_ignore(conn, JobRecord, _job_values(ref, QUEUED, tier, at or now()))

    def start_job(
        self,
        ref: JobRef,
        *,
        tier: str,
        private_only: bool = False,
        human_review: bool = False,
        triggers: Sequence[str] = (),
        worker: str = "",
        at: datetime | None = None,
    ) -> bool:
        """Mark the job running and count the attempt; False if it already succeeded."""
        at = at or now()
        with self.engine.begin() as conn:
            _insert_ignore(conn, JobRecord, _job_values(ref, QUEUED, tier, at))
            result = conn.execute(
                update(JobRecord)
                .where(JobRecord.job_key == job_key(ref), JobRecord.status.not_in(FINAL))
                .values(
                    status=RUNNING,
                    tier=tier,
                    private_only=private_only,
                    human_review=human_review,
                    triggers=",".join(sorted(set(triggers)))[:512],
                    attempts=JobRecord.attempts + 1,
                    started_at=at,
                    worker=worker[:255],
                )
            )
            return bool(result.rowcount)

    def hold_job(self, ref: JobRef, *, reason: str, error_kind: str) -> None:
        """Mark a running job held (waiting, e.g., for the private model to come back)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(JobRecord)
                .where(JobRecord.job_key == job_key(ref), JobRecord.status.not_in(FINAL))
                .values(status=HELD, error_kind=error_kind[:64], error=reason[:ERROR_LIMIT])
            )

    def drop_job(self, ref: JobRef, *, reason: str, at: datetime | None = None) -> bool:
        """Record that a job was dropped (stale head, disabled task); False if already final."""
        at = at or now()
        with self.engine.begin() as conn:
            _insert_ignore(conn, JobRecord, _job_values(ref, QUEUED, "", at))
            result = conn.execute(
                update(JobRecord)
                .where(JobRecord.job_key == job_key(ref), JobRecord.status.not_in(FINAL))
                .values(status=DROPPED, error=reason[:ERROR_LIMIT], finished_at=at)
            )
            if result.rowcount:
                _close_walk(conn, job_key(ref))  # calls made before it was superseded count
            return bool(result.rowcount)

    def finish_job(self, ref: JobRef, result: JobResult, *, at: datetime | None = None) -> bool:
        """Close the job exactly once, adding ``result.calls`` and totalling every call it made.

        Returns False, writing nothing, when the job had already succeeded: a duplicate
        delivery must not add a second set of calls or costs.
        """
        at = at or now()
        with self.engine.begin() as conn:
            _insert_ignore(conn, JobRecord, _job_values(ref, QUEUED, result.tier, at))
            started = conn.execute(
                select(JobRecord.started_at, JobRecord.attempts).where(
                    JobRecord.job_key == job_key(ref)
                )
            ).one()
            # The conditional update is the claim: it row-locks, so a concurrent finisher
            # waits and then sees the job already succeeded.
            changed = conn.execute(
                update(JobRecord)
                .where(JobRecord.job_key == job_key(ref), JobRecord.status != SUCCEEDED)
                .values(**_finish_values(result, at, started.started_at))
            ).rowcount
            if not changed:
                return False
            self._insert_calls(conn, ref, result, attempt=f"{started.attempts}f", at=at)
            _close_walk(conn, job_key(ref))
            return True

    def record_calls(
        self,
        ref: JobRef,
        calls: Sequence[CallRecord],
        *,
        private_tiers: frozenset[str],
        attempt: str,
        at: datetime | None = None,
    ) -> None:
        """Record the calls of an attempt that did not finish (held or failed before the end)."""
        result = JobResult(status="", calls=calls, private_tiers=private_tiers)
        with self.engine.begin() as conn:
            self._insert_calls(conn, ref, result, attempt=attempt, at=at or now())

    @staticmethod
    def _insert_calls(
        conn: Connection, ref: JobRef, result: JobResult, *, attempt: int | str, at: datetime
    ) -> None:
        """Insert the calls with keys unique per (job, attempt, position)."""
        for index, call in enumerate(result.calls):
            _insert_ignore(
                conn,
                ModelCallRecord,
                {
                    "call_key": f"{job_key(ref)}@{attempt}#{index}",
                    "job_key": job_key(ref),
                    "installation_id": ref.installation_id,
                    "repo": ref.repo,
                    "pr_number": ref.pr_number,
                    "task": ref.task,
                    "private": call.tier in result.private_tiers,
                    "created_at": at,
                    **call.ledger_values(),
                },
            )

    def comments(self, *, repo: str, pr_number: int) -> list[tuple[str, int]]:
        """Return (task, comment id) for every result the bot posted on a PR."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(JobRecord.task, JobRecord.comment_id).where(
                    JobRecord.repo == repo,
                    JobRecord.pr_number == pr_number,
                    JobRecord.comment_id.is_not(None),
                )
            ).all()
        return sorted({(str(task), int(cid)) for task, cid in rows if cid is not None})

    def job(self, key: str) -> dict[str, Any] | None:
        """Return one job row as a dict, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(select(JobRecord.__table__).where(JobRecord.job_key == key)).first()
        return dict(row._mapping) if row is not None else None

    def steps(self, key: str) -> list[Step]:
        """Return one job's fallback steps, in order."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(
                    FallbackStepRecord.position,
                    FallbackStepRecord.from_tier,
                    FallbackStepRecord.to_tier,
                    FallbackStepRecord.reason,
                )
                .where(FallbackStepRecord.job_key == key)
                .order_by(FallbackStepRecord.position)
            ).all()
        return [Step(*row) for row in rows]

    def calls(self, key: str) -> list[dict[str, Any]]:
        """Return one job's model calls (skipped tiers included), in the order they ran."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(ModelCallRecord.__table__)
                .where(ModelCallRecord.job_key == key)
                .order_by(ModelCallRecord.id)
            ).all()
        return [dict(row._mapping) for row in rows]

    # ---- edge events -----------------------------------------------------------------

    def record_outcome(
        self,
        *,
        installation_id: int,
        repo: str,
        pr_number: int,
        outcome: str,
        delivery_id: str,
        at: datetime | None = None,
    ) -> bool:
        """Record that a PR was merged or closed; False for a duplicate delivery."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        with self.engine.begin() as conn:
            return _insert_ignore(
                conn,
                OutcomeRecord,
                {
                    "delivery_id": delivery_id,
                    "installation_id": installation_id,
                    "repo": repo,
                    "pr_number": pr_number,
                    "outcome": outcome,
                    "at": at or now(),
                },
            )

    def record_feedback(
        self,
        *,
        key: str,
        installation_id: int,
        repo: str,
        pr_number: int | None,
        signal: str,
        value: int,
        task: str = "",
        comment_id: int | None = None,
        at: datetime | None = None,
    ) -> bool:
        """Record one acceptance signal; ``key`` makes a repeated signal count once."""
        with self.engine.begin() as conn:
            return _insert_ignore(
                conn,
                FeedbackRecord,
                {
                    "feedback_key": key[:255],
                    "installation_id": installation_id,
                    "repo": repo,
                    "pr_number": pr_number,
                    "task": task,
                    "comment_id": comment_id,
                    "signal": signal[:32],
                    "value": value,
                    "at": at or now(),
                },
            )

    def record_installation(
        self, *, installation_id: int, status: str, account: str = "", at: datetime | None = None
    ) -> None:
        """Create or update an installation's state (created, deleted, suspended, ...)."""
        values = {"account": account[:255], "status": status[:32], "updated_at": at or now()}
        with self.engine.begin() as conn:
            if not _insert_ignore(
                conn, InstallationRow, {"installation_id": installation_id, **values}
            ):
                conn.execute(
                    update(InstallationRow)
                    .where(InstallationRow.installation_id == installation_id)
                    .values(**{k: v for k, v in values.items() if v or k != "account"})
                )

    def installation(self, installation_id: int) -> dict[str, Any] | None:
        """Return one installation row as a dict, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(InstallationRow.__table__).where(
                    InstallationRow.installation_id == installation_id
                )
            ).first()
        return dict(row._mapping) if row is not None else None

    # ---- reads for routing and the report ---------------------------------------------

    def frontier_spend(self, *, installation_id: int, since: datetime) -> float:
        """Return the installation's spend on external (API) tiers since ``since``.

        The monthly "frontier budget" caps everything that leaves the private tiers, mid
        included, as the Redis budget gate in workers/budget.py does.
        """
        with self.engine.connect() as conn:
            value = conn.execute(
                select(func.coalesce(func.sum(ModelCallRecord.cost_usd), 0.0)).where(
                    ModelCallRecord.installation_id == installation_id,
                    ModelCallRecord.private.is_(False),
                    ModelCallRecord.created_at >= since,
                )
            ).scalar_one()
        return float(value)

    def acceptance(
        self, *, installation_id: int, tier: str = "local"
    ) -> dict[str, tuple[int, int]]:
        """Return {task: (accepted, rated)} over jobs on ``tier`` that received feedback."""
        votes = (
            select(FeedbackRecord.comment_id, func.sum(FeedbackRecord.value).label("net"))
            .where(FeedbackRecord.installation_id == installation_id)
            .group_by(FeedbackRecord.comment_id)
            .subquery()
        )
        query = (
            select(JobRecord.task, votes.c.net)
            .join(votes, votes.c.comment_id == JobRecord.comment_id)
            .where(JobRecord.installation_id == installation_id, JobRecord.tier == tier)
        )
        out: dict[str, tuple[int, int]] = {}
        with self.engine.connect() as conn:
            for task, net in conn.execute(query):
                accepted, total = out.get(task, (0, 0))
                out[task] = (accepted + (1 if net > 0 else 0), total + 1)
        return out

    def rows(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> tuple[list[JobRow], list[CallRow], list[OutcomeRow]]:
        """Return the jobs and calls in [since, until) and every outcome up to ``until``."""
        with self.engine.connect() as conn:
            jobs = [
                JobRow(**_fix(dict(r._mapping)))
                for r in conn.execute(
                    _window(select(*_cols(JobRecord, JobRow)), JobRecord.created_at, since, until)
                )
            ]
            calls = [
                CallRow(**_fix(dict(r._mapping)))
                for r in conn.execute(
                    _window(
                        select(*_cols(ModelCallRecord, CallRow)).where(
                            ModelCallRecord.outcome != SKIPPED  # no call was made
                        ),
                        ModelCallRecord.created_at,
                        since,
                        until,
                    )
                )
            ]
            outcomes = [
                OutcomeRow(**_fix(dict(r._mapping)))
                for r in conn.execute(
                    _window(
                        select(*_cols(OutcomeRecord, OutcomeRow)), OutcomeRecord.at, None, until
                    )
                )
            ]
        return jobs, calls, outcomes

    def step_rows(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> list[StepRow]:
        """Return the fallback steps of the jobs created in [since, until)."""
        query = select(
            FallbackStepRecord.job_key,
            JobRecord.repo,
            JobRecord.task,
            FallbackStepRecord.position,
            FallbackStepRecord.from_tier,
            FallbackStepRecord.to_tier,
            FallbackStepRecord.reason,
            FallbackStepRecord.kind,
        ).join(JobRecord, JobRecord.job_key == FallbackStepRecord.job_key)
        query = _window(query, JobRecord.created_at, since, until)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(FallbackStepRecord.id)).all()
        return [StepRow(**dict(r._mapping)) for r in rows]


def _cols(model: type[Base], row: type) -> list[Any]:
    """Select the table columns a row dataclass declares, in its order."""
    return [getattr(model, f.name) for f in dataclasses.fields(row)]


def _window(query: Any, column: Any, since: datetime | None, until: datetime | None) -> Any:
    """Restrict a query to [since, until)."""
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


def _fix(values: dict[str, Any]) -> dict[str, Any]:
    """Make every datetime aware UTC."""
    return {k: as_utc(v) if isinstance(v, datetime) else v for k, v in values.items()}


def _job_values(ref: JobRef, status: str, tier: str, at: datetime) -> dict[str, Any]:
    """Return the identifying columns of a new job row."""
    return {
        "job_key": job_key(ref),
        "task": ref.task,
        "installation_id": ref.installation_id,
        "repo": ref.repo,
        "pr_number": ref.pr_number,
        "head_sha": ref.head_sha,
        "delivery_id": ref.delivery_id,
        "status": status,
        "tier": tier,
        "created_at": at,
    }


def _finish_values(result: JobResult, at: datetime, started: datetime | None) -> dict[str, Any]:
    """Return the columns that close a job."""
    return {
        "status": result.status,
        "tier": result.tier,
        "model": result.model[:255],
        "comment_id": result.comment_id,
        "error_kind": result.error_kind[:64],
        "error": result.error[:ERROR_LIMIT],
        "shadow": result.shadow,
        "post_removals": result.post_removals,
        "would_post": result.would_post[:300],
        "finished_at": at,
        "duration_s": (at - as_utc(started)).total_seconds() if started else None,
    }


def _close_walk(conn: Connection, key: str) -> None:
    """Total a job's recorded calls and rewrite its fallback steps from them."""
    rows = conn.execute(
        select(
            ModelCallRecord.tier,
            ModelCallRecord.escalation_reason,
            ModelCallRecord.private,
            ModelCallRecord.cost_usd,
            ModelCallRecord.prompt_tokens + ModelCallRecord.completion_tokens,
        )
        .where(ModelCallRecord.job_key == key)
        .order_by(ModelCallRecord.id)
    ).all()
    path, steps = walk((tier, reason) for tier, reason, *_ in rows)
    conn.execute(
        update(JobRecord)
        .where(JobRecord.job_key == key)
        .values(
            api_cost_usd=sum(cost for *_, private, cost, _ in rows if not private),
            private_tokens=sum(tokens for *_, private, _, tokens in rows if private),
            tier_path=">".join(path)[:128],
            fallbacks=len(steps),
            fallback_reasons=reasons_json([s.reason for s in steps]),
        )
    )
    conn.execute(delete(FallbackStepRecord).where(FallbackStepRecord.job_key == key))
    if steps:
        conn.execute(
            insert(FallbackStepRecord),
            [{"job_key": key, **dataclasses.asdict(s), "kind": s.kind} for s in steps],
        )


def reasons_json(reasons: Sequence[str], limit: int = 512) -> str:
    """Encode reasons as a JSON list that fits ``limit``, ending with a count if cut."""
    reasons = list(reasons)
    for keep in range(len(reasons), -1, -1):
        cut = len(reasons) - keep
        encoded = json.dumps(reasons[:keep] + ([f"... {cut} more"] if cut else []))
        if len(encoded) <= limit:
            return encoded
    return "[]"


def _insert_ignore(conn: Connection, model: type[Base], values: Mapping[str, Any]) -> bool:
    """Insert a row unless its unique key exists; return whether it was inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(model).values(**values).on_conflict_do_nothing()
    # RETURNING, not rowcount: psycopg reports the implicit RETURNING's count unreliably here.
    keys = inspect(model).primary_key
    return conn.execute(statement.returning(*keys)).first() is not None


def _engine(url: str) -> Engine:
    """Create the engine; SQLite gets WAL and a busy timeout so workers can share it."""
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(engine, "connect", _sqlite_pragmas)
            return engine
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=60)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(
            f"CIBOT_DATABASE_URL is not a usable database URL ({exc}): use sqlite:///path.db "
            "or postgresql+psycopg://user@host/db",
            key="CIBOT_DATABASE_URL",
            source="environment",
        ) from exc


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    """Let several processes write the SQLite file: WAL, and wait rather than fail."""
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def alembic_config() -> Any:
    """Return the packaged Alembic configuration, pointing at the packaged migrations."""
    from alembic.config import Config

    root = resources.files("workers")
    config = Config(str(root.joinpath("alembic.ini")))
    config.set_main_option("script_location", str(root.joinpath("migrations")))
    return config


def upgrade(engine: Engine) -> None:
    """Run ``alembic upgrade head`` under a lock, so concurrent workers migrate once."""
    from alembic import command

    config = alembic_config()
    try:
        with _migration_lock(engine) as conn:
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
    except OperationalError as exc:
        raise ConfigError(
            f"cannot open the ledger database ({exc.orig}): check CIBOT_DATABASE_URL",
            key="CIBOT_DATABASE_URL",
            source="environment",
        ) from exc


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[Connection]:
    """Hold a PostgreSQL advisory lock, or a lock file beside the SQLite database."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": MIGRATION_LOCK_ID})
            conn.commit()
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": MIGRATION_LOCK_ID})
                conn.commit()
            return
        database = engine.url.database
        if not database or database == ":memory:":
            yield conn
            return
        with open(Path(database).with_name(Path(database).name + ".lock"), "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield conn
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
