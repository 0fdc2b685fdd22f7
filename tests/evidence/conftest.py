"""Evidence test fixtures: a database URL per backend (SQLite always; PostgreSQL when KUSHIM_TEST_POSTGRES_DSN is
set: a fresh database per test session, emptied before each test and dropped at the end) and a store on it."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy.engine import make_url

from services.evidence.store import EvidenceStore

# Read at import: the root conftest's autouse fixture removes every KUSHIM_* variable during each test.
POSTGRES_DSN = os.environ.get("KUSHIM_TEST_POSTGRES_DSN")


def _admin(dsn: str, sql: str) -> None:
    """Run one SQL statement with asyncpg on a loop of its own (fixtures may be set up inside a running loop)."""

    async def run() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[tuple[str, str]]:
    """(asyncpg DSN, SQLAlchemy URL) of a database created for this test session."""
    if not POSTGRES_DSN:
        pytest.skip("KUSHIM_TEST_POSTGRES_DSN is not set")
    name = f"kushim_test_{secrets.token_hex(6)}"
    _admin(POSTGRES_DSN, f'CREATE DATABASE "{name}"')
    try:
        url = make_url(POSTGRES_DSN).set(database=name)
        yield (
            url.render_as_string(hide_password=False),
            url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
        )
    finally:
        _admin(POSTGRES_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty evidence database on each backend."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'db' / 'evidence.db'}"
    dsn, url = request.getfixturevalue("postgres_database")
    _admin(dsn, "DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    return str(url)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[EvidenceStore]:
    store = EvidenceStore(database_url)
    await store.migrate()
    try:
        yield store
    finally:
        await store.close()
