"""Requests coalesced into a run in flight (RunJoined): each gets the run's RunCompleted under its own request_id.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_run_requests",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_state", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "request_id"),
    )


def downgrade() -> None:
    op.drop_table("evidence_run_requests")
