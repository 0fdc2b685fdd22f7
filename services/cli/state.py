"""The state file `kushim up` writes in KUSHIM_HOME so that `check` and `report` find the broker."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

STATE_FILE = "state.json"

SERVICE_NAMES = ("evidence", "collector-iam", "collector-s3", "collector-cloudtrail", "scheduler")
"""Every service `kushim serve` can run, in start-up order (consumers first, the scheduler last)."""


def write_state(home: Path, url: str) -> Path:
    home.mkdir(parents=True, exist_ok=True)
    path = home / STATE_FILE
    path.write_text(json.dumps({"nats_url": url, "pid": os.getpid()}, indent=2))
    return path


def read_state_url(home: Path) -> str | None:
    path = home / STATE_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except ValueError:
        return None
    url = data.get("nats_url")
    return url if isinstance(url, str) else None


def clear_state(home: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (home / STATE_FILE).unlink()
