"""Coalescing on the whole pipeline (real nats-server, moto, SQLite): 1,000 identical run requests in a burst lead
to at most one scan in flight at any time, and every requester gets a RunCompleted with its own request_id."""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from services.cli.demo_account import seed_demo_account
from services.cli.stack import running_stack
from shared import subjects
from shared.messages import RunCompleted, RunPlanned, RunState
from shared.settings import Settings
from tests.helpers import eventually, nats_client, stream_models, stream_payloads

REQUESTS = 1000


@pytest.mark.timeout(120)
async def test_a_thousand_identical_requests_share_scans_and_all_get_their_completion(
    make_settings: Callable[..., Settings], moto_endpoint: str, tmp_path: Path
) -> None:
    seed_demo_account(moto_endpoint)
    settings = make_settings(aws_endpoint_url=moto_endpoint, log_level="WARNING")
    ids = [f"burst-{i:04d}" for i in range(REQUESTS)]
    async with (
        running_stack(settings, migrate=True, nats_store=tmp_path / "js") as stack,
        nats_client(stack.url) as nc,
    ):
        js = nc.jetstream()
        now = datetime.now(UTC).isoformat()
        pending = [
            js.publish(
                subjects.RUNS_REQUESTED,
                json.dumps({"request_id": rid, "services": ["iam"], "requested_at": now}).encode(),
                stream=subjects.STREAM_RUNS,
                headers={"Nats-Msg-Id": rid},
            )
            for rid in ids
        ]
        for start in range(0, REQUESTS, 100):
            await asyncio.gather(*pending[start : start + 100])

        async def all_answered() -> bool:
            done = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_COMPLETED, RunCompleted)
            return len({c.request_id for c in done}) >= REQUESTS

        await eventually(all_answered, timeout=90, interval=0.5, what="a RunCompleted for every request")
        completions = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_COMPLETED, RunCompleted)
        scans = len(await stream_payloads(nc, subjects.STREAM_CHECKS, "kushim.checks.>"))
        plans = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_PLANNED, RunPlanned)
        planned = len(plans)

    assert sorted({c.request_id for c in completions}) == ids
    assert all(c.state is RunState.COMPLETE for c in completions)
    assert len(completions) == REQUESTS  # one each, no duplicates
    assert scans == planned  # one IAM scan per run
    assert planned <= REQUESTS // 20, f"{planned} runs for {REQUESTS} identical requests"
    # At most one scan in flight at any time: each run was planned after the previous one completed.
    completed_at = {c.run_id: c.completed_at for c in completions}
    lifetimes = sorted((p.planned_at, completed_at[p.run_id]) for p in plans)
    for (_, previous_end), (next_start, _) in itertools.pairwise(lifetimes):
        assert next_start >= previous_end
    print(f"measured: {REQUESTS} requests -> {planned} runs, {scans} scans, {len(completions)} completions")
