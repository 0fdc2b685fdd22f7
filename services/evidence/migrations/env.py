"""Alembic environment: migrations run on a connection handed over by `services.evidence.migrate` (which opens it
with the evidence store's engine, so SQLite gets its WAL/FULL settings and PostgreSQL its asyncpg driver)."""

from __future__ import annotations

from alembic import context

from services.evidence.migrate import VERSION_TABLE
from services.evidence.store import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Kushim's migrations run through `kushim db upgrade`, not the alembic command")
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=True,
    compare_type=True,
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
