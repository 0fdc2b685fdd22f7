"""What the benchmarks print and record: Markdown tables, the numbers in them, and the machine they ran on.

Not a test: pytest does not collect this file, and importing it does nothing."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
from collections.abc import Collection, Iterable
from importlib import metadata
from pathlib import Path
from typing import Any


def fmt(value: float | None, digits: int = 2) -> str:
    """A number for a table cell; `-` when there is none."""
    return "-" if value is None else f"{value:.{digits}f}"


def median(values: Iterable[float | None]) -> float | None:
    """The median of the values there are; None when there are none."""
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def markdown_table(header: str, rows: Iterable[str], *, left: Collection[int] = ()) -> str:
    """`header` (`| a | b |`), its alignment row and `rows`, one a line. Every column is right-aligned but those
    numbered in `left` (0 is the first, -1 the last)."""
    columns = header.count(" | ") + 1
    rule = "|" + "".join("---|" if {i, i - columns} & set(left) else "---:|" for i in range(columns))
    return "\n".join([header, rule, *rows])


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def machine(packages: Iterable[str], *, load_average: bool = False) -> dict[str, Any]:
    """The machine, for a benchmark's JSON: CPU model and count, Python, platform, the load average (if asked) and the
    installed versions of `packages` (None: not installed)."""
    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    if load_average:
        info["load_average"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    info["packages"] = {name: _version(name) for name in packages}
    return info
