"""Test the ledger on SQLite and PostgreSQL: migrations, idempotent writes, privacy."""

from __future__ import annotations

import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.errors import ConfigError
from workers.job import JobRef
from workers.ledger import (
    FAILED,
    HELD,
    RUNNING,
    SUCCEEDED,
    Base,
    CallInput,
    JobResult,
    Ledger,
    tier_path,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Give each test an empty database: a SQLite file, or a private PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    base = request.getfixturevalue("postgres_url")
    yield from _pg_schema(base)


def _pg_schema(base: str) -> Iterator[str]:
    """Create a throwaway schema so concurrent test runs never share tables."""
    schema = f"cibot_t_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{base}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    """Open a migrated ledger."""
    opened = Ledger(database_url)
    yield opened
    opened.close()


@dataclass(frozen=True)
class Redaction:
    """Look like the model client's redaction record, secret text included."""

    kind: str
    text: str


@dataclass(frozen=True)
class FakeCall:
    """Look like the model client's CallRecord."""

    tier: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    outcome: str = "ok"
    redactions: tuple[Redaction, ...] = ()
    cached_tokens: int = 0
    latency_s: float = 0.5
    error_kind: str = ""
    escalation_reason: str = ""


def ref(pr: int = 7, sha: str = "a" * 40, task: str = "summary") -> JobRef:
    """Build a model-task JobRef."""
    return JobRef(
        task=task,
        installation_id=42,
        repo="acme/app",
        delivery_id=f"d-{pr}",
        pr_number=pr,
        head_sha=sha,
    )


def calls() -> list[CallInput]:
    """Return a fallback: local failed validation, then mid answered."""
    return [
        CallInput.of(FakeCall("local", "hosted_vllm/oss", 1000, 200, 0.0, outcome="invalid")),
        CallInput.of(FakeCall("mid", "anthropic/sonnet", 1000, 300, 0.02)),
    ]


def test_migrations_match_the_models(ledger: Ledger) -> None:
    """Alembic's head creates exactly the tables the ORM declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with ledger.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    again = Ledger(ledger.url)  # upgrading an up-to-date database is a no-op
    again.close()


def test_a_job_finishes_once_even_when_recorded_twice(ledger: Ledger) -> None:
    """A duplicate finish neither changes the row nor adds calls."""
    job = ref()
    assert ledger.start_job(job, tier="local", triggers=["sensitive_path", "sensitive_path"])
    assert ledger.job(job.key())["status"] == RUNNING  # type: ignore[index]
    result = JobResult(
        status=SUCCEEDED,
        tier="mid",
        model="anthropic/sonnet",
        calls=calls(),
        fallbacks=1,
        fallback_reasons=["invalid_output"],
        comment_id=99,
    )
    assert ledger.finish_job(job, result, at=T0)
    assert not ledger.finish_job(job, result, at=T0 + timedelta(seconds=5))
    assert not ledger.start_job(job, tier="local")  # a redelivery cannot reopen it
    row = ledger.job(job.key())
    assert row is not None
    assert (row["status"], row["tier_path"], row["fallbacks"], row["attempts"]) == (
        SUCCEEDED,
        "local>mid",
        1,
        1,
    )
    assert row["triggers"] == "sensitive_path"
    assert row["api_cost_usd"] == pytest.approx(0.02)
    assert row["private_tokens"] == 1200
    jobs, rows, _ = ledger.rows()
    assert len(jobs) == 1
    assert [(c.tier, c.private, c.tokens) for c in rows] == [
        ("local", True, 1200),
        ("mid", False, 1300),
    ]


def test_concurrent_finishers_record_one_set_of_calls(ledger: Ledger) -> None:
    """Two workers finishing the same job at once leave exactly one result."""
    job = ref()
    ledger.start_job(job, tier="local")
    second = Ledger(ledger.url, migrate=False)
    wins: list[bool] = []
    barrier = threading.Barrier(2)

    def finish(target: Ledger) -> None:
        barrier.wait()
        wins.append(
            target.finish_job(job, JobResult(status=SUCCEEDED, tier="local", calls=calls()[:1]))
        )

    threads = [threading.Thread(target=finish, args=(x,)) for x in (ledger, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    second.close()
    assert sorted(wins) == [False, True]
    assert len(ledger.rows()[1]) == 1


def test_failure_keeps_its_reason_and_a_later_success_replaces_it(ledger: Ledger) -> None:
    """A failed attempt is final unless the same job later succeeds."""
    job = ref()
    ledger.start_job(job, tier="local")
    ledger.hold_job(job, reason="waiting for the private model", error_kind="PrivateTierDown")
    assert ledger.job(job.key())["status"] == HELD  # type: ignore[index]
    ledger.finish_job(
        job,
        JobResult(
            status=FAILED, error_kind="GitHubValidation", error="422 from GitHub: body too long"
        ),
    )
    row = ledger.job(job.key())
    assert row is not None
    assert (row["status"], row["error_kind"]) == (FAILED, "GitHubValidation")
    assert not ledger.drop_job(job, reason="stale")  # a final job is not dropped


def test_drop_records_a_stale_job(ledger: Ledger) -> None:
    """A dropped job is recorded with its reason."""
    job = ref(sha="b" * 40)
    assert ledger.drop_job(job, reason="head moved to c0ffee")
    assert ledger.job(job.key())["error"] == "head moved to c0ffee"  # type: ignore[index]


def test_no_code_or_secret_text_reaches_the_database(ledger: Ledger, database_url: str) -> None:
    """Redactions are counted by kind; their text is never stored."""
    secret = "AKIAIOSFODNN7EXAMPLE"
    record = FakeCall(
        "mid",
        "anthropic/sonnet",
        10,
        5,
        0.001,
        redactions=(Redaction("AWSKeyDetector", secret), Redaction("AWSKeyDetector", secret + "2")),
    )
    call = CallInput.of(record)
    assert (call.redactions, call.redaction_kinds) == (2, "AWSKeyDetector")
    ledger.finish_job(ref(), JobResult(status=SUCCEEDED, tier="mid", calls=[call]))
    with ledger.engine.connect() as conn:
        dumped = [
            str(row)
            for table in Base.metadata.sorted_tables
            for row in conn.execute(sa.select(table))
        ]
    assert dumped
    assert not any(secret in line for line in dumped)


def test_outcomes_and_feedback_are_deduplicated(ledger: Ledger) -> None:
    """A redelivered outcome or a repeated reaction counts once."""
    args = {"installation_id": 42, "repo": "acme/app", "pr_number": 7}
    assert ledger.record_outcome(outcome="merged", delivery_id="x1", **args)
    assert not ledger.record_outcome(outcome="merged", delivery_id="x1", **args)
    with pytest.raises(ValueError, match="outcome must be one of"):
        ledger.record_outcome(outcome="approved", delivery_id="x2", **args)
    assert ledger.record_feedback(
        key="c99:+1:bob", signal="reaction", value=1, comment_id=99, task="summary", **args
    )
    assert not ledger.record_feedback(
        key="c99:+1:bob", signal="reaction", value=1, comment_id=99, task="summary", **args
    )
    assert len(ledger.rows()[2]) == 1


def test_acceptance_and_frontier_spend_feed_routing(ledger: Ledger) -> None:
    """Acceptance counts rated local jobs; frontier spend sums frontier calls."""
    for pr, vote in ((1, 1), (2, -1), (3, 1)):
        job = ref(pr=pr)
        ledger.start_job(job, tier="local")
        ledger.finish_job(
            job,
            JobResult(
                status=SUCCEEDED,
                tier="local",
                comment_id=100 + pr,
                calls=[CallInput(tier="local", model="m")],
            ),
            at=T0,
        )
        ledger.record_feedback(
            key=f"k{pr}",
            installation_id=42,
            repo="acme/app",
            pr_number=pr,
            signal="reaction",
            value=vote,
            comment_id=100 + pr,
        )
    frontier = ref(pr=9, task="review")
    ledger.finish_job(
        frontier,
        JobResult(
            status=SUCCEEDED,
            tier="frontier",
            calls=[
                CallInput(tier="frontier", model="opus", cost_usd=1.5),
                CallInput(tier="mid", model="sonnet", cost_usd=0.25),
                CallInput(tier="local", model="oss", cost_usd=0.01),
            ],
        ),
        at=T0,
    )
    assert ledger.acceptance(installation_id=42) == {"summary": (2, 3)}
    # Every external tier counts against the budget; the private one does not.
    assert ledger.frontier_spend(installation_id=42, since=T0 - timedelta(days=1)) == 1.75
    assert ledger.frontier_spend(installation_id=42, since=T0 + timedelta(days=1)) == 0.0


def test_installations_are_upserted(ledger: Ledger) -> None:
    """An installation's state follows its latest event."""
    ledger.record_installation(installation_id=5, status="created", account="acme")
    ledger.record_installation(installation_id=5, status="deleted")
    row = ledger.installation(5)
    assert row is not None
    assert (row["status"], row["account"]) == ("deleted", "acme")


def test_rows_respect_the_window(ledger: Ledger) -> None:
    """Jobs and calls are selected by time; outcomes up to the end of the window."""
    for days, pr in ((0, 1), (10, 2)):
        ledger.finish_job(
            ref(pr=pr),
            JobResult(
                status=SUCCEEDED,
                tier="local",
                calls=[CallInput(tier="local", model="m", prompt_tokens=5)],
            ),
            at=T0 + timedelta(days=days),
        )
    ledger.record_outcome(
        installation_id=42,
        repo="acme/app",
        pr_number=1,
        outcome="merged",
        delivery_id="o1",
        at=T0 + timedelta(days=20),
    )
    jobs, rows, outcomes = ledger.rows(since=T0 + timedelta(days=5), until=T0 + timedelta(days=15))
    assert [j.pr_number for j in jobs] == [2]
    assert len(rows) == 1
    assert outcomes == []


def test_a_bad_url_names_the_variable(tmp_path: Path) -> None:
    """A malformed or unreachable database URL is a ConfigError about CIBOT_DATABASE_URL."""
    with pytest.raises(ConfigError) as bad:
        Ledger("nonsense://")
    assert bad.value.key == "CIBOT_DATABASE_URL"
    with pytest.raises(ConfigError, match="CIBOT_DATABASE_URL"):
        Ledger(f"sqlite:///{tmp_path / 'missing-dir' / 'x.db'}")


def test_workers_migrate_concurrently_without_errors(database_url: str) -> None:
    """Several worker processes opening a fresh ledger at once all succeed."""
    code = "import sys; from workers.ledger import Ledger; Ledger(sys.argv[1]).close()"
    procs = [
        subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE)
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=60)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    opened = Ledger(database_url, migrate=False)
    with opened.engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar_one()
    opened.close()
    assert version == "0001"


def test_tier_path_collapses_repeats() -> None:
    """A retried local call does not lengthen the path."""
    assert tier_path(["local", "local", "mid", "frontier"]) == "local>mid>frontier"
    assert tier_path([]) == ""
