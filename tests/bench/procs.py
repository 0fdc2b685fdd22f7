"""What the benchmarks read about the processes they start: CPU time and resident memory from /proc (Linux), and the
command that runs one Kushim service."""

from __future__ import annotations

import os
import sys
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_of(stat: Path) -> float | None:
    """utime + stime (`/proc/.../stat` fields 14 and 15) in seconds; None once the process or thread is gone."""
    try:
        fields = stat.read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
    except (OSError, IndexError, ValueError):
        return None


def process_cpu(pid: int) -> float | None:
    """User + system CPU time of a process."""
    return _cpu_of(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int, tid: int) -> float | None:
    """User + system CPU time of one thread of a process (its main thread: tid == pid)."""
    return _cpu_of(Path(f"/proc/{pid}/task/{tid}/stat"))


def status_kib(pid: int, field_name: str) -> int | None:
    """A `kB` field of /proc/<pid>/status (VmRSS: now, VmHWM: peak so far); None once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def kushim_command(service: str) -> list[str]:
    """`kushim serve <service>` with this interpreter's entry point (or the module when not installed)."""
    script = Path(sys.executable).parent / "kushim"
    if script.exists():
        return [str(script), "serve", service]
    return [sys.executable, "-m", "services.cli.main", "serve", service]


def mib(kib: int | None) -> str:
    return "-" if kib is None else f"{kib / 1024:.0f}"
