"""`kushim runs`, `kushim history` and `kushim export`: runs over time, what changed, one run as a file.

All three ask the running evidence service over NATS (kushim.api.runs, kushim.api.history, kushim.api.report), so
they work where the CLI has no access to the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from services.cli import render
from services.cli.client import CouldNotRun, KushimClient
from services.cli.common import Output, broker_url, err, load_settings, out
from services.cli.export import ExportFormat, render_export
from shared.log import configure_logging
from shared.messages import HistoryPage, HistoryRequest, ResourceChange, RunsPage, RunsRequest, RunSummary, Status

T = TypeVar("T")


def _ask(call: Callable[[KushimClient], Awaitable[T]]) -> T:
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    url = broker_url(settings)

    async def run() -> T:
        client = await KushimClient.connect(url)
        try:
            return await call(client)
        finally:
            await client.close()

    try:
        return asyncio.run(run())
    except CouldNotRun as exc:
        err.print(f"[red]Could not read from Kushim:[/red] {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None


R = TypeVar("R", RunsRequest, HistoryRequest)


def _request(model: type[R], account: str | None, *, limit: int) -> R:
    """The request, or exit 2 with a message when --account is not an account id."""
    fields: dict[str, Any] = {"account_id": account, "limit": limit}
    try:
        return model(**fields)
    except ValueError:
        err.print(f"[red]--account {account!r} is not a 12-digit AWS account id[/red]")
        raise typer.Exit(render.EXIT_USAGE) from None


def _verdicts(run: RunSummary) -> str:
    return ", ".join(f"{c.value} {v.status.value}" for c, v in sorted(run.controls.items())) or "-"


def _counts(by_status: dict[Status, int]) -> str:
    return " / ".join(f"{by_status.get(s, 0)} {s.value}" for s in (Status.FAIL, Status.ERROR, Status.PASS))


def runs(
    account: Annotated[str | None, typer.Option("--account", "-a", help="Only runs that checked this account.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=200, help="How many runs (newest first).")] = 20,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.table,
) -> None:
    """List runs, newest first: state, control verdicts and findings counts."""
    request = _request(RunsRequest, account, limit=limit)
    page: RunsPage = _ask(lambda c: c.runs(request))
    if output is Output.json:
        out.print_json(page.model_dump_json())
        return
    if not page.runs:
        out.print("No runs recorded yet.")
        return
    table = Table(title="Runs (newest first)")
    for column in ("Requested (UTC)", "Run", "State", "Accounts", "Controls", "FAIL / ERROR / PASS"):
        table.add_column(column, overflow="fold")
    for entry in page.runs:
        run = entry.run
        table.add_row(
            f"{run.requested_at:%Y-%m-%d %H:%M}",
            run.run_id,
            run.state.value,
            ", ".join(entry.accounts),
            _verdicts(run),
            _counts(entry.findings_by_status),
        )
    out.print(table)


def _change_line(change: ResourceChange) -> str:
    before = change.before.value if change.before else "absent"
    after = change.after.value if change.after else "absent"
    return f"{change.control.value} {change.check_id} {change.resource_id} ({change.region}): {before} → {after}"


def history(
    account: Annotated[str, typer.Option("--account", "-a", help="The account (12 digits).")],
    limit: Annotated[int, typer.Option(min=1, max=50, help="How many runs (newest first).")] = 10,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.table,
) -> None:
    """What changed between an account's consecutive runs: resources that started or stopped failing."""
    request = _request(HistoryRequest, account, limit=limit)
    page: HistoryPage = _ask(lambda c: c.history(request))
    if output is Output.json:
        out.print_json(page.model_dump_json())
        return
    for entry in page.entries:
        run = entry.run
        out.print(
            f"[bold]{run.requested_at:%Y-%m-%d %H:%M} UTC[/bold] {run.run_id} {run.state.value}: {_verdicts(run)}; "
            f"{_counts(entry.findings_by_status)}"
        )
        if entry.compared_with is None:
            out.print("  first run of this account: nothing to compare")
            continue
        services = ", ".join(s.value for s in entry.services_compared) or "none"
        out.print(f"  compared with {entry.compared_with} (services: {services})")
        for label, changes, total in (
            ("started failing", entry.started_failing, entry.started_failing_total),
            ("stopped failing", entry.stopped_failing, entry.stopped_failing_total),
        ):
            out.print(f"  {total} {label}")
            for change in changes:
                out.print(f"    - {_change_line(change)}")
            if total > len(changes):
                out.print(f"    … and {total - len(changes)} more (use --output json)")


def _product_version() -> str:
    try:
        return version("kushim")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
        return "0+unknown"


def export(
    run: Annotated[str, typer.Option("--run", help="The run id (see `kushim runs`).")],
    fmt: Annotated[ExportFormat, typer.Option("--format", "-f", help="json, csv or ocsf.")] = ExportFormat.JSON,
    to: Annotated[Path | None, typer.Option("--to", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Export one run's findings: json (Kushim's contracts), csv (one row per finding) or ocsf (OCSF Compliance
    Finding events, as Prowler and AWS Security Hub consume them)."""
    report = _ask(lambda c: c.report(run_id=run))
    text = render_export(fmt, report.run, report.services, report.findings, product_version=_product_version())
    if to is None:
        typer.echo(text, nl=False)
        return
    to.write_text(text, encoding="utf-8", newline="")
    err.print(f"Wrote {len(report.findings)} findings of {run} as {fmt.value} to {to}.")


__all__ = ["export", "history", "runs"]
