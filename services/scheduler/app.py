"""The scheduler service: validates run requests, plans runs, fans out check requests, and runs the cron loop."""

from __future__ import annotations

import asyncio

import structlog
from faststream import AckPolicy
from faststream.nats import NatsMessage
from pydantic import ValidationError

from services.scheduler.cron import CronLoop
from services.scheduler.planner import Planner
from shared import subjects
from shared.aws import AwsClients, TransientAwsError, classify_error
from shared.connect import check_connection
from shared.consume import Consumer, Rejected, validation_reason
from shared.messages import ConnectionTestRequest, ConnectionTestResult, RunRequested
from shared.nats import durable_subscriber, make_broker, scheduler_consumer
from shared.service import ServiceApp
from shared.settings import Settings

log = structlog.get_logger(__name__)


class CallerAccount:
    """Until the account registry exists, the only account is the one the credentials belong to."""

    def __init__(self, aws: AwsClients) -> None:
        self._aws = aws
        self._accounts: frozenset[str] | None = None
        self._lock = asyncio.Lock()

    async def __call__(self) -> frozenset[str]:
        async with self._lock:
            if self._accounts is None:
                account = await self._aws.caller_account()
                self._accounts = frozenset({account})
                log.info("account_resolved", account_id=account)
            return self._accounts


class ScanRegions:
    """The regions a run inspects: the configured list, or with KUSHIM_REGIONS=all the regions enabled for the
    account, asked at each run. A run is never planned with fewer regions: a transient failure retries the request,
    a denial rejects it with the reason."""

    def __init__(self, settings: Settings, aws: AwsClients) -> None:
        self._settings = settings
        self._aws = aws

    async def __call__(self) -> list[str]:
        if not self._settings.all_regions:
            return self._settings.scan_regions
        try:
            regions = await self._aws.enabled_regions()
        except Exception as exc:
            err = classify_error("ec2", "DescribeRegions", exc)
            if err.transient:
                raise TransientAwsError(f"cannot list the enabled regions: {err.describe()}") from exc
            raise Rejected(
                f"cannot list the enabled regions ({err.describe()}); grant it or set KUSHIM_REGIONS to a list"
            ) from exc
        if not regions:
            raise TransientAwsError("ec2:DescribeRegions returned no region")
        log.info("regions_discovered", regions=len(regions))
        return regions


def create_service(settings: Settings, *, url: str, aws: AwsClients | None = None) -> ServiceApp:
    broker = make_broker(url, name="scheduler", settings=settings)
    aws = aws or AwsClients(settings)
    accounts = CallerAccount(aws)
    planner = Planner(broker=broker, settings=settings, known_accounts=accounts, regions=ScanRegions(settings, aws))
    spec = scheduler_consumer()
    consumer: Consumer[RunRequested] = Consumer(
        spec=spec,
        model=RunRequested,
        handler=planner.handle,
        broker=broker,
        settings=settings,
        on_rejected=planner.rejected,
        context=lambda r: {"request_id": r.request_id},
    )

    @durable_subscriber(broker, spec, description="Validates RunRequested and fans out one CheckRequested per pair.")
    async def on_run_requested(msg: NatsMessage) -> None:
        await consumer(msg)

    # Core request/reply (no stream): nothing to ack; FastStream accepts only MANUAL on a core subscription.
    @broker.subscriber(
        subjects.CONNECTION_TEST,
        queue="scheduler",
        ack_policy=AckPolicy.MANUAL,
        title=f"scheduler:{subjects.CONNECTION_TEST}",
        description="Answers a ConnectionTestRequest with a ConnectionTestResult (one probe per AWS service).",
    )
    async def on_connection_test(msg: NatsMessage) -> bytes:
        structlog.contextvars.clear_contextvars()
        try:
            request = ConnectionTestRequest.model_validate_json(msg.body)
        except ValidationError as exc:
            reason = validation_reason(exc)
            log.warning("connection_test_rejected", reason=reason)
            result = ConnectionTestResult(ok=False, region=settings.aws_region, services=[], error=reason)
            return result.model_dump_json().encode()
        result = await check_connection(settings, aws, request.request_id)
        log.info("connection_tested", ok=result.ok, failed=[s.service for s in result.services if not s.connected])
        return result.model_dump_json().encode()

    async def resolve_accounts() -> None:
        await accounts()

    app = ServiceApp(name="scheduler", broker=broker, url=url, settings=settings, on_start=[resolve_accounts])
    if settings.schedule_enabled:
        cron = CronLoop(
            broker=broker,
            expression=settings.schedule,
            timezone=settings.schedule_timezone,
            catch_up_seconds=settings.schedule_catch_up_seconds,
        )
        app.background.append(cron.run)
    return app
