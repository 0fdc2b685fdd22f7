"""The schema of the walking skeleton: runs, planned pairs, chunks, findings and evidence documents.

Revision ID: 0001
Revises: none
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_chunks",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("service", sa.String(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("finding_count", sa.Integer(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "account_id", "service", "attempt", "chunk_index"),
    )
    op.create_table(
        "evidence_documents",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("service", sa.String(length=16), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "account_id", "service"),
    )
    op.create_table(
        "evidence_findings",
        sa.Column("finding_id", sa.String(length=64), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("service", sa.String(length=16), nullable=False),
        sa.Column("region", sa.String(length=64), nullable=False),
        sa.Column("control", sa.String(length=16), nullable=False),
        sa.Column("check_id", sa.String(length=128), nullable=False),
        sa.Column("resource_type", sa.String(length=128), nullable=False),
        sa.Column("resource_arn", sa.Text(), nullable=True),
        sa.Column("resource_id", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=8), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("remediation", sa.Text(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("collector_version", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("finding_id"),
    )
    op.create_index(
        "ix_evidence_findings_run_id", "evidence_findings", ["run_id", "account_id", "service"], unique=False
    )
    op.create_table(
        "evidence_pairs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("service", sa.String(length=16), nullable=False),
        sa.Column("planned", sa.Boolean(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("sealed", sa.Boolean(), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=True),
        sa.Column("population", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("api_calls", sa.JSON(), nullable=True),
        sa.Column("regions", sa.JSON(), nullable=True),
        sa.Column("collector_version", sa.String(length=64), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("evidence_key", sa.Text(), nullable=True),
        sa.Column("evidence_sha256", sa.String(length=64), nullable=True),
        sa.Column("evidence_size", sa.Integer(), nullable=True),
        sa.Column("evidence_location", sa.Text(), nullable=True),
        sa.Column("evidence_version_id", sa.Text(), nullable=True),
        sa.Column("evidence_done_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("run_id", "account_id", "service"),
    )
    op.create_table(
        "evidence_runs",
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("requested_by", sa.Text(), nullable=False),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("planned_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("controls", sa.JSON(), nullable=True),
        sa.Column("missing", sa.JSON(), nullable=True),
        sa.Column("findings_total", sa.Integer(), nullable=True),
        sa.Column("findings_by_status", sa.JSON(), nullable=True),
        sa.Column("completion_published", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("run_id"),
    )
    op.create_index(op.f("ix_evidence_runs_request_id"), "evidence_runs", ["request_id"], unique=False)
    op.create_index(op.f("ix_evidence_runs_requested_at"), "evidence_runs", ["requested_at"], unique=False)
    op.create_index("ix_evidence_runs_state_deadline", "evidence_runs", ["state", "deadline_at"], unique=False)


def downgrade() -> None:
    op.drop_table("evidence_runs")
    op.drop_table("evidence_pairs")
    op.drop_table("evidence_findings")
    op.drop_table("evidence_documents")
    op.drop_table("evidence_chunks")
