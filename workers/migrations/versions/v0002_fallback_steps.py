"""Add fallback_steps, and recount every job's fallbacks from its recorded calls.

Before this revision a failed job kept ``fallbacks = 0`` whatever tiers it walked, and a
job whose rounds made several requests kept only the last one's count. The upgrade
rebuilds each job's steps from its model calls, the rule ``workers.ledger.walk`` applies
to every job from now on, so old and new rows agree.

Revision ID: 0002
Revises: 0001
Create Date: 2025-06-01
"""

from __future__ import annotations

from itertools import groupby

import sqlalchemy as sa
from alembic import op

from workers.ledger import reasons_json, walk

revision = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

CALLS = sa.table(
    "model_calls",
    sa.column("id", sa.Integer()),
    sa.column("job_key", sa.String()),
    sa.column("tier", sa.String()),
    sa.column("escalation_reason", sa.String()),
)
JOBS = sa.table(
    "jobs",
    sa.column("job_key", sa.String()),
    sa.column("fallbacks", sa.Integer()),
    sa.column("fallback_reasons", sa.String()),
)


def upgrade() -> None:
    """Create fallback_steps and fill it, and jobs.fallbacks, from the calls on record."""
    steps = op.create_table(
        "fallback_steps",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("job_key", sa.String(512), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("from_tier", sa.String(16), nullable=False),
        sa.Column("to_tier", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.UniqueConstraint("job_key", "position", name="uq_fallback_steps_position"),
    )
    for column in ("job_key", "reason", "kind"):
        op.create_index(f"ix_fallback_steps_{column}", "fallback_steps", [column])
    assert steps is not None
    _backfill(op.get_bind(), steps)


def _backfill(conn: sa.Connection, steps: sa.Table) -> None:
    """Recount each job's fallbacks from its calls, in call order."""
    calls = conn.execute(
        sa.select(CALLS.c.job_key, CALLS.c.tier, CALLS.c.escalation_reason).order_by(
            CALLS.c.job_key, CALLS.c.id
        )
    ).all()  # read it all first: the loop writes on the same connection
    for key, rows in groupby(calls, key=lambda row: row.job_key):
        _, walked = walk((row.tier, row.escalation_reason) for row in rows)
        conn.execute(
            JOBS.update()
            .where(JOBS.c.job_key == key)
            .values(
                fallbacks=len(walked),
                fallback_reasons=reasons_json([s.reason for s in walked]),
            )
        )
        if walked:
            conn.execute(
                steps.insert(),
                [
                    {
                        "job_key": key,
                        "position": s.position,
                        "from_tier": s.from_tier,
                        "to_tier": s.to_tier,
                        "reason": s.reason,
                        "kind": s.kind,
                    }
                    for s in walked
                ],
            )


def downgrade() -> None:
    """Drop fallback_steps (jobs keep their recounted fallbacks)."""
    op.drop_table("fallback_steps")
