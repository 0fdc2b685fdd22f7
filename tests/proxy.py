"""A TCP proxy a test controls, to simulate outages of servers that are not ours to stop (PostgreSQL, moto's S3).

    async with TcpProxy("127.0.0.1", 5432) as proxy:
        url = f"postgresql+asyncpg://user@127.0.0.1:{proxy.port}/db"
        ...
        await proxy.cut()        # every open connection is reset; new ones are reset as soon as they are accepted
        ...
        proxy.restore()          # new connections are forwarded again

It listens on a free loopback port and forwards each accepted connection to the target, in the event loop of the
test that started it. The listening socket stays bound while the proxy is cut, so the port never changes hands.
Two kinds of outage:

- `"reset"` (default): connections are closed with a TCP RST (SO_LINGER 0), the client sees "connection reset"
  at once, as from a crashed server or a refusing firewall;
- `"blackhole"`: new connections are accepted and whatever they send is swallowed, nothing ever comes back (a
  network partition: the client waits for its own timeout). On `restore()` the swallowed connections are reset.

Latency: `TcpProxy(..., delay=0.05)` holds each request `delay` seconds before forwarding it, as a distant server
would. A request is a client's turn to speak: the first bytes it sends on a connection, and the first it sends after
the target has answered (HTTP/1.x, with or without keep-alive; a `100 Continue` answer starts a new turn, so a body
sent after one is held again). Pumps of other connections go on meanwhile; `delayed` counts the held turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Literal, Self

Mode = Literal["reset", "blackhole"]

_BUFFER = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close the connection with a TCP RST rather than a FIN: the peer fails at once instead of reading EOF."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Link:
    """One client connection and its connection to the target, with the two pumps between them."""

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def reset(self) -> None:
        _reset(self.client)
        _reset(self.upstream)
        for task in self.tasks:
            task.cancel()


class _Turn:
    """Whose turn it is on one delayed connection: True until the client spoke, again once the target answered."""

    __slots__ = ("client_to_speak",)

    def __init__(self) -> None:
        self.client_to_speak = True


class TcpProxy:
    """Forwards 127.0.0.1:`port` to `target_host`:`target_port`, until `cut()`; see the module's docstring."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        record: bool = False,
        delay: float = 0.0,
    ) -> None:
        if delay < 0:
            raise ValueError("delay must be >= 0")
        self.target_host = target_host
        self.target_port = target_port
        self.host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._mode: Mode | None = None
        self.accepted = 0
        """Connections accepted since start, forwarded or not."""
        self.forwarded = 0
        """Connections forwarded to the target."""
        self.refused = 0
        """Connections reset or swallowed because the proxy was cut."""
        self.sent: bytearray | None = bytearray() if record else None
        """With `record=True`: every byte clients sent to the target (what went over the wire)."""
        self.delay = delay
        """Seconds each request (client turn) is held before it is forwarded; 0: none."""
        self.delayed = 0
        """Client turns (requests) held `delay` seconds since start (only counted when `delay` > 0)."""

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("proxy already started")
        self._server = await asyncio.start_server(self._handle, self.host, self._port, reuse_address=True)
        self._port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            link.reset()
        self._release_held()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # --- where it listens ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("proxy not started")
        return self._port

    @property
    def url(self) -> str:
        """`http://host:port`: an endpoint URL for HTTP clients (moto)."""
        return f"http://{self.host}:{self.port}"

    # --- outages ------------------------------------------------------------------------------------

    @property
    def is_cut(self) -> bool:
        return self._mode is not None

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def cut(self, mode: Mode = "reset") -> None:
        """Reset every open connection; from now on new connections are reset (or swallowed, `"blackhole"`)."""
        self._mode = mode
        for link in list(self._links):
            link.reset()
        self._links.clear()
        await asyncio.sleep(0)  # let the pumps see their cancellation

    def restore(self) -> None:
        """Forward new connections again; connections swallowed by a blackhole are reset."""
        self._mode = None
        self._release_held()

    def _release_held(self) -> None:
        for writer in list(self._held):
            _reset(writer)
        self._held.clear()

    # --- forwarding ---------------------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            if task is not None:
                self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._mode is not None:
            self.refused += 1
            await self._refuse(reader, writer, self._mode)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _reset(writer)  # the target itself is down: the client sees the same as with a cut
            return
        if self._mode is not None:  # cut while connecting
            self.refused += 1
            _reset(up_writer)
            _reset(writer)
            return
        self.forwarded += 1
        link = _Link(writer, up_writer)
        self._links.add(link)
        turn = _Turn()
        link.tasks = [
            asyncio.create_task(self._pump_requests(reader, up_writer, turn)),
            asyncio.create_task(self._pump_answers(up_reader, writer, turn)),
        ]
        try:
            await asyncio.gather(*link.tasks, return_exceptions=True)
        finally:
            self._links.discard(link)
            writer.close()
            up_writer.close()

    async def _refuse(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, mode: Mode) -> None:
        if mode == "reset":
            _reset(writer)
            return
        self._held.add(writer)
        try:
            while await reader.read(_BUFFER):  # swallow until the client gives up or restore() resets it
                pass
        except OSError:
            pass
        finally:
            self._held.discard(writer)
            writer.transport.abort()

    async def _pump_requests(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, turn: _Turn) -> None:
        """Client -> target (recorded in `sent` when asked), with latency: the first chunk of each client turn waits
        `delay` seconds."""
        try:
            while data := await source.read(_BUFFER):
                if turn.client_to_speak and self.delay > 0:
                    turn.client_to_speak = False
                    self.delayed += 1
                    await asyncio.sleep(self.delay)
                if self.sent is not None:
                    self.sent += data
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except OSError:
            sink.transport.abort()

    @staticmethod
    async def _pump_answers(source: asyncio.StreamReader, sink: asyncio.StreamWriter, turn: _Turn) -> None:
        """Target -> client: any answer makes the client's next bytes a new turn (a new request)."""
        try:
            while data := await source.read(_BUFFER):
                turn.client_to_speak = True
                sink.write(data)
                await sink.drain()
            if sink.can_write_eof():
                sink.write_eof()
        except OSError:
            sink.transport.abort()
