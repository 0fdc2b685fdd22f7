"""`kushim evidence`: check the evidence trail (manifest hash chains and every evidence object)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from services.cli import render
from services.cli.common import Output, err, load_settings, out
from services.evidence.migrate import SchemaError
from services.evidence.verify import Verification, verify_evidence
from shared.log import configure_logging

evidence_app = typer.Typer(
    name="evidence", help="The evidence trail: manifests, their hash chains, evidence objects.", no_args_is_help=True
)


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]--since {value!r} is not a date[/red] (use YYYY-MM-DD or an ISO 8601 time)")
        raise typer.Exit(render.EXIT_USAGE) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@evidence_app.command()
def verify(
    account: Annotated[str | None, typer.Option("--account", "-a", help="Only this account.")] = None,
    since: Annotated[
        str | None, typer.Option(help="Only read objects of runs requested on or after this date (YYYY-MM-DD).")
    ] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.table,
) -> None:
    """Re-read every manifest chain and evidence object (the bucket in AWS_S3_BUCKET_NAME, else the database's
    copies) and report each object changed, missing or added and each break in a chain, naming the key.
    Exit 0 when all is intact, 1 when anything is not, 4 when it could not be checked."""
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    start = _since(since)
    try:
        result = asyncio.run(verify_evidence(settings, account_id=account, since=start))
    except SchemaError as exc:
        err.print(f"[red]Could not verify:[/red] {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    except Exception as exc:
        err.print(f"[red]Could not verify:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    _print(result, output)
    raise typer.Exit(0 if result.ok else render.EXIT_FAIL)


def _print(result: Verification, output: Output) -> None:
    if output is Output.json:
        data = {
            "ok": result.ok,
            "source": result.source,
            "accounts": result.accounts,
            "manifests": result.manifests,
            "objects": result.objects,
            "problems": [
                {"kind": p.kind.value, "account_id": p.account_id, "key": p.key, "detail": p.detail}
                for p in result.problems
            ],
        }
        out.print_json(json.dumps(data))
        return
    summary = (
        f"{result.source}: {len(result.accounts)} account(s), {result.manifests} manifest(s), "
        f"{result.objects} evidence object(s) read"
    )
    if result.ok:
        out.print(f"[green]Evidence intact[/green]: {summary}; every chain links and every object matches.")
        return
    table = Table(title=f"Evidence problems ({len(result.problems)})")
    for column in ("Problem", "Account", "Key", "Detail"):
        table.add_column(column, overflow="fold")
    for p in result.problems:
        table.add_row(p.kind.value, p.account_id, p.key, p.detail)
    out.print(table)
    out.print(f"[red]Evidence NOT intact[/red]: {summary}.")
