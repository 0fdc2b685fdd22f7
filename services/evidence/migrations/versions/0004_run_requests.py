"""Requests coalesced into a run in flight (RunJoined): each gets the run's RunCompleted under its own request_id;
`published_state` is the run state whose RunCompleted it was last sent (a run that turns COMPLETE after INCOMPLETE
owes its joiners a second one, like its own requester).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_run_requests",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("tenant", sa.String(length=64), nullable=True),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_state", sa.String(length=16), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "request_id"),
    )
    op.create_index("ix_evidence_run_requests_request_id", "evidence_run_requests", ["request_id"])


def downgrade() -> None:
    op.drop_index("ix_evidence_run_requests_request_id", table_name="evidence_run_requests")
    op.drop_table("evidence_run_requests")
