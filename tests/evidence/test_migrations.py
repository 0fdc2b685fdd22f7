"""Schema migrations on both backends: the migrated schema is exactly the code's, and the service refuses a database
at any other revision with a message saying what to run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url

from services.evidence import migrate
from services.evidence.app import create_service
from services.evidence.store import EvidenceStore, metadata
from shared.embedded import EmbeddedNats
from shared.settings import Settings


def _store_with_directory(database_url: str) -> EvidenceStore:
    """A store on an empty database whose SQLite directory exists (what `migrate()` would create)."""
    store = EvidenceStore(database_url)
    if store.dialect == "sqlite":
        Path(str(make_url(database_url).database)).parent.mkdir(parents=True)
    return store


def _diff(conn: Connection) -> list[object]:
    opts = {"compare_type": True, "render_as_batch": True, "version_table": migrate.VERSION_TABLE}
    ctx = MigrationContext.configure(conn, opts=opts)
    return list(compare_metadata(ctx, metadata))


async def test_migrated_schema_is_the_code_schema(database_url: str) -> None:
    store = EvidenceStore(database_url)
    try:
        await store.migrate()
        await store.migrate()  # idempotent
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
        assert (await migrate.state(store.engine)).current == migrate.head()
        await store.check_schema()
    finally:
        await store.close()


def _to(revision: str) -> Callable[[Connection], None]:
    def run(conn: Connection) -> None:
        config = migrate._config()
        config.attributes["connection"] = conn
        command.upgrade(config, revision)

    return run


async def test_older_empty_and_newer_schemas_are_refused(database_url: str) -> None:
    store = EvidenceStore(database_url)
    try:
        if store.dialect == "postgresql":
            with pytest.raises(migrate.SchemaError, match="has no Kushim schema: run `kushim db upgrade`"):
                await store.check_schema()
        else:
            with pytest.raises(migrate.SchemaError, match="does not exist: run `kushim db upgrade`"):
                await store.check_schema()
            Path(str(make_url(database_url).database)).parent.mkdir(parents=True)
        async with store.engine.begin() as conn:
            await conn.run_sync(_to("0001"))
        with pytest.raises(
            migrate.SchemaError, match=r"revision 0001, this Kushim needs 0004: run `kushim db upgrade`"
        ):
            await store.check_schema()
        await store.migrate()  # 0001 -> head keeps working
        async with store.engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE kushim_alembic_version SET version_num = '9999'"))
        with pytest.raises(migrate.SchemaError, match=r"9999, which this Kushim does not know.*newer Kushim"):
            await store.check_schema()
        with pytest.raises(migrate.SchemaError, match="written by a newer Kushim"):
            await store.migrate()
    finally:
        await store.close()


async def test_database_from_before_migrations_is_adopted(database_url: str) -> None:
    """Tables created without Alembic (the schema of revision 0001) are stamped 0001, then upgraded."""
    store = _store_with_directory(database_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(_to("0001"))
            await conn.execute(text("DROP TABLE kushim_alembic_version"))
        with pytest.raises(migrate.SchemaError, match="created before migrations existed"):
            await store.check_schema()
        await store.migrate()
        await store.check_schema()
        async with store.engine.connect() as conn:
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
        assert {"evidence_manifests", "evidence_chain_heads", "evidence_dead_letters"} <= tables
    finally:
        await store.close()


async def test_service_refuses_an_unmigrated_database(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats
) -> None:
    settings = make_settings(nats_url=nats_server.url)
    app = create_service(settings, url=nats_server.url)
    with pytest.raises(migrate.SchemaError, match="run `kushim db upgrade`"):
        await app.start()
    await app.stop()


async def _sql(store: EvidenceStore, *statements: str) -> None:
    async with store.engine.begin() as conn:
        for statement in statements:
            await conn.execute(text(statement))


async def test_another_applications_alembic_version_is_left_alone(database_url: str) -> None:
    """A database shared with another Alembic application: its `alembic_version` says nothing about Kushim."""
    store = _store_with_directory(database_url)
    try:
        await _sql(
            store,
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
            "INSERT INTO alembic_version VALUES ('0002')",
        )
        with pytest.raises(migrate.SchemaError, match="has no Kushim schema"):
            await store.check_schema()
        await store.migrate()
        await store.check_schema()
        async with store.engine.connect() as conn:
            assert (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar_one() == "0002"
    finally:
        await store.close()


async def test_a_database_of_an_earlier_kushim_with_alembic_default_table_is_adopted(database_url: str) -> None:
    store = _store_with_directory(database_url)
    try:
        await store.migrate()
        await _sql(
            store,
            "DROP TABLE kushim_alembic_version",
            "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)",
            f"INSERT INTO alembic_version VALUES ('{migrate.head()}')",
        )
        await store.migrate()  # adopted at the head: nothing to apply, nothing fails on existing tables
        await store.check_schema()
    finally:
        await store.close()


async def test_a_development_schema_is_refused_not_adopted(database_url: str) -> None:
    store = _store_with_directory(database_url)
    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(_to("0001"))
        await _sql(store, "DROP TABLE kushim_alembic_version", "DROP TABLE evidence_chunks")
        with pytest.raises(migrate.SchemaError, match=r"no table evidence_chunks.*development build"):
            await store.migrate()
    finally:
        await store.close()
