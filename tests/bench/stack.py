"""The Kushim services the benchmarks start, each as its own `kushim serve <service>` process: their environment,
starting them, waiting until their durable consumers pull, watching them and stopping them; also moto's server in
the benchmark's own process.

Not a test: pytest does not collect this file, and importing it does nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import nats
from nats.js import JetStreamContext

from services.cli.client import CouldNotRun, KushimClient
from shared.messages import ReportRequest
from shared.nats import all_consumers
from tests.bench.procs import kushim_command, process_cpu, thread_cpu

T = TypeVar("T")


def base_env(home: Path, *, nats_url: str, region: str, settings: Mapping[str, str]) -> dict[str, str]:
    """The environment of one `kushim serve` process: the caller's minus every AWS_* / KUSHIM_* / MOTO_*; HOME and
    KUSHIM_HOME in `home`, the NATS URL, no probe/metrics server (several services share this machine's ports), no
    schedule, the AWS region and no AWS config file, credentials file or instance metadata; then `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "KUSHIM_", "MOTO_"))}
    env.update(
        {
            "HOME": str(home / "home"),
            "KUSHIM_HOME": str(home / "kushim-home"),  # not the caller's (its accounts.toml, its credentials)
            "KUSHIM_NATS_URL": nats_url,
            "KUSHIM_HTTP_PORT": "0",
            "KUSHIM_SCHEDULE_ENABLED": "false",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    env.update(settings)
    return env


@dataclass
class ServiceProcess:
    """One `kushim serve <service>` process, its output going to `log_file`."""

    name: str
    """`evidence`, `collector-iam-2`, ...: its log file's name and its name in the results."""
    service: str
    """The `kushim serve` argument."""
    process: subprocess.Popen[bytes]
    log_file: Path
    """Its standard output and error."""

    def alive(self) -> bool:
        return self.process.poll() is None

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> tuple[float, float]:
        """(whole process, main thread = event loop) CPU seconds so far."""
        return process_cpu(self.pid) or 0.0, thread_cpu(self.pid, self.pid) or 0.0

    def log_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")[-chars:]
        return ""

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (its graceful stop), then wait; SIGKILL if it does not stop in time. Its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return int(self.process.returncode)


def start_service(service: str, env: Mapping[str, str], home: Path, *, name: str | None = None) -> ServiceProcess:
    """`kushim serve <service>` with `env`, its output in `<home>/<name>.log` (`name` defaults to `service`). It runs
    in `home`, so that no `.env` file of the caller's is read; `home/home` (`base_env`'s HOME) is created."""
    (home / "home").mkdir(parents=True, exist_ok=True)
    log_file = home / f"{name or service}.log"
    with log_file.open("wb") as log:
        process = subprocess.Popen(kushim_command(service), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=home)
    return ServiceProcess(name or service, service, process, log_file)


def exited(services: Sequence[ServiceProcess]) -> list[str]:
    """A line (exit code and log tail) for each process that is no longer running."""
    return [
        f"{svc.name} exited with code {svc.process.returncode}: {svc.log_tail()}"
        for svc in services
        if svc.process.poll() is not None
    ]


@dataclass
class StopStats:
    seconds: float
    returncode: int | None
    """None: killed, as it had not stopped in time."""


def stop_services(services: Sequence[ServiceProcess], timeout: float) -> dict[str, StopStats]:
    """SIGTERM every service at once (their graceful stop), then wait up to `timeout` in all; SIGKILL what does not
    stop in time."""
    started = time.perf_counter()
    for svc in services:
        if svc.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                svc.process.send_signal(signal.SIGTERM)
    stats: dict[str, StopStats] = {}
    for svc in services:
        try:
            svc.process.wait(timeout=max(0.1, timeout - (time.perf_counter() - started)))
        except subprocess.TimeoutExpired:
            svc.process.kill()
            svc.process.wait()
            stats[svc.name] = StopStats(time.perf_counter() - started, None)
            continue
        stats[svc.name] = StopStats(time.perf_counter() - started, svc.process.returncode)
    return stats


async def wait_consumers(
    js: JetStreamContext,
    pulls: Mapping[tuple[str, str], int],
    check: Callable[[], None],
    *,
    poll: float,
    together: bool = False,
) -> None:
    """Until each durable consumer `(stream, durable)` of `pulls` has at least that many pull requests waiting (its
    subscribers are fetching). `check` runs before every round and raises to give up (a process exited, time is up).
    A consumer seen ready is not asked again, unless `together`: then all must be ready in one round."""
    pending = dict(pulls)
    while pending:
        check()
        ready = []
        for key, wanted in sorted(pending.items()):
            with contextlib.suppress(Exception):  # not declared yet
                info = await js.consumer_info(*key)
                if (info.num_waiting or 0) >= wanted:
                    ready.append(key)
        if not together or len(ready) == len(pending):
            for key in ready:
                del pending[key]
        if pending:
            await asyncio.sleep(poll)


async def wait_ready(
    url: str, services: Sequence[ServiceProcess], timeout: float, pulls: Mapping[str, int] | None = None
) -> None:
    """Until every durable consumer has a pull request waiting (`pulls`: how many for some durables, e.g. one per
    replica) and the evidence service answers a report request; fails at once if a service process exits."""
    deadline = time.monotonic() + timeout

    def check_alive() -> None:
        dead = exited(services)
        if dead:
            raise RuntimeError("; ".join(dead))
        if time.monotonic() > deadline:
            raise RuntimeError(f"the services were not ready within {timeout:.0f}s")

    wanted = pulls or {}
    nc = await nats.connect(url, connect_timeout=5)
    try:
        consumers = {(spec.stream, spec.durable): wanted.get(spec.durable, 1) for spec in all_consumers()}
        await wait_consumers(nc.jetstream(), consumers, check_alive, poll=0.1)
    finally:
        await nc.close()
    client = await KushimClient.connect(url)
    try:
        while True:
            check_alive()
            try:
                await client.report_page(ReportRequest(request_id="bench-readiness-probe", page_size=1), timeout=2.0)
                return
            except CouldNotRun:
                await asyncio.sleep(0.1)
    finally:
        await client.close()


async def watched(work: Awaitable[T], services: Sequence[ServiceProcess]) -> T:
    """Await `work`, but give up at once (with the service's log) when a service process dies meanwhile."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=0.5)
            if done:
                return task.result()
            dead = exited(services)
            if dead:
                raise RuntimeError("a service died during the run: " + "; ".join(dead))
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@contextlib.contextmanager
def threaded_moto() -> Iterator[str]:
    """moto's ThreadedMotoServer in this process, on a free loopback port: its endpoint. Stopped on exit."""
    from moto.server import ThreadedMotoServer

    server: Any = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()
