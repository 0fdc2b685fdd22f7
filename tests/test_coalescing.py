"""Coalescing on the whole pipeline (real nats-server, moto, SQLite): 1,000 identical run requests in a burst lead
to a few scans, never two of them in flight, and every requester gets exactly one RunCompleted with its own
request_id; a run that completes while no scheduler runs still releases its claim."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from nats.aio.msg import Msg

from services.cli.stack import SERVICES, migrate_database, running_stack
from shared import subjects
from shared.embedded import EmbeddedNats
from shared.messages import RunCompleted, RunJoined, RunPlanned, RunState, run_id_for
from shared.service import ServiceApp
from shared.settings import Settings
from tests.helpers import eventually, nats_client, stream_models

REQUESTS = 1000


def _request(request_id: str) -> bytes:
    body = {"request_id": request_id, "services": ["iam"], "requested_at": datetime.now(UTC).isoformat()}
    return json.dumps(body).encode()


async def _count(nc: Any, subject: str) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_RUNS, subjects_filter=subject)
    return int((info.state.subjects or {}).get(subject, 0))


@pytest.mark.timeout(120)
async def test_a_thousand_identical_requests_share_scans_and_each_gets_its_own_completion(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, log_level="WARNING")
    ids = [f"burst-{i:04d}" for i in range(REQUESTS)]
    answers: list[RunCompleted] = []
    answered: set[str] = set()
    all_answered = asyncio.Event()

    async def on_completed(msg: Msg) -> None:
        answers.append(RunCompleted.model_validate_json(msg.data))
        answered.add(answers[-1].request_id)
        if len(answered) >= REQUESTS:
            all_answered.set()

    async with running_stack(settings, migrate=True) as stack, nats_client(stack.url) as nc:
        await nc.subscribe(subjects.RUNS_COMPLETED, cb=on_completed)
        await nc.flush()
        js = nc.jetstream()
        started = time.monotonic()
        for start in range(0, REQUESTS, 100):
            await asyncio.gather(
                *(
                    js.publish(
                        subjects.RUNS_REQUESTED,
                        _request(rid),
                        stream=subjects.STREAM_RUNS,
                        headers={"Nats-Msg-Id": rid},
                    )
                    for rid in ids[start : start + 100]
                )
            )
        published = time.monotonic() - started
        await asyncio.wait_for(all_answered.wait(), 90)
        elapsed = time.monotonic() - started
        await asyncio.sleep(1.0)  # anything duplicated would arrive now
        plans = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_PLANNED, RunPlanned)
        joined = await _count(nc, subjects.RUNS_JOINED)
        in_stream = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_COMPLETED, RunCompleted)
        checks = await _count_checks(nc)

    # Every requester: exactly one RunCompleted, its own request_id, from a run that scanned.
    assert sorted(a.request_id for a in in_stream) == ids
    assert sorted(a.request_id for a in answers) == ids  # what a subscriber heard: no copies either
    assert all(a.state is RunState.COMPLETE for a in answers)
    assert {a.run_id for a in answers} == {p.run_id for p in plans}
    assert len(plans) + joined == REQUESTS
    assert checks == len(plans)  # one IAM scan per run
    assert len(plans) <= REQUESTS // 10, f"{len(plans)} runs for {REQUESTS} identical requests"

    # Never two runs in flight: each run was planned after the one before it completed (the database's record).
    with sqlite3.connect(settings.effective_database_url.split(":///", 1)[1]) as db:
        rows = db.execute("SELECT planned_at, completed_at FROM evidence_runs ORDER BY planned_at").fetchall()
        owed = db.execute(
            "SELECT COUNT(*) FROM evidence_run_requests WHERE published_state IS NULL OR published_state != 'COMPLETE'"
        ).fetchone()[0]
        joiners = db.execute("SELECT COUNT(*) FROM evidence_run_requests").fetchone()[0]
    lifetimes = [(datetime.fromisoformat(p), datetime.fromisoformat(c)) for p, c in rows]
    assert len(lifetimes) == len(plans)
    for (_, previous_end), (next_start, _) in itertools.pairwise(lifetimes):
        assert next_start >= previous_end
    assert (joiners, owed) == (joined, 0)
    print(
        f"\nmeasured: {REQUESTS} identical requests -> {len(plans)} runs ({len(plans)} IAM scans), {joined} joined, "
        f"{len(answers)} RunCompleted; published in {published:.1f}s, all answered {elapsed:.1f}s after the first"
    )


async def _count_checks(nc: Any) -> int:
    info = await nc.jetstream().stream_info(subjects.STREAM_CHECKS)
    return int(info.state.messages)


@pytest.mark.timeout(90)
async def test_a_run_completing_while_no_scheduler_runs_still_releases_its_claim(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    """The scheduler plans a run and stops; the run completes (collector, evidence) while no scheduler runs; the
    next scheduler releases the claim from its durable consumer, and the next identical request leads a new run
    (no RunJoined, no old result)."""
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, log_level="WARNING")
    await migrate_database(settings)
    started: list[ServiceApp] = []

    async def start(name: str) -> ServiceApp:
        app = SERVICES[name](settings, url=nats_server.url)
        await app.start()
        started.append(app)
        return app

    async with nats_client(nats_server.url) as nc:
        js = nc.jetstream()
        try:
            await start("evidence")
            scheduler = await start("scheduler")
            await js.publish(subjects.RUNS_REQUESTED, _request("first"), headers={"Nats-Msg-Id": "first"})

            async def planned(count: int) -> bool:
                return await _count(nc, subjects.RUNS_PLANNED) == count

            await eventually(lambda: planned(1), what="the first run planned")
            await scheduler.stop()
            started.remove(scheduler)

            await start("collector-iam")  # the run completes now, with no scheduler running

            async def completed() -> bool:
                return await _count(nc, subjects.RUNS_COMPLETED) == 1

            await eventually(completed, timeout=30, what="the first run completed")
            kv = await js.key_value("KUSHIM_COALESCE")
            claims = [k for k in await kv.keys() if k.startswith("scope.")]
            assert len(claims) == 1  # still claimed: nobody has released it yet

            await start("scheduler")

            async def released() -> bool:
                return [k for k in await kv.keys() if k.startswith("scope.")] == []

            await eventually(released, what="the claim released by the restarted scheduler")
            await js.publish(subjects.RUNS_REQUESTED, _request("second"), headers={"Nats-Msg-Id": "second"})
            await eventually(lambda: planned(2), what="the second run planned")

            async def second_done() -> bool:
                return await _count(nc, subjects.RUNS_COMPLETED) == 2

            await eventually(second_done, timeout=30, what="the second run completed")
            done = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_COMPLETED, RunCompleted)
            assert [(c.request_id, c.run_id) for c in done] == [
                ("first", run_id_for("first")),
                ("second", run_id_for("second")),
            ]
            assert await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_JOINED, RunJoined) == []
        finally:
            for app in reversed(started):
                await app.stop()
