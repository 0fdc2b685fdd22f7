"""Drive a running evidence service over a real nats-server: publish like the scheduler and the collectors, watch
RunCompleted and the durable consumers, ask for reports."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import nats
from faststream.nats import NatsBroker

from services.cli.stack import migrate_database
from services.evidence.app import create_service
from services.evidence.store import EvidenceStore
from services.evidence.upload import Uploader
from shared import subjects
from shared.messages import FindingsReported, ReportPage, RunCompleted, RunPlanned
from shared.nats import make_broker, publish_durable
from shared.service import ServiceApp
from shared.settings import Settings


@dataclass
class Harness:
    app: ServiceApp
    broker: NatsBroker
    nc: Any
    completions: Any  # nats-py subscription on kushim.runs.completed

    async def plan(self, plan: RunPlanned, *, replay: bool = False) -> None:
        msg_id = f"planned:{plan.run_id}" + (f":{uuid.uuid4().hex}" if replay else "")
        await publish_durable(self.broker, subjects.RUNS_PLANNED, plan, msg_id=msg_id, stream=subjects.STREAM_RUNS)

    async def chunks(self, chunks: Sequence[FindingsReported], *, replay: bool = False) -> None:
        for chunk in chunks:
            msg_id = f"findings:{chunk.run_id}:{chunk.account_id}:{chunk.service.value}:{chunk.chunk_index}"
            if replay:
                msg_id += f":{uuid.uuid4().hex}"  # a new Nats-Msg-Id: the stream does not deduplicate it
            await publish_durable(
                self.broker,
                subjects.findings_subject(chunk.service),
                chunk,
                msg_id=msg_id,
                stream=subjects.STREAM_FINDINGS,
            )

    async def next_completion(self, timeout: float = 15.0) -> RunCompleted:
        msg = await self.completions.next_msg(timeout=timeout)
        return RunCompleted.model_validate_json(msg.data)

    async def completions_in_stream(self) -> int:
        info = await self.nc.jetstream().stream_info(subjects.STREAM_RUNS, subjects_filter=subjects.RUNS_COMPLETED)
        return int((info.state.subjects or {}).get(subjects.RUNS_COMPLETED, 0))

    async def drained(self, timeout: float = 15.0) -> None:
        """Wait until both evidence consumers have acked everything in their streams."""
        js = self.nc.jetstream()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pending = 0
            for stream, durable in (
                (subjects.STREAM_RUNS, subjects.DURABLE_EVIDENCE_PLANS),
                (subjects.STREAM_FINDINGS, subjects.DURABLE_EVIDENCE_FINDINGS),
            ):
                info = await js.consumer_info(stream, durable)
                pending += info.num_pending + info.num_ack_pending
            if pending == 0:
                return
            await asyncio.sleep(0.05)
        raise TimeoutError("the evidence consumers did not drain")

    async def report(self, payload: bytes, timeout: float = 5.0) -> ReportPage:
        reply = await self.nc.request(subjects.REPORT_REQUEST, payload, timeout=timeout)
        return ReportPage.model_validate_json(reply.data)


@asynccontextmanager
async def running_evidence(
    settings: Settings, *, store: EvidenceStore | None = None, uploader: Uploader | None = None
) -> AsyncIterator[Harness]:
    assert settings.nats_url is not None
    await migrate_database(settings)  # what `kushim db upgrade` does before `kushim serve evidence`
    app = create_service(settings, url=settings.nats_url, store=store, uploader=uploader)
    await app.start()
    broker = make_broker(settings.nats_url, name="test-publisher", settings=settings)
    nc = None
    try:
        await broker.connect()
        nc = await nats.connect(settings.nats_url)
        completions = await nc.subscribe(subjects.RUNS_COMPLETED)
        yield Harness(app=app, broker=broker, nc=nc, completions=completions)
    finally:
        if nc is not None:
            await nc.close()
        await broker.stop()
        await app.stop()
