"""Add jobs.shadow, jobs.would_post and jobs.post_removals.

``shadow`` marks a job that ran, was routed, priced and recorded, but posted nothing (the
installation or repo is in shadow mode), so the report can show shadow work apart; ``would_post`` describes what it would have
posted by shape (a review with 3 line comments), never by text.
``post_removals`` counts what the post scan took out of the job's posts before they went
to GitHub: secrets the model echoed, foreign links and images, raw HTML, refused
suggestions.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add the columns; existing jobs were neither shadowed nor scanned."""
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(
            sa.Column("shadow", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch.add_column(
            sa.Column("post_removals", sa.Integer(), nullable=False, server_default="0")
        )
        batch.add_column(sa.Column("would_post", sa.String(300), nullable=False, server_default=""))


def downgrade() -> None:
    """Drop the columns."""
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("would_post")
        batch.drop_column("post_removals")
        batch.drop_column("shadow")
