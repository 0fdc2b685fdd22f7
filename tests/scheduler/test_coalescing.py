"""Coalescing in the scheduler, on a real nats-server (moto answers sts:GetCallerIdentity): identical requests
join the run in flight, a completed run releases its claim, and every decision survives redelivery. RunCompleted
messages are published here by hand (the evidence service's part is tested in tests/evidence/test_joins.py and
on the whole stack in tests/test_coalescing.py)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue

from services.scheduler import app as scheduler_app
from services.scheduler.app import create_service
from services.scheduler.coalesce import (
    COALESCE_BUCKET,
    Claim,
    Coalescer,
    Decision,
    Role,
    claim_key,
    request_key,
    scope_key,
)
from shared import subjects
from shared.consume import Rejected
from shared.embedded import EmbeddedNats
from shared.messages import RunCompleted, RunJoined, RunPlanned, RunRejected, RunState, Service, run_id_for
from shared.nats import make_broker
from shared.service import ServiceApp
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT
from tests.helpers import eventually, stream_models

IAM_SCOPE = scope_key(None, {MOTO_ACCOUNT: ["us-east-1"]}, [Service.IAM])


async def request(nc: NatsClient, request_id: str, *, msg_id: str | None = None, **extra: Any) -> None:
    body = {"request_id": request_id, "services": ["iam"], "requested_at": datetime.now(UTC).isoformat(), **extra}
    await nc.jetstream().publish(
        subjects.RUNS_REQUESTED,
        json.dumps(body).encode(),
        stream=subjects.STREAM_RUNS,
        headers={"Nats-Msg-Id": msg_id or request_id},
    )


async def complete(nc: NatsClient, run_id: str, request_id: str) -> None:
    """What the evidence service publishes when the run ends."""
    done = RunCompleted(
        run_id=run_id,
        request_id=request_id,
        state=RunState.COMPLETE,
        controls={},
        findings_total=0,
        findings_by_status={},
        completed_at=datetime.now(UTC),
    )
    await nc.jetstream().publish(
        subjects.RUNS_COMPLETED,
        done.model_dump_json().encode(),
        stream=subjects.STREAM_RUNS,
        headers={"Nats-Msg-Id": f"completed:{run_id}:COMPLETE"},
    )


async def plans(nc: NatsClient) -> list[RunPlanned]:
    return await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_PLANNED, RunPlanned)


async def joins(nc: NatsClient) -> list[RunJoined]:
    return await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_JOINED, RunJoined)


async def bucket(nc: NatsClient) -> KeyValue:
    return await nc.jetstream().key_value(COALESCE_BUCKET)


async def claim_of(nc: NatsClient, scope: str = IAM_SCOPE) -> str | None:
    try:
        entry = await (await bucket(nc)).get(claim_key(scope))
    except NotFoundError:
        return None
    return Claim.decode(entry.value).run_id


async def decision_of(nc: NatsClient, request_id: str) -> Decision | None:
    try:
        entry = await (await bucket(nc)).get(request_key(run_id_for(request_id)))
    except NotFoundError:
        return None
    return Decision.decode(entry.value)


async def drained(nc: NatsClient) -> None:
    """Every request and completion the scheduler has received is processed."""

    async def idle() -> bool:
        for durable in (subjects.DURABLE_SCHEDULER, subjects.DURABLE_SCHEDULER_COMPLETIONS):
            info = await nc.jetstream().consumer_info(subjects.STREAM_RUNS, durable)
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    await eventually(idle, what="the scheduler's consumers drained")


async def test_identical_requests_join_the_run_in_flight_until_it_completes(
    scheduler: ServiceApp, nc: NatsClient
) -> None:
    await request(nc, "lead-1")
    await request(nc, "join-1")
    await request(nc, "join-2", requested_by="cron")
    await request(nc, "other-scope", services=["s3"])  # another scope: its own run
    await drained(nc)
    first = run_id_for("lead-1")
    assert sorted(p.request_id for p in await plans(nc)) == ["lead-1", "other-scope"]
    assert [(j.run_id, j.request_id, j.requested_by) for j in await joins(nc)] == [
        (first, "join-1", "unknown"),
        (first, "join-2", "cron"),
    ]
    assert await claim_of(nc) == first
    assert await decision_of(nc, "join-1") == Decision(Role.JOIN, first, IAM_SCOPE)

    await complete(nc, first, "lead-1")  # the run ended: its claim is released
    await eventually(lambda: _is_none(claim_of(nc)), what="the claim released")
    await request(nc, "lead-2")
    await drained(nc)
    assert sorted(p.request_id for p in await plans(nc)) == ["lead-1", "lead-2", "other-scope"]
    assert await claim_of(nc) == run_id_for("lead-2")


async def _is_none(value: Any) -> bool:
    return (await value) is None


async def test_a_tenants_requests_coalesce_only_with_the_same_tenants(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str, nc: NatsClient
) -> None:
    registry = make_settings().registry_path
    registry.parent.mkdir(parents=True, exist_ok=True)
    registry.write_text(
        f'schema_version = 1\n[[accounts]]\nid = "{MOTO_ACCOUNT}"\nname = "hub"\n'
        f'[[tenants]]\nname = "acme"\naccounts = ["{MOTO_ACCOUNT}"]\n'
    )
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint)
    app = create_service(settings, url=nats_server.url)
    await app.start()
    try:
        await request(nc, "plain")
        for request_id in ("acme-1", "acme-2"):
            body = {"request_id": request_id, "services": ["iam"], "requested_at": datetime.now(UTC).isoformat()}
            await nc.jetstream().publish(
                subjects.tenant_requests_subject("acme"),
                json.dumps(body).encode(),
                stream=subjects.STREAM_TENANT_REQUESTS,
                headers={"Nats-Msg-Id": f"acme-{request_id}"},
            )

        async def settled() -> bool:
            return len(await plans(nc)) + len(await joins(nc)) == 3

        await eventually(settled, what="three decisions")
    finally:
        await app.stop()
    assert sorted((p.request_id, p.tenant) for p in await plans(nc)) == [("acme-1", "acme"), ("plain", None)]
    assert [(j.run_id, j.request_id, j.tenant) for j in await joins(nc)] == [
        (run_id_for("acme/acme-1"), "acme-2", "acme")
    ]


async def test_a_redelivered_request_replays_its_decision_and_never_joins_a_later_run(
    scheduler: ServiceApp, nc: NatsClient
) -> None:
    """A leader redelivered after its run completed (and another run took the scope) replays its lead: no second
    claim, no join of the later run. A joiner redelivered after its run completed replays its join."""
    first, second = run_id_for("lead-a"), run_id_for("lead-b")
    await request(nc, "lead-a")
    await request(nc, "join-a")
    await drained(nc)
    await complete(nc, first, "lead-a")
    await eventually(lambda: _is_none(claim_of(nc)), what="the first claim released")
    await request(nc, "lead-b")
    await drained(nc)
    assert await claim_of(nc) == second

    # The same requests again, under new Nats-Msg-Ids (the stream keeps them): redeliveries of work decided before.
    await request(nc, "lead-a", msg_id="lead-a-again")
    await request(nc, "join-a", msg_id="join-a-again")
    await drained(nc)
    assert await claim_of(nc) == second  # lead-a did not claim again, nor join the run in flight
    assert sorted(p.request_id for p in await plans(nc)) == ["lead-a", "lead-b"]  # republished plan: deduplicated
    assert [(j.run_id, j.request_id) for j in await joins(nc)] == [(first, "join-a")]
    lead_a = await decision_of(nc, "lead-a")
    assert lead_a is not None
    assert (lead_a.role, lead_a.run_id, lead_a.claimed) == (Role.LEAD, first, True)

    # After the second run completed too, a redelivered lead-a still claims nothing.
    await complete(nc, second, "lead-b")
    await eventually(lambda: _is_none(claim_of(nc)), what="the second claim released")
    await request(nc, "lead-a", msg_id="lead-a-third")
    await drained(nc)
    assert await claim_of(nc) is None


async def test_a_rejected_request_claims_nothing(
    scheduler: ServiceApp, nc: NatsClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Region discovery denied: the request is rejected before any claim, so the next identical request leads its
    own run instead of joining one that will never run."""
    original = scheduler_app.ScanRegions.__call__
    calls = 0

    async def denied_once(self: scheduler_app.ScanRegions, account_id: str) -> list[str]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise Rejected(f"cannot list the enabled regions of account {account_id} (AccessDenied)")
        return await original(self, account_id)

    monkeypatch.setattr(scheduler_app.ScanRegions, "__call__", denied_once)
    await request(nc, "denied")
    await request(nc, "after-denial")
    await drained(nc)
    rejected = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_REJECTED, RunRejected)
    assert [r.request_id for r in rejected] == ["denied"]
    assert await decision_of(nc, "denied") is None
    assert [p.request_id for p in await plans(nc)] == ["after-denial"]
    assert await joins(nc) == []
    assert await claim_of(nc) == run_id_for("after-denial")


async def test_a_claim_past_its_deadline_is_taken_over_and_a_live_one_joined(
    scheduler: ServiceApp, nc: NatsClient
) -> None:
    """A claim whose completion never came (the evidence service down past the run's deadline) is stale: the next
    request takes it over and leads. A live claim of another scope is joined."""
    await request(nc, "warm-up", services=["s3"])  # creates the bucket
    await drained(nc)
    kv = await bucket(nc)
    now = datetime.now(UTC)
    s3_scope = scope_key(None, {MOTO_ACCOUNT: ["us-east-1"]}, [Service.S3])
    assert await claim_of(nc, s3_scope) == run_id_for("warm-up")
    # A run of the IAM scope, committed, whose deadline passed two minutes ago.
    ghost = run_id_for("ghost")
    await kv.create(
        request_key(ghost),
        Decision(Role.LEAD, ghost, IAM_SCOPE, now.isoformat(), (now - timedelta(minutes=2)).isoformat(), True).encode(),
    )
    await kv.create(
        claim_key(IAM_SCOPE), Claim(ghost, (now - timedelta(minutes=2)).isoformat(), now.isoformat()).encode()
    )

    await request(nc, "after-ghost")
    await request(nc, "s3-joiner", services=["s3"])
    await drained(nc)
    assert sorted(p.request_id for p in await plans(nc)) == ["after-ghost", "warm-up"]
    assert await claim_of(nc) == run_id_for("after-ghost")
    assert [(j.run_id, j.request_id) for j in await joins(nc)] == [(run_id_for("warm-up"), "s3-joiner")]


async def test_coalescing_off_plans_every_request(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str, nc: NatsClient
) -> None:
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, coalesce=False)
    app = create_service(settings, url=nats_server.url)
    await app.start()
    try:
        for request_id in ("off-1", "off-2"):
            await request(nc, request_id)
        await drained(nc)
    finally:
        await app.stop()
    assert sorted(p.request_id for p in await plans(nc)) == ["off-1", "off-2"]
    assert await joins(nc) == []


@pytest.mark.timeout(60)
async def test_concurrent_deliveries_and_releases_never_leave_a_request_with_two_decisions(
    settings: Settings, nats_server: EmbeddedNats
) -> None:
    """Three replicas decide 40 requests of one scope, each request delivered twice at the same time, while runs
    complete at random: every delivery of a request gets the same decision, a join names a run whose leader
    committed, and a leader holds the claim only after it committed."""
    brokers = [make_broker(nats_server.url, name=f"replica-{i}", settings=settings) for i in range(3)]
    for broker in brokers:
        await broker.connect()
    coalescers = [Coalescer(broker) for broker in brokers]
    rng = random.Random(7)
    decisions: dict[str, list[Decision]] = {}
    stop = asyncio.Event()

    async def releaser() -> None:
        kv = await coalescers[0].bucket()
        while not stop.is_set():
            await asyncio.sleep(rng.uniform(0.0, 0.01))
            try:
                holder = Claim.decode((await kv.get(claim_key("s" * 64))).value).run_id
            except NotFoundError:
                continue
            await coalescers[1].release(holder)

    async def deliver(request_id: str, coalescer: Coalescer) -> None:
        now = datetime.now(UTC)
        decision = await coalescer.decide(
            run_id=run_id_for(request_id), scope="s" * 64, planned_at=now, deadline_at=now + timedelta(minutes=15)
        )
        decisions.setdefault(request_id, []).append(decision)

    release_task = asyncio.create_task(releaser())
    try:
        for batch in range(8):
            ids = [f"race-{batch}-{i}" for i in range(5)]
            await asyncio.gather(*(deliver(rid, rng.choice(coalescers)) for rid in ids for _ in range(2)))
    finally:
        stop.set()
        await release_task
    kv = await coalescers[0].bucket()
    for request_id, seen in decisions.items():
        assert len(seen) == 2
        assert seen[0] == seen[1], request_id
        recorded = Decision.decode((await kv.get(request_key(run_id_for(request_id)))).value)
        assert recorded == seen[0]
        if recorded.role is Role.JOIN:
            leader = Decision.decode((await kv.get(request_key(recorded.run_id))).value)
            assert (leader.role, leader.claimed) == (Role.LEAD, True)
        else:
            assert recorded.run_id == run_id_for(request_id)
            assert recorded.claimed
    roles = [d[0].role for d in decisions.values()]
    assert Role.LEAD in roles
    assert Role.JOIN in roles
    for broker in brokers:
        await broker.stop()


async def test_release_is_durable_across_a_scheduler_restart(
    settings: Settings, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    """The run completes while no scheduler runs: the next scheduler's durable consumer releases the claim."""
    first = run_id_for("before-restart")
    app = create_service(settings, url=nats_server.url)
    await app.start()
    try:
        await request(nc, "before-restart")
        await drained(nc)
    finally:
        await app.stop()
    await complete(nc, first, "before-restart")
    await asyncio.sleep(0.5)
    assert await claim_of(nc) == first  # nobody released it
    app = create_service(settings, url=nats_server.url)
    await app.start()
    try:
        await eventually(lambda: _is_none(claim_of(nc)), what="the claim released by the restarted scheduler")
        await request(nc, "after-restart")
        await drained(nc)
    finally:
        await app.stop()
    assert sorted(p.request_id for p in await plans(nc)) == ["after-restart", "before-restart"]
    assert await joins(nc) == []


async def test_a_run_planned_longer_ago_than_the_join_window_is_not_joined(
    scheduler: ServiceApp, nc: NatsClient
) -> None:
    """A run still in flight but planned before the join window (30 s by default) may have read AWS long before a new
    request was made ("I fixed it, check again"): the new request leads a run of its own and takes the claim over."""
    await request(nc, "warm-up", services=["s3"])  # creates the bucket
    await drained(nc)
    kv = await bucket(nc)
    now = datetime.now(UTC)
    slow = run_id_for("slow")
    planned, deadline = (now - timedelta(minutes=5)).isoformat(), (now + timedelta(minutes=10)).isoformat()
    await kv.create(request_key(slow), Decision(Role.LEAD, slow, IAM_SCOPE, planned, deadline, True).encode())
    await kv.create(claim_key(IAM_SCOPE), Claim(slow, deadline, planned).encode())

    await request(nc, "after-the-fix")
    await drained(nc)
    assert sorted(p.request_id for p in await plans(nc)) == ["after-the-fix", "warm-up"]
    assert await claim_of(nc) == run_id_for("after-the-fix")
    assert await joins(nc) == []
