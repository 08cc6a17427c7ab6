"""Test the ledger on SQLite and PostgreSQL: migrations, idempotent writes, privacy."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from bot.kernel.errors import ConfigError
from bot.kernel.jobs import JobRef
from workers.ledger import (
    FAILED,
    HELD,
    RUNNING,
    SUCCEEDED,
    Base,
    JobRecord,
    JobResult,
    Ledger,
    ModelCallRecord,
    Step,
    alembic_config,
    reasons_json,
    tier_path,
    walk,
)
from workers.llm import CallOutcome, CallRecord

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


def model_call(
    tier: str,
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    cost_usd: float,
    outcome: CallOutcome = "ok",
    *,
    escalation_reason: str = "",
    redactions: dict[str, int] | None = None,
) -> CallRecord:
    """Build a CallRecord as the model client makes one, half a second long."""
    return CallRecord(
        tier,
        model,
        prompt_tokens,
        completion_tokens,
        cost_usd=cost_usd,
        outcome=outcome,
        latency_s=0.5,
        escalation_reason=escalation_reason,
        redactions=redactions or {},
    )


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


def calls() -> list[CallRecord]:
    """Return a fallback: local failed validation, then mid answered."""
    return [
        model_call("local", "hosted_vllm/oss", 1000, 200, 0.0, outcome="invalid"),
        model_call("mid", "anthropic/sonnet", 1000, 300, 0.02, escalation_reason="invalid_output"),
    ]


def failed_walk() -> list[CallRecord]:
    """Return a walk with no valid reply: local and its repair, then mid, then frontier."""
    return [
        model_call("local", "hosted_vllm/oss", 900, 150, 0.0004, outcome="invalid"),
        model_call(
            "local", "hosted_vllm/oss", 1100, 160, 0.0005, "invalid", escalation_reason="repair"
        ),
        model_call(
            "mid",
            "openai/gpt-5",
            900,
            200,
            0.003,
            "invalid",
            escalation_reason="invalid_output",
        ),
        model_call(
            "frontier",
            "openai/gpt-5.5",
            900,
            200,
            0.03,
            "invalid",
            escalation_reason="invalid_output",
        ),
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
    assert ledger.steps(job.key()) == [Step(1, "local", "mid", "invalid_output")]
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
    call = model_call("mid", "anthropic/sonnet", 10, 5, 0.001, redactions={"AWSKeyDetector": 2})
    values = call.ledger_values()
    assert (values["redactions"], values["redaction_kinds"]) == (2, "AWSKeyDetector")
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
                calls=[CallRecord(tier="local", model="m")],
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
                CallRecord(tier="frontier", model="opus", cost_usd=1.5),
                CallRecord(tier="mid", model="sonnet", cost_usd=0.25),
                CallRecord(tier="local", model="oss", cost_usd=0.01),
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
                calls=[CallRecord(tier="local", model="m", prompt_tokens=5)],
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
    assert version == "0003"  # the newest revision in workers/migrations/versions


def test_tier_path_collapses_repeats() -> None:
    """A retried local call does not lengthen the path."""
    assert tier_path(["local", "local", "mid", "frontier"]) == "local>mid>frontier"
    assert tier_path([]) == ""


def test_a_failed_walk_counts_every_step_and_keeps_every_call(ledger: Ledger) -> None:
    """local > mid > frontier, then failure: two fallbacks, both reasons queryable, all priced.

    The pipeline records an attempt's calls as they end (record_calls), then closes the job
    with no calls of its own (fail); the fallbacks come from the recorded calls either way.
    """
    job = ref(pr=11)
    ledger.start_job(job, tier="local")
    walked = failed_walk()
    ledger.record_calls(job, walked, private_tiers=frozenset({"local"}), attempt="a1")
    assert ledger.finish_job(
        job, JobResult(status=FAILED, error_kind="InvalidOutput", error="reply is not valid JSON")
    )
    row = ledger.job(job.key())
    assert row is not None
    assert (row["status"], row["tier_path"], row["fallbacks"]) == (
        FAILED,
        "local>mid>frontier",
        2,
    )
    assert row["fallbacks"] == len(row["tier_path"].split(">")) - 1
    assert row["fallback_reasons"] == '["invalid_output", "invalid_output"]'
    assert row["api_cost_usd"] == pytest.approx(0.033)
    with ledger.engine.connect() as conn:
        steps = conn.execute(
            sa.text(
                "SELECT position, from_tier, to_tier, reason, kind FROM fallback_steps "
                "WHERE job_key = :key ORDER BY position"
            ),
            {"key": job.key()},
        ).all()
        priced = conn.execute(
            sa.select(ModelCallRecord.tier, ModelCallRecord.cost_usd)
            .where(ModelCallRecord.job_key == job.key())
            .order_by(ModelCallRecord.id)
        ).all()
    assert [tuple(s) for s in steps] == [
        (1, "local", "mid", "invalid_output", "invalid_output"),
        (2, "mid", "frontier", "invalid_output", "invalid_output"),
    ]
    assert [tuple(c) for c in priced] == [(c.tier, c.cost_usd) for c in walked]
    assert all(cost > 0 for _, cost in priced)
    [report_row] = [r for r in ledger.rows()[0] if r.job_key == job.key()]
    assert report_row.fallbacks == 2
    assert {(s.reason, s.kind) for s in ledger.step_rows()} == {
        ("invalid_output", "invalid_output")
    }


def test_a_success_with_one_fallback_and_a_budget_skip(ledger: Ledger) -> None:
    """A refused tier (a skipped record) is a step of the walk but not a call in the report."""
    job = ref(pr=12, task="review")
    skipped = CallRecord(
        tier="mid", model="openai/gpt-5", outcome="skipped", error_kind="over_budget"
    )
    served = CallRecord(
        tier="local", model="hosted_vllm/oss", prompt_tokens=800, escalation_reason="over_budget"
    )
    ledger.finish_job(job, JobResult(status=SUCCEEDED, tier="local", calls=[skipped, served]))
    row = ledger.job(job.key())
    assert row is not None
    assert (row["tier_path"], row["fallbacks"]) == ("mid>local", 1)
    assert ledger.steps(job.key()) == [Step(1, "mid", "local", "over_budget")]
    assert ledger.steps(job.key())[0].kind == "budget"
    assert [c.tier for c in ledger.rows()[1]] == ["local"]  # no call was made on mid


def test_a_job_dropped_after_calls_still_counts_them(ledger: Ledger) -> None:
    """Calls made before a newer push superseded the job are totalled and walked."""
    job = ref(pr=13)
    ledger.start_job(job, tier="local")
    ledger.record_calls(job, calls(), private_tiers=frozenset({"local"}), attempt="a1")
    assert ledger.drop_job(job, reason="superseded by c0ffee before publishing")
    row = ledger.job(job.key())
    assert row is not None
    assert (row["status"], row["tier_path"], row["fallbacks"]) == ("dropped", "local>mid", 1)
    assert row["api_cost_usd"] == pytest.approx(0.02)


def test_walk_names_each_step_and_its_kind() -> None:
    """Reasons come from the first call on the new tier; unnamed steps by direction."""
    path, steps = walk(
        [
            ("local", ""),
            ("local", "repair"),
            ("mid", "timeout"),
            ("frontier", "connection"),
            ("local", ""),  # a new request of the same job starts low again
            ("frontier", ""),  # a job asked for frontier itself
            ("frontier", "tests_failed"),
        ]
    )
    assert path == ["local", "mid", "frontier", "local", "frontier"]
    assert [(s.reason, s.kind) for s in steps] == [
        ("timeout", "timeout"),
        ("connection", "tier_down"),
        ("restart", "restart"),
        ("escalation", "trigger"),
    ]
    assert len(steps) == len(path) - 1
    assert walk([("mid", "tests_failed_twice")]) == (["mid"], [])
    assert Step(1, "local", "frontier", "tests_failed_twice").kind == "trigger"


def test_reasons_json_stays_valid_when_cut() -> None:
    """A long list of reasons is cut to fit the column and says how many it left out."""
    encoded = reasons_json(["invalid_output"] * 60)
    assert len(encoded) <= 512
    kept = json.loads(encoded)
    assert kept[-1] == f"... {61 - len(kept)} more"
    assert reasons_json([]) == "[]"


def test_the_upgrade_recounts_fallbacks_of_old_rows(database_url: str) -> None:
    """Rows written before fallback_steps existed get their steps and counts rebuilt."""
    from alembic import command

    engine = sa.create_engine(database_url)
    config = alembic_config()
    with engine.connect() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "0001")
        conn.commit()
    key, at = ref(pr=21).key(), T0
    # The jobs table as revision 0001 made it (later revisions add columns).
    later = {"shadow", "post_removals", "would_post"}
    old_jobs = sa.Table(
        "jobs",
        sa.MetaData(),
        *[c._copy() for c in JobRecord.__table__.columns if c.name not in later],
    )
    with engine.begin() as conn:
        conn.execute(
            sa.insert(old_jobs),
            {
                "job_key": key,
                "task": "summary",
                "installation_id": 42,
                "repo": "acme/app",
                "status": FAILED,
                "tier_path": "local>mid>frontier",
                "created_at": at,
            },
        )
        for n, (tier, reason) in enumerate(
            [("local", ""), ("local", "repair"), ("mid", "invalid_output"), ("frontier", "timeout")]
        ):
            conn.execute(
                sa.insert(ModelCallRecord),
                {
                    "call_key": f"{key}@1#{n}",
                    "job_key": key,
                    "installation_id": 42,
                    "repo": "acme/app",
                    "task": "summary",
                    "tier": tier,
                    "model": "m",
                    "private": tier == "local",
                    "escalation_reason": reason,
                    "created_at": at,
                },
            )
    engine.dispose()
    upgraded = Ledger(database_url)
    row = upgraded.job(key)
    steps = upgraded.steps(key)
    upgraded.close()
    assert row is not None and row["fallbacks"] == 2
    assert steps == [
        Step(1, "local", "mid", "invalid_output"),
        Step(2, "mid", "frontier", "timeout"),
    ]
