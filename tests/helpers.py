"""Small helpers for tests on a real nats-server."""

from __future__ import annotations

import asyncio
import fnmatch
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import nats
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)


@asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[NatsClient]:
    nc = await nats.connect(url)
    try:
        yield nc
    finally:
        await nc.close()


def _matches(subject: str, pattern: str) -> bool:
    if pattern.endswith(".>"):
        return subject.startswith(pattern[:-1])
    return fnmatch.fnmatchcase(subject, pattern.replace("*", "[!.]*"))


async def stream_payloads(nc: NatsClient, stream: str, subject: str) -> list[bytes]:
    """Every payload stored in `stream` on subjects matching `subject` (NATS wildcards `*` and `>`)."""
    js = nc.jetstream()
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return []
    payloads: list[bytes] = []
    if info.state.messages == 0:
        return payloads
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(stream, seq)
        except NotFoundError:
            continue
        if msg.subject and _matches(msg.subject, subject) and msg.data is not None:
            payloads.append(msg.data)
    return payloads


async def stream_models(nc: NatsClient, stream: str, subject: str, model: type[M]) -> list[M]:
    return [model.model_validate_json(p) for p in await stream_payloads(nc, stream, subject)]


async def eventually(
    probe: Callable[[], Awaitable[bool]], timeout: float = 15.0, interval: float = 0.1, what: str = "condition"
) -> None:
    """Wait until `probe()` is true, or fail the test naming what did not happen."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        if await probe():
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def until(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    """`eventually` for a condition that needs no I/O."""

    async def probe() -> bool:
        return condition()

    await eventually(probe, timeout=timeout, interval=0.02, what=what)


def cli_env(**extra: str) -> dict[str, str]:
    """The test's environment without any KUSHIM_ setting, plus `extra`: what a `kushim` subprocess sees."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUSHIM_")}
    env.update(extra)
    return env


async def kushim(*args: str, env: dict[str, str], timeout: float = 120) -> tuple[int, str, str]:
    """Run the `kushim` command in a subprocess: (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
