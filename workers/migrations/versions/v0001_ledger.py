"""Create the ledger: installations, jobs, model_calls, pr_outcomes, feedback.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the five ledger tables and their indexes."""
    op.create_table(
        "installations",
        sa.Column("installation_id", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("account", sa.String(255), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_key", sa.String(512), nullable=False, unique=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("installation_id", sa.BigInteger(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("head_sha", sa.String(64), nullable=False),
        sa.Column("delivery_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("tier_path", sa.String(128), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("private_only", sa.Boolean(), nullable=False),
        sa.Column("human_review", sa.Boolean(), nullable=False),
        sa.Column("triggers", sa.String(512), nullable=False),
        sa.Column("fallbacks", sa.Integer(), nullable=False),
        sa.Column("fallback_reasons", sa.String(512), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("api_cost_usd", sa.Float(), nullable=False),
        sa.Column("private_tokens", sa.BigInteger(), nullable=False),
        sa.Column("comment_id", sa.BigInteger(), nullable=True),
        sa.Column("error_kind", sa.String(64), nullable=False),
        sa.Column("error", sa.String(300), nullable=False),
        sa.Column("worker", sa.String(255), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
    )
    for column in ("task", "installation_id", "repo", "status", "created_at"):
        op.create_index(f"ix_jobs_{column}", "jobs", [column])
    op.create_table(
        "model_calls",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("call_key", sa.String(600), nullable=False, unique=True),
        sa.Column("job_key", sa.String(512), nullable=False),
        sa.Column("installation_id", sa.BigInteger(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("tier", sa.String(16), nullable=False),
        sa.Column("model", sa.String(255), nullable=False),
        sa.Column("private", sa.Boolean(), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("latency_s", sa.Float(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("error_kind", sa.String(64), nullable=False),
        sa.Column("escalation_reason", sa.String(128), nullable=False),
        sa.Column("redactions", sa.Integer(), nullable=False),
        sa.Column("redaction_kinds", sa.String(512), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    for column in ("job_key", "repo", "created_at"):
        op.create_index(f"ix_model_calls_{column}", "model_calls", [column])
    op.create_table(
        "pr_outcomes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("delivery_id", sa.String(128), nullable=False, unique=True),
        sa.Column("installation_id", sa.BigInteger(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    for column in ("repo", "at"):
        op.create_index(f"ix_pr_outcomes_{column}", "pr_outcomes", [column])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("feedback_key", sa.String(255), nullable=False, unique=True),
        sa.Column("installation_id", sa.BigInteger(), nullable=False),
        sa.Column("repo", sa.String(255), nullable=False),
        sa.Column("pr_number", sa.Integer(), nullable=True),
        sa.Column("task", sa.String(32), nullable=False),
        sa.Column("comment_id", sa.BigInteger(), nullable=True),
        sa.Column("signal", sa.String(32), nullable=False),
        sa.Column("value", sa.Integer(), nullable=False),
        sa.Column("at", TS, nullable=False),
    )
    for column in ("repo", "at"):
        op.create_index(f"ix_feedback_{column}", "feedback", [column])


def downgrade() -> None:
    """Drop the ledger tables."""
    for table in ("feedback", "pr_outcomes", "model_calls", "jobs", "installations"):
        op.drop_table(table)
