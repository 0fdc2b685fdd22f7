"""`kushim nats`: the JetStream topology (streams and durable consumers) on the broker of KUSHIM_NATS_URL."""

from __future__ import annotations

import asyncio

import nats
import typer

from services.cli import render
from services.cli.client import safe_url
from services.cli.common import err, load_settings, out
from shared.log import configure_logging
from shared.nats import all_consumers, declare_topology, stream_configs
from shared.topology import TopologyError, verify_topology

nats_app = typer.Typer(
    name="nats",
    help="The JetStream topology on KUSHIM_NATS_URL: create it once per release with an administrator's user, or "
    "check it.",
    no_args_is_help=True,
)


def _url() -> str:
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    if not settings.nats_url:
        err.print("[red]KUSHIM_NATS_URL is not set:[/red] name the broker (with a user allowed to create streams).")
        raise typer.Exit(render.EXIT_USAGE)
    return settings.nats_url


@nats_app.command()
def init() -> None:
    """Create or update every stream and durable consumer (run once per release, before the services start with
    KUSHIM_DECLARE_TOPOLOGY=false; on Kubernetes as a Job). Needs a NATS user allowed to create streams and
    consumers (deploy/nats/nats-server.conf: admin). Safe to run again."""
    url = _url()
    settings = load_settings()

    async def run() -> None:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0, name="kushim-nats-init")
        try:
            await declare_topology(nc.jetstream(), settings)
            await verify_topology(nc.jetstream(), settings)
        finally:
            await nc.close()

    try:
        asyncio.run(run())
    except Exception as exc:
        err.print(f"[red]Could not create the topology on {safe_url(url)}:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    out.print(
        f"JetStream topology ready on {safe_url(url)}: {len(stream_configs(settings))} streams, "
        f"{len(all_consumers())} durable consumers."
    )


@nats_app.command()
def check() -> None:
    """Check that every stream and durable consumer exists and has this Kushim's limits; exit 4 otherwise."""
    url = _url()
    settings = load_settings()

    async def run() -> int:
        nc = await nats.connect(url, connect_timeout=5, max_reconnect_attempts=0, name="kushim-nats-check")
        try:
            return len(await verify_topology(nc.jetstream(), settings))
        finally:
            await nc.close()

    try:
        drift = asyncio.run(run())
    except TopologyError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    except Exception as exc:
        err.print(f"[red]Could not check the topology on {safe_url(url)}:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    if drift:
        err.print(
            f"[yellow]{drift} stream or consumer setting(s) differ from this Kushim's: run `kushim nats init`.[/yellow]"
        )
        raise typer.Exit(render.EXIT_COULD_NOT_RUN)
    out.print(f"JetStream topology on {safe_url(url)} is complete.")
