"""Tenants and the account registry's mirror: the tenant that requested a run (its RunCompleted goes to the
tenant's subject), and the registered accounts with their names for reporting.

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
    with op.batch_alter_table("evidence_runs") as batch:
        batch.add_column(sa.Column("tenant", sa.String(length=64), nullable=True))
    op.create_table(
        "evidence_accounts",
        sa.Column("account_id", sa.String(length=12), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("access", sa.String(length=32), nullable=False),
        sa.Column("registered", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account_id"),
    )


def downgrade() -> None:
    op.drop_table("evidence_accounts")
    with op.batch_alter_table("evidence_runs") as batch:
        batch.drop_column("tenant")
