"""A service's lifecycle: declare (or check) the topology, start the broker and background loops, stop gracefully."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import nats
import structlog
from faststream.nats import NatsBroker

from shared.consume import InFlight
from shared.settings import Settings
from shared.topology import ensure_topology

log = structlog.get_logger(__name__)

Hook = Callable[[], Awaitable[None]]


@dataclass
class ServiceApp:
    """One Kushim service: a broker with its subscribers, plus start-up checks and background loops."""

    name: str
    broker: NatsBroker
    url: str
    settings: Settings
    on_start: list[Hook] = field(default_factory=list)
    background: list[Hook] = field(default_factory=list)
    on_stop: list[Hook] = field(default_factory=list)
    in_flight: InFlight = field(default_factory=InFlight)
    """The handlers its consumers are running (give it to each `Consumer`): `stop` waits for them, then hands back
    what is still running after KUSHIM_SHUTDOWN_GRACE_SECONDS."""
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _running: bool = field(default=False, init=False)

    @property
    def running(self) -> bool:
        """Started (topology checked, hooks run, broker subscribed) and not stopping."""
        return self._running

    async def connected(self, timeout: int = 2) -> bool:
        """Is the broker connected to NATS right now? A PING answered within `timeout` proves it (a connection the
        server dropped without a word would otherwise look connected until the client's own pings fail)."""
        try:
            nc = self.broker.connection
        except Exception:  # never connected, or stopped
            return False
        if nc is None or not nc.is_connected:
            return False
        try:
            await nc.flush(timeout=timeout)
        except Exception:
            return False
        return True

    async def start(self) -> None:
        nc = await nats.connect(self.url, connect_timeout=5, max_reconnect_attempts=3, name=f"kushim-{self.name}-setup")
        try:
            await ensure_topology(nc.jetstream(), self.settings)
        finally:
            await nc.close()
        try:
            for hook in self.on_start:
                await hook()
            await self.broker.start()
        except BaseException:
            # release what earlier hooks opened (engines, clients) before reporting the failure
            for stop_hook in self.on_stop:
                with contextlib.suppress(Exception):
                    await stop_hook()
            raise
        for loop in self.background:
            self._tasks.append(asyncio.create_task(self._guarded(loop), name=f"{self.name}-background"))
        self._running = True
        log.info("service_started", service=self.name)

    async def _guarded(self, loop: Hook) -> None:
        while True:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a background loop must not die silently
                log.error("background_loop_failed", service=self.name, error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(2.0)

    async def stop(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        # The broker stops fetching at once and waits for the running handlers (its graceful timeout is a little
        # longer than the grace); past the grace they are handed back, nacked while the connection is still open.
        hand_back = asyncio.create_task(self.in_flight.hand_back_after(self.settings.shutdown_grace_seconds))
        if self.in_flight.running:
            log.info("service_stopping", service=self.name, running=self.in_flight.running)
        try:
            await self.broker.stop()
        finally:
            hand_back.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                handed_back = await hand_back
                if handed_back:
                    log.warning("work_handed_back", service=self.name, messages=handed_back)
        for hook in self.on_stop:
            await hook()
        log.info("service_stopped", service=self.name)
