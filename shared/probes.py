"""The HTTP endpoints of a running Kushim process, served by uvicorn inside the services' own event loop:

- `/healthz`: 200 whenever the event loop answers (liveness);
- `/readyz`: 200 while every service of the process is started and its broker connected to NATS, 503 otherwise
  (readiness: a PING round trip to the server, so a lost server shows within the probe's timeout);
- `/metrics`: the process's Prometheus registry in the text exposition format.

uvicorn runs as a background task: no lifespan, no signal handlers of its own (the CLI's handlers stop the services,
then this server), no access log (probes every few seconds would drown the service's own lines).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import structlog
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.observability import Observability
from shared.settings import Settings

log = structlog.get_logger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_SERVE_PORT = 8080
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - `kushim serve` runs in a container: the kubelet and Prometheus are outside
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class HttpBinding:
    host: str
    port: int


def http_binding(settings: Settings, *, serve: bool) -> HttpBinding | None:
    """Where the HTTP server listens: `kushim serve` on 0.0.0.0:8080 unless KUSHIM_HTTP_HOST / KUSHIM_HTTP_PORT say
    otherwise; `kushim up` only when KUSHIM_HTTP_PORT is set (on 127.0.0.1 by default). Port 0: no server."""
    port = settings.http_port if settings.http_port is not None else (DEFAULT_SERVE_PORT if serve else 0)
    if port == 0:
        return None
    host = settings.http_host or (ALL_INTERFACES if serve else LOOPBACK)
    return HttpBinding(host, port)


class ProbeApp:
    """A minimal ASGI application: three GET endpoints, no framework."""

    def __init__(self, observability: Observability) -> None:
        self._observability = observability

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off; websockets are not served
            return
        if scope["method"] not in ("GET", "HEAD"):
            await _respond(send, 405, b"method not allowed\n", extra=[(b"allow", b"GET, HEAD")])
            return
        path = scope["path"]
        if path == "/healthz":
            await _respond(send, 200, b"ok\n")
        elif path == "/readyz":
            ready, reason = await self._observability.readiness()
            await _respond(send, 200 if ready else 503, f"{reason}\n".encode())
        elif path == "/metrics":
            await _respond(send, 200, generate_latest(self._observability.registry), content_type=CONTENT_TYPE_LATEST)
        else:
            await _respond(send, 404, b"not found: /healthz, /readyz, /metrics\n")


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its signal handling: the process's own handlers (`kushim serve`, `kushim up`) decide when
    to stop, and stop this server after the services."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listening_socket(host: str, port: int) -> socket.socket:
    """Bound here rather than by uvicorn, which exits the process when it cannot bind: a busy port is an error the
    caller reports."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[
        0
    ]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class HttpServerError(RuntimeError):
    """The HTTP server could not start (the port is taken, the address does not exist here)."""


@contextlib.asynccontextmanager
async def http_server(observability: Observability, binding: HttpBinding) -> AsyncIterator[HttpBinding]:
    """Serve /healthz, /readyz and /metrics on `binding` until the block exits; yields the address actually bound."""
    try:
        sock = _listening_socket(binding.host, binding.port)
    except OSError as exc:
        raise HttpServerError(
            f"cannot listen on {binding.host}:{binding.port} for /healthz, /readyz and /metrics "
            f"({exc.strerror or exc}): choose another KUSHIM_HTTP_PORT (0: no HTTP server)"
        ) from exc
    bound = HttpBinding(binding.host, int(sock.getsockname()[1]))
    config = uvicorn.Config(
        ProbeApp(observability),
        lifespan="off",
        log_config=None,
        access_log=False,
        ws="none",
        server_header=False,
        timeout_graceful_shutdown=2,
    )
    server = _EmbeddedServer(config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="kushim-http")
    try:
        while not server.started:
            if task.done():
                task.result()  # raises what stopped it
                raise HttpServerError(f"the HTTP server on {bound.host}:{bound.port} stopped at start")
            await asyncio.sleep(0.01)
        log.info("http_server_started", host=bound.host, port=bound.port, paths="/healthz /readyz /metrics")
        yield bound
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await task
        sock.close()
