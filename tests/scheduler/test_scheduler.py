"""The scheduler on a real nats-server, with moto answering sts:GetCallerIdentity."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from nats.aio.client import Client as NatsClient
from pydantic import ValidationError

from services.scheduler.app import create_service
from services.scheduler.cron import next_slot, scheduled_request, slot_request_id
from shared import subjects
from shared.embedded import EmbeddedNats
from shared.messages import CheckRequested, DeadLetter, RunPlanned, RunRejected, Service, run_id_for
from shared.service import ServiceApp
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT
from tests.helpers import eventually, stream_models, stream_payloads


def request_body(request_id: str, **extra: object) -> bytes:
    body: dict[str, object] = {"request_id": request_id, "requested_at": "2026-11-27T10:00:00+00:00"}
    body.update(extra)
    return json.dumps(body).encode()


async def publish(nc: NatsClient, body: bytes, msg_id: str) -> None:
    await nc.jetstream().publish(
        subjects.RUNS_REQUESTED, body, stream=subjects.STREAM_RUNS, headers={"Nats-Msg-Id": msg_id}
    )


async def test_valid_request_plans_run_and_fans_out_one_check_per_service(
    scheduler: ServiceApp, nc: NatsClient
) -> None:
    await publish(nc, request_body("req-1", requested_by="test"), "req-1")

    async def planned() -> bool:
        return len(await stream_payloads(nc, subjects.STREAM_CHECKS, "kushim.checks.>")) == 3

    await eventually(planned, what="three CheckRequested")
    plans = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_PLANNED, RunPlanned)
    assert len(plans) == 1
    plan = plans[0]
    assert plan.run_id == run_id_for("req-1")
    assert plan.request_id == "req-1"
    assert plan.requested_by == "test"
    assert {(p.account_id, p.service) for p in plan.expected} == {(MOTO_ACCOUNT, s) for s in Service}
    assert plan.deadline_at > plan.planned_at
    checks = await stream_models(nc, subjects.STREAM_CHECKS, "kushim.checks.>", CheckRequested)
    assert sorted(c.service.value for c in checks) == ["cloudtrail", "iam", "s3"]
    assert {c.run_id for c in checks} == {plan.run_id}
    assert all(c.account_id == MOTO_ACCOUNT and c.regions == ["us-east-1"] for c in checks)


async def test_subset_of_services_and_duplicate_request_plan_once(scheduler: ServiceApp, nc: NatsClient) -> None:
    body = request_body("req-2", services=["s3"], accounts=[MOTO_ACCOUNT])
    await publish(nc, body, "req-2")
    await publish(nc, body, "req-2")  # a retried publish: deduplicated by the stream

    async def one_check() -> bool:
        return len(await stream_payloads(nc, subjects.STREAM_CHECKS, "kushim.checks.>")) == 1

    await eventually(one_check, what="one CheckRequested")
    # the same request id under another Nats-Msg-Id is redelivered work: same run, same check ids
    await publish(nc, body, "req-2-again")

    async def two_plans_seen() -> bool:
        return len(await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_REQUESTED)) == 2

    await eventually(two_plans_seen, what="second request stored")
    info = await nc.jetstream().consumer_info(subjects.STREAM_RUNS, subjects.DURABLE_SCHEDULER)

    async def drained() -> bool:
        ci = await nc.jetstream().consumer_info(subjects.STREAM_RUNS, subjects.DURABLE_SCHEDULER)
        return bool(ci.num_pending == 0 and ci.num_ack_pending == 0)

    await eventually(drained, what="scheduler consumer drained")
    assert info is not None
    checks = await stream_models(nc, subjects.STREAM_CHECKS, "kushim.checks.>", CheckRequested)
    assert [c.service for c in checks] == [Service.S3]
    assert len(await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_PLANNED)) == 1


@pytest.mark.parametrize(
    ("body", "request_id", "reason_part"),
    [
        (b"{not json", None, "invalid message"),
        (request_body("req-extra", surprise=True), "req-extra", "surprise"),
        (request_body("req-other", accounts=["999999999999"]), "req-other", "999999999999"),
        (request_body("req-bad-account", accounts=["12345678901٣"]), "req-bad-account", "accounts"),
        (request_body("req-version", schema_version=2), "req-version", "schema_version"),
        (request_body("req-huge", requested_by="x" * 70_000), "req-huge", "exceeds the limit of 65536"),
        (b"[" * 5000 + b"]" * 5000, None, "invalid message"),  # nesting that breaks a recursive JSON parser
    ],
)
async def test_bad_requests_are_rejected_dead_lettered_and_never_scanned(
    scheduler: ServiceApp, nc: NatsClient, body: bytes, request_id: str | None, reason_part: str
) -> None:
    await publish(nc, body, "bad-1")

    async def dead_lettered() -> bool:
        return len(await stream_payloads(nc, subjects.STREAM_DLQ, "kushim.dlq.>")) == 1

    await eventually(dead_lettered, what="a dead letter")
    letter = (await stream_models(nc, subjects.STREAM_DLQ, "kushim.dlq.>", DeadLetter))[0]
    assert letter.consumer == subjects.DURABLE_SCHEDULER
    assert reason_part in letter.reason
    rejected = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_REJECTED, RunRejected)
    assert len(rejected) == 1
    assert rejected[0].request_id == request_id
    assert reason_part in rejected[0].reason
    assert await stream_payloads(nc, subjects.STREAM_CHECKS, "kushim.checks.>") == []
    assert await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_PLANNED) == []

    # the scheduler keeps serving
    await publish(nc, request_body("req-after"), "req-after")

    async def served() -> bool:
        return len(await stream_payloads(nc, subjects.STREAM_CHECKS, "kushim.checks.>")) == 3

    await eventually(served, what="the next valid request planned")


def test_dead_letter_excerpt_redacts_secrets() -> None:
    from shared.consume import excerpt

    text = excerpt(b'{"request_id": "x", "aws_secret_access_key": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"}')
    assert "wJalrXUtnFEMI" not in text


def test_cron_slots_are_utc_and_slot_ids_are_stable() -> None:
    after = datetime(2026, 11, 27, 1, 59, 59, tzinfo=UTC)
    slot = next_slot("0 2 * * *", after)
    assert slot == datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    assert next_slot("0 2 * * *", slot) == datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    assert slot_request_id(slot) == "schedule-20261127T0200Z"
    request = scheduled_request(slot)
    assert request.request_id == slot_request_id(slot)
    assert request.requested_at == slot


def test_invalid_schedule_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValidationError, match="not a valid 5-field cron expression"):
        make_settings(schedule="every day at two")


async def test_cron_publishes_each_slot_once_even_from_two_replicas(
    settings: Settings, nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    from services.scheduler.cron import CronLoop
    from shared.nats import make_broker

    apps = [create_service(settings, url=nats_server.url) for _ in range(2)]
    for app in apps:
        await app.start()
    try:
        slot = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
        for app in apps:  # two replicas tick at the same slot
            await CronLoop(broker=app.broker, expression=settings.schedule).publish_slot(slot)
        requests = await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_REQUESTED)
        assert len(requests) == 1

        async def planned_once() -> bool:
            return len(await stream_payloads(nc, subjects.STREAM_CHECKS, "kushim.checks.>")) == 3

        await eventually(planned_once, what="one scheduled run")
        assert make_broker is not None
    finally:
        for app in apps:
            await app.stop()


async def test_cron_retries_the_same_slot_when_publishing_fails() -> None:
    from typing import Any

    from services.scheduler.cron import CronLoop

    now = [datetime(2026, 11, 27, 1, 59, 59, 900000, tzinfo=UTC)]
    published: list[str] = []

    class FlakyBroker:
        calls = 0

        async def publish(self, payload: bytes, subject: str, **kw: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise ConnectionError("nats restarting")
            published.append(kw["headers"]["Nats-Msg-Id"])
            now[0] = datetime(2026, 11, 28, 1, 0, tzinfo=UTC)  # after the slot: stop the loop at its next wait
            from nats.js.api import PubAck

            return PubAck(stream="KUSHIM_RUNS", seq=1)

    class Claims:  # the durable claim is tested on a real server in test_schedule.py
        async def claim(self, slot: datetime, now: datetime, *, existing_only: bool = False) -> bool:
            return True

        async def published(self, slot: datetime, now: datetime) -> None:
            return None

    loop = CronLoop(
        broker=FlakyBroker(),  # type: ignore[arg-type]
        expression="0 2 * * *",
        claims=Claims(),
        clock=lambda: now[0],
        retry_seconds=0,
    )
    task = asyncio.create_task(loop.run())
    for _ in range(100):
        if published:
            break
        await asyncio.sleep(0.01)
        now[0] = max(now[0], datetime(2026, 11, 27, 2, 0, tzinfo=UTC))
    task.cancel()
    assert published == ["schedule-20261127T0200Z"]


async def test_all_regions_plans_every_enabled_region(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str, nc: NatsClient
) -> None:
    from shared.aws import AwsClients

    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, regions="all")
    enabled = await AwsClients(settings).enabled_regions()
    assert "us-east-1" in enabled
    assert "eu-west-1" in enabled
    app = create_service(settings, url=nats_server.url)
    await app.start()
    try:
        await publish(nc, request_body("req-all", services=["cloudtrail"]), "req-all")

        async def planned() -> bool:
            return len(await stream_payloads(nc, subjects.STREAM_CHECKS, "kushim.checks.>")) == 1

        await eventually(planned, what="the CloudTrail check")
    finally:
        await app.stop()
    check = (await stream_models(nc, subjects.STREAM_CHECKS, "kushim.checks.>", CheckRequested))[0]
    assert check.regions == enabled


def test_regions_setting_accepts_all_or_region_names(make_settings: Callable[..., Settings]) -> None:
    assert make_settings(regions="all").all_regions
    assert make_settings(regions="all").scan_regions == ["us-east-1"]
    assert make_settings(regions="eu-west-1,us-east-2").scan_regions == ["eu-west-1", "us-east-2"]
    with pytest.raises(ValidationError, match="not AWS region names: all"):
        make_settings(regions="all,eu-west-1")
