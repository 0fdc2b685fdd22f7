"""The scheduler service: validates run requests, plans runs, fans out check requests, and runs the cron loop."""

from __future__ import annotations

import asyncio

import structlog
from faststream.nats import NatsMessage

from services.scheduler.cron import CronLoop
from services.scheduler.planner import Planner
from shared.aws import AwsClients
from shared.consume import Consumer
from shared.messages import RunRequested
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


def create_service(settings: Settings, *, url: str, aws: AwsClients | None = None) -> ServiceApp:
    broker = make_broker(url, name="scheduler", settings=settings)
    accounts = CallerAccount(aws or AwsClients(settings))
    planner = Planner(broker=broker, settings=settings, known_accounts=accounts)
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

    async def resolve_accounts() -> None:
        await accounts()

    app = ServiceApp(name="scheduler", broker=broker, url=url, settings=settings, on_start=[resolve_accounts])
    if settings.schedule_enabled:
        app.background.append(CronLoop(broker=broker, expression=settings.schedule).run)
    return app
