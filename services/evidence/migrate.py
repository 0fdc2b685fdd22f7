"""Schema migrations of the evidence database (Alembic), and the check that refuses a database whose schema is not
the one this Kushim was built for.

- `upgrade()` applies every pending revision (`kushim db upgrade`; `kushim demo` and `kushim up` do it for their
  embedded SQLite). A database created before migrations existed (tables present, no `alembic_version`) is adopted as
  revision 0001, the schema of that time, and upgraded from there.
- `check()` is what `kushim serve` does at start: an empty or older database and a newer one (written by a later
  Kushim) are refused with a message saying what to run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import structlog
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

log = structlog.get_logger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")
BASELINE = "0001"
VERSION_TABLE = "kushim_alembic_version"
"""Kushim's own version table: a database shared with another Alembic application keeps both apart."""
_BASELINE_TABLE = "evidence_runs"


class SchemaError(RuntimeError):
    """The database's schema is not the one this Kushim needs: the message says what to do."""


@dataclass(frozen=True, slots=True)
class SchemaState:
    current: str | None
    head: str
    legacy: bool  # tables from before migrations, without alembic_version

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(_config()).get_current_head()
    if revision is None:  # pragma: no cover - the package ships its revisions
        raise SchemaError("no migrations found")
    return revision


def known(revision: str) -> bool:
    try:
        return ScriptDirectory.from_config(_config()).get_revision(revision) is not None
    except Exception:
        return False


def _state(conn: Connection) -> SchemaState:
    current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()
    legacy = current is None and inspect(conn).has_table(_BASELINE_TABLE)
    return SchemaState(current=current, head=head(), legacy=legacy)


def _adopted_revision(conn: Connection) -> str:
    """The revision a database without Kushim's version table is at: what an earlier Kushim wrote into Alembic's
    default table, else 0001 (the schema before migrations), once its tables are checked to be exactly 0001's."""
    if inspect(conn).has_table("alembic_version"):
        found = MigrationContext.configure(conn).get_current_revision()
        if found is not None and known(found):
            return found
    missing = _differences_from_baseline(conn)
    if missing:
        raise SchemaError(
            "the evidence database has Kushim tables that do not match any released schema ("
            + "; ".join(missing[:5])
            + "): it was written by a development build; move it aside and run `kushim db upgrade` on an empty one"
        )
    return BASELINE


def _differences_from_baseline(conn: Connection) -> list[str]:
    """Tables or columns of revision 0001 that the live database lacks (revision 0001 applied to an in-memory SQLite
    database gives the expected shape)."""
    reference = create_engine("sqlite://")
    with reference.begin() as ref:
        config = _config()
        config.attributes["connection"] = ref
        command.upgrade(config, BASELINE)
        expected = {t: {c["name"] for c in inspect(ref).get_columns(t)} for t in inspect(ref).get_table_names()}
    reference.dispose()
    live = inspect(conn)
    problems = []
    for table, columns in sorted(expected.items()):
        if table == VERSION_TABLE:
            continue
        if not live.has_table(table):
            problems.append(f"no table {table}")
            continue
        lacking = columns - {c["name"] for c in live.get_columns(table)}
        if lacking:
            problems.append(f"{table} lacks {', '.join(sorted(lacking))}")
    return problems


def _upgrade(conn: Connection) -> SchemaState:
    before = _state(conn)
    config = _config()
    config.attributes["connection"] = conn
    if before.current is not None and not known(before.current):
        raise SchemaError(_newer(before))
    if before.legacy:
        command.stamp(config, _adopted_revision(conn))
    command.upgrade(config, "head")
    return before


async def upgrade(engine: AsyncEngine) -> SchemaState:
    """Apply every pending migration in one transaction; returns the state found before."""
    async with engine.begin() as conn:
        before = await conn.run_sync(_upgrade)
    log.info("database_migrated", revision_before=before.current, revision=before.head, adopted=before.legacy)
    return before


async def state(engine: AsyncEngine) -> SchemaState:
    async with engine.connect() as conn:
        return await conn.run_sync(_state)


async def check(engine: AsyncEngine) -> SchemaState:
    """Refuse a database that is not at this Kushim's schema revision."""
    found = await state(engine)
    if found.up_to_date:
        return found
    if found.current is None:
        what = "was created before migrations existed" if found.legacy else "has no Kushim schema"
        raise SchemaError(f"the evidence database {what}: run `kushim db upgrade` (same KUSHIM_DATABASE_URL) first")
    if not known(found.current):
        raise SchemaError(_newer(found))
    raise SchemaError(
        f"the evidence database is at schema revision {found.current}, this Kushim needs {found.head}: "
        "run `kushim db upgrade` first"
    )


def _newer(found: SchemaState) -> str:
    return (
        f"the evidence database is at schema revision {found.current}, which this Kushim does not know (its newest is "
        f"{found.head}): it was written by a newer Kushim; upgrade Kushim instead of downgrading the database"
    )
