"""Audit trail: manifests and their hash-chain heads, dead letters, evidence object versions.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence_chain_heads",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )
    op.create_table(
        "evidence_dead_letters",
        sa.Column("letter_id", sa.String(length=64), nullable=False),
        sa.Column("consumer", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("stream_sequence", sa.BigInteger(), nullable=True),
        sa.Column("num_delivered", sa.Integer(), nullable=False),
        sa.Column("payload_excerpt", sa.Text(), nullable=False),
        sa.Column("dead_lettered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("letter_id"),
    )
    op.create_index(
        op.f("ix_evidence_dead_letters_dead_lettered_at"), "evidence_dead_letters", ["dead_lettered_at"], unique=False
    )
    op.create_table(
        "evidence_manifests",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("sequence", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("previous_sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("location", sa.Text(), nullable=True),
        sa.Column("version_id", sa.Text(), nullable=True),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("account_id", "sequence"),
        sa.UniqueConstraint("account_id", "previous_sha256", name="uq_evidence_manifests_predecessor"),
        sa.UniqueConstraint("key"),
    )
    op.create_index(op.f("ix_evidence_manifests_run_id"), "evidence_manifests", ["run_id"], unique=False)
    op.add_column("evidence_documents", sa.Column("location", sa.Text(), nullable=True))
    op.add_column("evidence_documents", sa.Column("version_id", sa.Text(), nullable=True))
    op.add_column("evidence_pairs", sa.Column("manifest_sequence", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("evidence_pairs", "manifest_sequence")
    op.drop_column("evidence_documents", "version_id")
    op.drop_column("evidence_documents", "location")
    op.drop_index(op.f("ix_evidence_manifests_run_id"), table_name="evidence_manifests")
    op.drop_table("evidence_manifests")
    op.drop_index(op.f("ix_evidence_dead_letters_dead_lettered_at"), table_name="evidence_dead_letters")
    op.drop_table("evidence_dead_letters")
    op.drop_table("evidence_chain_heads")
