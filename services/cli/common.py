"""What every `kushim` command shares: the consoles, the output option, settings and the broker's address."""

from __future__ import annotations

import sys
from enum import StrEnum

import typer
from pydantic import ValidationError
from rich.console import Console

from services.cli import render
from services.cli.state import read_state_url
from shared.settings import Settings


def _console(stderr: bool = False) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    # Piped output keeps long lines (keys, ARNs) whole instead of folding them at 80 columns.
    return Console(stderr=stderr, soft_wrap=True, width=None if stream.isatty() else 120)


out = _console()
err = _console(stderr=True)


class Output(StrEnum):
    table = "table"
    json = "json"


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors(include_input=False)
        )
        err.print(f"[red]Invalid settings:[/red] {problems}")
        raise typer.Exit(render.EXIT_USAGE) from None


def broker_url(settings: Settings) -> str:
    url = settings.nats_url or read_state_url(settings.home)
    if url is None:
        err.print(
            "[red]Kushim is not running:[/red] start it with `kushim up` (it writes "
            f"{settings.home / 'state.json'}) or set KUSHIM_NATS_URL."
        )
        raise typer.Exit(render.EXIT_COULD_NOT_RUN)
    return url
