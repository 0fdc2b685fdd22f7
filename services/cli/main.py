"""The `kushim` command."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
import uuid
from typing import Annotated, Any

import structlog
import typer
from pydantic import TypeAdapter, ValidationError
from rich.table import Table

from services.cli import render
from services.cli.accounts_cmd import accounts_app
from services.cli.client import (
    CouldNotRun,
    KushimClient,
    Progress,
    Report,
    RunRejectedError,
    expected_run_id,
    run_check,
    safe_url,
)
from services.cli.common import Output, broker_url, err, load_settings, out
from services.cli.db import db_app
from services.cli.evidence_cmd import evidence_app
from services.cli.nats_cmd import nats_app
from services.cli.runs_cmd import export, history, runs
from services.cli.state import SERVICE_NAMES, clear_state, write_state
from shared.consume import validation_reason
from shared.controls import CATALOG, CONTROL_TITLES, gating_table
from shared.log import configure_logging
from shared.messages import AccountId, ConnectionTestResult, Service
from shared.observability import TracingUnavailable, tracer_provider_from_settings
from shared.permissions import read_only_policy
from shared.settings import Settings, setting_env_names

log = structlog.get_logger(__name__)

app = typer.Typer(
    name="kushim",
    help="Kushim: continuous SOC 2 evidence for AWS (CC6.1 IAM MFA, CC6.7 S3 encryption, CC7.2 CloudTrail).\n\n"
    "Exit codes: 0 every control passes; 1 a control FAILs; 2 usage error; 3 ERROR or INCOMPLETE without FAIL; "
    "4 could not run (broker unreachable, timeout, bad configuration).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (Ctrl-C, Kubernetes): the services then stop gracefully."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _show(report: Report, output: Output, settings: Settings | None = None) -> int:
    if output is Output.json:
        render.print_json(report, out)
    else:
        render.print_report(report, out, gating_table(settings.mfa_scope) if settings else None)
    return render.exit_code(report)


@app.command()
def check(
    account: Annotated[
        list[str] | None, typer.Option("--account", "-a", help="Account id; repeat for several.")
    ] = None,
    service: Annotated[list[Service] | None, typer.Option("--service", "-s", help="iam, s3 or cloudtrail.")] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the result, or print the run id.")] = True,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.table,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the run before exit code 4.")] = 1200.0,
) -> None:
    """Run the checks now (publishes a RunRequested) and print the report."""
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    try:
        for account_id in account or []:
            TypeAdapter(AccountId).validate_python(account_id)
    except ValidationError:
        err.print(f"[red]Invalid account id {account_id!r}:[/red] an AWS account id is exactly 12 digits.")
        raise typer.Exit(render.EXIT_USAGE) from None
    url = broker_url(settings)
    try:
        # console spans on stderr: stdout is the report (`--output json` must stay JSON)
        tracer_provider = tracer_provider_from_settings(settings, service_name="kushim-cli", console=sys.stderr)
    except TracingUnavailable as exc:
        err.print(f"[red]Could not run:[/red] {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    try:
        if not wait:
            request_id = f"cli-{uuid.uuid4().hex}"

            async def publish() -> str:
                client = await KushimClient.connect(url, tracer_provider=tracer_provider)
                try:
                    await client.request_run(request_id, accounts=account, services=service)
                finally:
                    await client.close()
                return expected_run_id(request_id)

            run_id = asyncio.run(publish())
            if output is Output.json:
                out.print_json(json.dumps({"run_id": run_id, "request_id": request_id}))
            else:
                out.print(run_id)
            return
        if err.is_terminal:  # live progress for people; nothing extra when stderr is a file or a pipe
            with err.status(f"Requested a run on {safe_url(url)}; waiting for its plan…") as status:

                def show(progress: Progress) -> None:
                    status.update(progress.describe())

                report = asyncio.run(
                    run_check(
                        url,
                        accounts=account,
                        services=service,
                        timeout=timeout,
                        progress=show,
                        tracer_provider=tracer_provider,
                    )
                )
        else:
            report = asyncio.run(
                run_check(url, accounts=account, services=service, timeout=timeout, tracer_provider=tracer_provider)
            )
    except RunRejectedError as exc:
        err.print(f"[red]Run rejected:[/red] {exc}")
        raise typer.Exit(render.EXIT_USAGE) from None
    except ValidationError as exc:
        err.print(f"[red]Invalid request:[/red] {validation_reason(exc).removeprefix('invalid message: ')}")
        raise typer.Exit(render.EXIT_USAGE) from None
    except CouldNotRun as exc:
        err.print(f"[red]Could not run:[/red] {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    finally:
        if tracer_provider is not None:
            tracer_provider.shutdown()  # export the request's span before the process ends
    raise typer.Exit(_show(report, output, settings))


@app.command()
def report(
    run: Annotated[str | None, typer.Option("--run", help="Run id (default: the latest run).")] = None,
    account: Annotated[str | None, typer.Option("--account", "-a", help="Only this account.")] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.table,
) -> None:
    """Print the report of the latest (or a chosen) run, read from the evidence service."""
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    url = broker_url(settings)

    async def fetch() -> Report:
        client = await KushimClient.connect(url)
        try:
            return await client.report(run_id=run, account_id=account)
        finally:
            await client.close()

    try:
        result = asyncio.run(fetch())
    except CouldNotRun as exc:
        err.print(f"[red]Could not read the report:[/red] {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    raise typer.Exit(_show(result, output, settings))


@app.command()
def demo(
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.table,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show the services' logs.")] = False,
) -> None:
    """Run the whole pipeline once on a built-in demo account (embedded moto, nats-server and SQLite) and print
    the report. Never touches your AWS credentials. Exits 0 when the report is the expected one."""
    from services.cli.demo import run_demo

    configure_logging("INFO" if verbose else "ERROR", "console")
    started = time.monotonic()
    try:
        result, verification, problems = run_demo()
    except CouldNotRun as exc:
        err.print(f"[red]Demo could not run:[/red] {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    _show(result, output)
    if output is Output.table:
        out.print(
            f"\n[bold]Evidence trail[/bold]  {verification.source}: {verification.manifests} manifest(s) and "
            f"{verification.objects} evidence object(s) re-read: "
            + ("[green]intact[/green]" if verification.ok else f"[red]{len(verification.problems)} problem(s)[/red]")
        )
    elapsed = time.monotonic() - started
    if problems:
        err.print("[red]The demo report differs from the expected one:[/red]")
        for problem in problems:
            err.print(f"  - {problem}")
        raise typer.Exit(render.EXIT_FAIL)
    err.print(
        f"\n[green]Demo finished in {elapsed:.1f}s: the report is the expected one[/green] "
        "(CC6.1 FAIL at 50 % MFA, CC6.7 FAIL on one bucket, CC7.2 PASS)."
    )


@app.command()
def up() -> None:
    """Run every service against your AWS account (standard AWS environment and credentials, AWS_ENDPOINT_URL
    honoured) in the foreground until Ctrl-C. Data lives in KUSHIM_HOME; other commands find the broker there."""
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    settings.home.mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        stop = stop_on_signals()
        from services.cli.stack import PreflightError, preflight, running_stack
        from shared.credentials import default_clients
        from shared.observability import Observability
        from shared.probes import http_binding

        observability = Observability.from_settings(settings, service_name="kushim")
        http = http_binding(settings, serve=False)  # only when KUSHIM_HTTP_PORT asks for one
        aws = default_clients(settings)  # KUSHIM_AWS_SECRET_ID: the keys in Secrets Manager
        try:
            account = await preflight(settings, aws)
        except PreflightError as exc:
            observability.shutdown()
            err.print(f"[red]Kushim could not start:[/red] {exc}")
            raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
        err.print(f"Checking AWS account {account} (region {settings.aws_region}).")
        try:
            async with running_stack(settings, aws=aws, migrate=True, observability=observability, http=http) as stack:
                state = write_state(settings.home, stack.url)
                endpoints = f" HTTP on {http.host}:{http.port} (/healthz, /readyz, /metrics)." if http else ""
                err.print(
                    f"[green]Kushim is up[/green]: broker {safe_url(stack.url)}, "
                    f"database {safe_url(settings.effective_database_url)}, "
                    f"schedule '{settings.schedule}' UTC{'' if settings.schedule_enabled else ' (disabled)'}."
                    f"{endpoints}\n"
                    f"State in {state}. Run `kushim check` in another terminal; Ctrl-C stops."
                )
                try:
                    await stop.wait()
                finally:
                    clear_state(settings.home)
        finally:
            observability.shutdown()

    try:
        asyncio.run(main())
    except typer.Exit:
        raise
    except Exception as exc:
        err.print(f"[red]Kushim could not start:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None


@app.command()
def serve(
    service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICE_NAMES)}.")],
) -> None:
    """Run one service (for containers). Needs KUSHIM_NATS_URL."""
    if service not in SERVICE_NAMES:
        err.print(f"[red]Unknown service {service!r}[/red]; choose one of: {', '.join(SERVICE_NAMES)}")
        raise typer.Exit(render.EXIT_USAGE)
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    if not settings.nats_url:
        err.print("[red]KUSHIM_NATS_URL is required by `kushim serve`[/red] (e.g. nats://nats:4222).")
        raise typer.Exit(render.EXIT_USAGE)

    async def main() -> None:
        stop = stop_on_signals()
        from services.cli.stack import running_stack
        from shared.observability import Observability
        from shared.probes import http_binding

        observability = Observability.from_settings(settings, service_name=f"kushim-{service}")
        try:
            async with running_stack(
                settings, services=[service], observability=observability, http=http_binding(settings, serve=True)
            ):
                await stop.wait()
        finally:
            observability.shutdown()

    try:
        asyncio.run(main())
    except typer.Exit:
        raise
    except Exception as exc:
        err.print(f"[red]{service} could not start:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None


@app.command()
def connect(
    remote: Annotated[
        bool, typer.Option("--remote", help="Ask the running Kushim (its scheduler) instead of testing from here.")
    ] = False,
    output: Annotated[Output, typer.Option("--output", "-o", help="table or json.")] = Output.table,
    account: Annotated[
        str | None,
        typer.Option(
            "--account",
            help="A registered account, tested with its own access (assumed role, secret); default: Kushim's own "
            "credentials.",
        ),
    ] = None,
) -> None:
    """Test the AWS connection: IAM, S3, CloudTrail and the evidence bucket, each Connected or the exact failure
    with its fix. Exit 0 when everything connects, 4 otherwise (2 for an unregistered --account)."""
    from shared.accounts import RegistryError
    from shared.connect import check_connection
    from shared.credentials import UnregisteredAccount, account_access

    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    if account is not None and not re.fullmatch(r"[0-9]{12}", account):
        err.print(f"[red]Not an AWS account id:[/red] {account!r} (12 digits)")
        raise typer.Exit(render.EXIT_USAGE)

    async def local() -> ConnectionTestResult:
        access = account_access(settings)
        if account is None:
            return await check_connection(settings, access.base)
        target = await access.clients(account)
        described = access.describe_access(account) if target is not access.base else None
        return await check_connection(settings, target, access=described, account_id=account)

    async def via_nats() -> ConnectionTestResult:
        client = await KushimClient.connect(broker_url(settings))
        try:
            return await client.connection_test(request_id=f"cli-{uuid.uuid4().hex}", account_id=account)
        finally:
            await client.close()

    try:
        result = asyncio.run(via_nats() if remote else local())
    except CouldNotRun as exc:
        err.print(f"[red]Could not run:[/red] {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    except (UnregisteredAccount, RegistryError) as exc:
        err.print(f"[red]Cannot test:[/red] {exc}")
        raise typer.Exit(render.EXIT_USAGE) from None
    if result.error:
        err.print(f"[red]Cannot test:[/red] {result.error}")
        raise typer.Exit(render.EXIT_USAGE)
    if output is Output.json:
        out.print_json(result.model_dump_json())
    else:
        account = result.account_id or "unknown"
        out.print(f"AWS account {account}, region {result.region}")
        for probe in result.services:
            if probe.connected:
                out.print(f"  [green]✓[/green] {probe.service:<16} Connected ({probe.api_call})")
            else:
                out.print(f"  [red]✗[/red] {probe.service:<16} {probe.code}: {probe.message}")
                out.print(f"    [dim]fix: {probe.fix}[/dim]")
    raise typer.Exit(render.EXIT_OK if result.ok else render.EXIT_COULD_NOT_RUN)


@app.command()
def controls() -> None:
    """Print the checks, their controls, and whether each gates its control's verdict."""
    settings = load_settings()
    gating = gating_table(settings.mfa_scope)
    table = Table(title=f"Checks and control verdicts (KUSHIM_MFA_SCOPE={settings.mfa_scope})")
    for col in ("Control", "Check id", "Role", "Severity", "Title"):
        table.add_column(col)
    for info in sorted(CATALOG, key=lambda i: (i.control, i.id)):
        role = "gating" if gating[info.id] else "advisory"
        table.add_row(info.control.value, info.id, role, info.severity.value, info.title)
    out.print(table)
    for control, title in CONTROL_TITLES.items():
        out.print(f"{control.value}: {title}")
    out.print(
        "A control is FAIL if any gating check FAILs; else ERROR if any gating check is ERROR or a planned "
        "(account, service) never reported; else PASS. Advisory checks never change the verdict."
    )


@app.command()
def policy(
    bucket_pattern: Annotated[str, typer.Option(help="Evidence bucket name or pattern.")] = "kushim-evidence-storage-*",
    service: Annotated[
        list[Service] | None, typer.Option("--service", "-s", help="Only these collectors (default: all).")
    ] = None,
) -> None:
    """Print the least-privilege, read-only IAM policy for the checks Kushim runs, plus the evidence bucket's object
    actions. Generated from the operations each collector calls (AWS's Service Authorization Reference names)."""
    services = [s.value for s in (service or list(Service))]
    out.print_json(json.dumps(read_only_policy(services, bucket_pattern)))


@app.command(name="settings")
def showload_settings() -> None:
    """List every setting, its environment variable and default."""
    table = Table(title="Settings (environment variables; also read from ./.env)")
    for col in ("Variable", "Default", "Meaning"):
        table.add_column(col, overflow="fold")
    variables = setting_env_names()
    for name, field in Settings.model_fields.items():
        var = " / ".join(variables[name])
        default: Any = "(computed)" if field.default_factory is not None else field.default
        table.add_row(var, "" if default is None else str(default), field.description or "")
    out.print(table)


app.command()(runs)
app.command()(history)
app.command()(export)
app.add_typer(db_app)
app.add_typer(evidence_app)
app.add_typer(accounts_app)
app.add_typer(nats_app)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
