"""The schedule: publishes a RunRequested at every cron slot (UTC), with a slot-derived id so that several
scheduler replicas ticking at once produce one run (the stream deduplicates on Nats-Msg-Id)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime

import structlog
from croniter import croniter
from faststream.nats import NatsBroker

from shared import subjects
from shared.messages import RunRequested
from shared.nats import publish_durable

log = structlog.get_logger(__name__)


def next_slot(expression: str, after: datetime) -> datetime:
    """The first slot strictly after `after`, in UTC."""
    return croniter(expression, after.astimezone(UTC)).get_next(datetime).astimezone(UTC)


def slot_request_id(slot: datetime) -> str:
    return f"schedule-{slot.astimezone(UTC):%Y%m%dT%H%MZ}"


def scheduled_request(slot: datetime) -> RunRequested:
    return RunRequested(request_id=slot_request_id(slot), requested_by="kushim-scheduler", requested_at=slot)


class CronLoop:
    def __init__(
        self,
        *,
        broker: NatsBroker,
        expression: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_seconds: float = 5.0,
    ) -> None:
        self._broker = broker
        self._expression = expression
        self._clock = clock
        self._retry_seconds = retry_seconds

    async def publish_slot(self, slot: datetime) -> None:
        request = scheduled_request(slot)
        ack = await publish_durable(
            self._broker,
            subjects.RUNS_REQUESTED,
            request,
            msg_id=request.request_id,
            stream=subjects.STREAM_RUNS,
        )
        log.info("scheduled_run_requested", request_id=request.request_id, duplicate=bool(ack.duplicate))

    async def run(self) -> None:
        slot = next_slot(self._expression, self._clock())
        log.info("schedule_armed", schedule=self._expression, next_run=slot.isoformat())
        while True:
            wait = (slot - self._clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 60.0))
                continue
            try:
                await self.publish_slot(slot)
            except Exception as exc:
                # Same slot again (its id makes a retry safe): a broker restart at 02:00 must not skip a day.
                log.error("scheduled_publish_failed", slot=slot.isoformat(), error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._retry_seconds)
                continue
            slot = next_slot(self._expression, slot)
