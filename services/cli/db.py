"""`kushim db`: the evidence database's schema (Alembic migrations)."""

from __future__ import annotations

import asyncio

import typer

from services.cli import render
from services.cli.client import safe_url
from services.cli.common import err, load_settings, out
from services.evidence import migrate
from services.evidence.store import EvidenceStore
from shared.log import configure_logging

db_app = typer.Typer(
    name="db",
    help="The evidence database (KUSHIM_DATABASE_URL; default SQLite in KUSHIM_HOME): schema migrations.",
    no_args_is_help=True,
)


@db_app.command()
def upgrade() -> None:
    """Apply every pending schema migration (run before `kushim serve`; `up` and `demo` do it themselves).
    A database created before migrations existed is adopted; one written by a newer Kushim is refused."""
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    url = settings.effective_database_url

    async def run() -> migrate.SchemaState:
        store = EvidenceStore(url)
        try:
            await store.migrate()
            return await migrate.state(store.engine)
        finally:
            await store.close()

    try:
        found = asyncio.run(run())
    except Exception as exc:
        err.print(f"[red]Could not migrate {safe_url(url)}:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    out.print(f"Database {safe_url(url)} is at schema revision {found.current} (newest: {found.head}).")


@db_app.command()
def status() -> None:
    """Print the database's schema revision and this Kushim's; exit 4 unless they match."""
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    url = settings.effective_database_url

    async def run() -> None:
        store = EvidenceStore(url)
        try:
            await store.check_schema()
        finally:
            await store.close()

    try:
        asyncio.run(run())
    except migrate.SchemaError as exc:
        err.print(f"[yellow]{safe_url(url)}:[/yellow] {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    except Exception as exc:
        err.print(f"[red]Could not read {safe_url(url)}:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    out.print(f"Database {safe_url(url)} is at schema revision {migrate.head()}, as this Kushim needs.")
