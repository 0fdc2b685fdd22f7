"""The shared collector runtime on a real nats-server: replicas split work, and a scan that keeps failing
ends as ERROR findings rather than silence."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

from nats.aio.client import Client as NatsClient

from services.collector_iam.app import SPEC as IAM_SPEC
from services.collector_iam.snapshot import IamSnapshot
from shared import subjects
from shared.aws import ApiCallCounter, AwsClients
from shared.collector import CollectorSpec, register_collector
from shared.consume import InFlight
from shared.credentials import account_access
from shared.embedded import EmbeddedNats
from shared.messages import CheckRequested, FindingsReported, Service, Status
from shared.nats import make_broker, publish_durable
from shared.service import ServiceApp
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT
from tests.helpers import eventually, nats_client, stream_models


def check_request(i: int) -> CheckRequested:
    return CheckRequested(
        run_id=f"run-{i:032x}",
        request_id=f"req-{i}",
        account_id=MOTO_ACCOUNT,
        service=Service.IAM,
        regions=["us-east-1"],
        requested_at=datetime.now(UTC),
    )


async def publish_checks(settings: Settings, url: str, n: int) -> None:
    broker = make_broker(url, name="test-publisher", settings=settings)
    await broker.connect()
    try:
        for i in range(n):
            req = check_request(i)
            await publish_durable(
                broker,
                subjects.checks_subject(Service.IAM),
                req,
                msg_id=f"check:{req.run_id}",
                stream=subjects.STREAM_CHECKS,
            )
    finally:
        await broker.stop()


async def wait_for_chunks(nc: NatsClient, count: int, what: str, timeout: float = 20) -> list[FindingsReported]:
    """The FindingsReported chunks in the stream, once there are `count` of them."""

    async def reported() -> bool:
        got = await stream_models(nc, subjects.STREAM_FINDINGS, "kushim.findings.>", FindingsReported)
        return len(got) >= count

    await eventually(reported, timeout=timeout, what=what)
    return await stream_models(nc, subjects.STREAM_FINDINGS, "kushim.findings.>", FindingsReported)


def replica(settings: Settings, url: str, name: str, collect: Callable[..., object], aws: AwsClients) -> ServiceApp:
    broker = make_broker(url, name=name, settings=settings)
    spec: CollectorSpec[IamSnapshot] = dataclasses.replace(IAM_SPEC, collect=collect)  # type: ignore[arg-type]
    in_flight = InFlight()
    register_collector(broker, spec, access=account_access(settings, aws), settings=settings, in_flight=in_flight)
    return ServiceApp(name=name, broker=broker, url=url, settings=settings, in_flight=in_flight)


async def test_two_replicas_split_the_work_without_duplicates(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint)
    aws = AwsClients(settings)
    processed: Counter[tuple[str, str]] = Counter()

    def slow_collect(name: str) -> Callable[..., object]:
        async def collect(
            aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings
        ) -> IamSnapshot:
            processed[(name, request.run_id)] += 1
            await asyncio.sleep(0.05)
            return IamSnapshot(users=())

        return collect

    apps = [replica(settings, nats_server.url, f"iam-{i}", slow_collect(f"iam-{i}"), aws) for i in range(2)]
    for app in apps:
        await app.start()
    try:
        await publish_checks(settings, nats_server.url, 50)
        async with nats_client(nats_server.url) as nc:
            chunks = await wait_for_chunks(nc, 50, "50 findings chunks", timeout=30)
    finally:
        for app in apps:
            await app.stop()
    runs = [run for (_, run) in processed]
    assert len(runs) == 50
    assert len(set(runs)) == 50, "a request was processed twice"
    per_replica = Counter(name for (name, _) in processed)
    assert set(per_replica) == {"iam-0", "iam-1"}
    assert min(per_replica.values()) >= 10, per_replica
    assert sorted(c.run_id for c in chunks) == sorted(check_request(i).run_id for i in range(50))


async def test_a_scan_that_keeps_failing_ends_as_error_findings(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    settings = make_settings(
        nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, max_deliver=3, retry_delay_seconds=0.05
    )
    attempts: list[int] = []

    async def broken_collect(
        aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings
    ) -> IamSnapshot:
        attempts.append(1)
        raise ConnectionError("simulated outage")

    app = replica(settings, nats_server.url, "iam-broken", broken_collect, AwsClients(settings))
    await app.start()
    try:
        await publish_checks(settings, nats_server.url, 1)
        async with nats_client(nats_server.url) as nc:
            chunks = await wait_for_chunks(nc, 1, "the ERROR chunk")
            info = await nc.jetstream().consumer_info(subjects.STREAM_CHECKS, "collector-iam")
    finally:
        await app.stop()
    assert len(chunks) == 1
    chunk = chunks[0]
    assert len(attempts) == 3
    assert chunk.attempt == 3
    assert chunk.chunk_count == 1
    assert {f.check_id for f in chunk.findings} == {check.id for check in IAM_SPEC.checks}
    assert len(chunk.findings) == 7
    assert all(f.status is Status.ERROR and f.resource_id == "account" for f in chunk.findings)
    assert all("simulated outage" in f.details["error_message"] for f in chunk.findings)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def test_a_hung_scan_times_out_and_is_retried(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    settings = make_settings(
        nats_url=nats_server.url,
        aws_endpoint_url=moto_endpoint,
        handler_timeout_seconds=2.0,
        retry_delay_seconds=0.05,  # the account check runs first, inside it
    )
    calls: list[int] = []

    async def hangs_once(
        aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings
    ) -> IamSnapshot:
        calls.append(1)
        if len(calls) == 1:
            await asyncio.sleep(30)  # a half-open connection: never answers
        return IamSnapshot(users=())

    app = replica(settings, nats_server.url, "iam-hang", hangs_once, AwsClients(settings))
    await app.start()
    try:
        await publish_checks(settings, nats_server.url, 1)
        async with nats_client(nats_server.url) as nc:
            chunks = await wait_for_chunks(nc, 1, "the retried scan's chunk")
    finally:
        await app.stop()
    assert len(chunks) == 1
    chunk = chunks[0]
    assert len(calls) == 2
    assert chunk.attempt == 2
    assert chunk.findings == []


async def test_a_scan_handed_back_on_its_last_delivery_ends_as_error_findings(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    """Stopping hands a running scan back (nack) so another replica takes it; on the last allowed delivery no other
    replica would get it, so the stopping replica reports ERROR findings instead of leaving the pair missing."""
    settings = make_settings(
        nats_url=nats_server.url,
        aws_endpoint_url=moto_endpoint,
        max_deliver=2,
        handler_timeout_seconds=1.0,
        retry_delay_seconds=0.05,
        shutdown_grace_seconds=0.1,
    )
    calls: list[int] = []

    async def hangs(
        aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings
    ) -> IamSnapshot:
        calls.append(1)
        await asyncio.sleep(30)
        return IamSnapshot(users=())

    app = replica(settings, nats_server.url, "iam-stopping", hangs, AwsClients(settings))
    await app.start()
    stopped = False
    try:
        await publish_checks(settings, nats_server.url, 1)

        async def second_delivery_running() -> bool:
            return len(calls) == 2

        await eventually(second_delivery_running, timeout=15, what="the second (last) delivery's scan")
        await app.stop()  # within its grace of 0.1 s the scan is handed back
        stopped = True
        async with nats_client(nats_server.url) as nc:
            chunks = await wait_for_chunks(nc, 1, "the ERROR chunk")
            info = await nc.jetstream().consumer_info(subjects.STREAM_CHECKS, "collector-iam")
    finally:
        if not stopped:
            await app.stop()
    (chunk,) = chunks
    assert chunk.attempt == 2
    assert {f.check_id for f in chunk.findings} == {check.id for check in IAM_SPEC.checks}
    assert all(f.status is Status.ERROR for f in chunk.findings)
    assert all("KUSHIM_SHUTDOWN_GRACE_SECONDS" in f.details["error_message"] for f in chunk.findings)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0
    assert info.num_redelivered == 0
