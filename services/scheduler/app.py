"""The scheduler service: validates run requests, plans runs, fans out check requests, and runs the cron loop."""

from __future__ import annotations

import structlog
from faststream import AckPolicy
from faststream.nats import NatsMessage
from pydantic import ValidationError

from services.scheduler.coalesce import Coalescer
from services.scheduler.cron import Schedules
from services.scheduler.planner import Planner
from shared import subjects
from shared.accounts import ALL_REGIONS
from shared.aws import AwsClients, TransientAwsError, classify_error
from shared.connect import check_connection
from shared.consume import Consumer, Delivery, InFlight, Rejected, validation_reason
from shared.credentials import AccountAccess, UnregisteredAccount, account_access
from shared.messages import ConnectionTestRequest, ConnectionTestResult, RunCompleted, RunRequested
from shared.nats import (
    ConsumerSpec,
    durable_subscriber,
    make_broker,
    scheduler_completions_consumer,
    scheduler_consumer,
    scheduler_tenant_completions_consumer,
    scheduler_tenant_consumer,
)
from shared.observability import Observability
from shared.service import ServiceApp
from shared.settings import Settings

log = structlog.get_logger(__name__)


class ScanRegions:
    """The regions a run inspects in one account: the account's own (registry), else KUSHIM_REGIONS, else the
    configured region; `all` means the regions enabled for the account, asked at each run with its credentials. A run
    is never planned with fewer regions: a transient failure retries the request, a denial rejects it."""

    def __init__(self, settings: Settings, access: AccountAccess) -> None:
        self._settings = settings
        self._access = access

    async def __call__(self, account_id: str) -> list[str]:
        regions = self._access.regions(account_id)
        if regions is None:
            if not self._settings.all_regions:
                return self._settings.scan_regions
        elif regions != [ALL_REGIONS]:
            return regions
        try:
            aws = await self._access.clients(account_id)
        except UnregisteredAccount as exc:
            raise Rejected(str(exc)) from exc
        try:
            await aws.resolve_credentials()
        except Exception as exc:
            err = classify_error("sts", "AssumeRole", exc)
            if err.transient:
                raise TransientAwsError(f"cannot reach account {account_id}: {err.describe()}") from exc
            raise Rejected(
                f"cannot reach account {account_id} through {self._access.describe_access(account_id)} to list its "
                f"regions ({err.code}: {err.message}); fix the access (`kushim connect --account {account_id}`) or "
                "list the account's regions"
            ) from exc
        try:
            found = await aws.enabled_regions()
        except Exception as exc:
            err = classify_error("ec2", "DescribeRegions", exc)
            if err.transient:
                raise TransientAwsError(f"cannot list the enabled regions of {account_id}: {err.describe()}") from exc
            raise Rejected(
                f"cannot list the enabled regions of account {account_id} ({err.describe()}); grant it or list the "
                "account's regions"
            ) from exc
        if not found:
            raise TransientAwsError("ec2:DescribeRegions returned no region")
        log.info("regions_discovered", account_id=account_id, regions=len(found))
        return found


def create_service(
    settings: Settings,
    *,
    url: str,
    aws: AwsClients | None = None,
    access: AccountAccess | None = None,
    observability: Observability | None = None,
) -> ServiceApp:
    middlewares = (observability or Observability()).broker_middlewares("scheduler")
    broker = make_broker(url, name="scheduler", settings=settings, middlewares=middlewares)
    access = access or account_access(settings, aws)
    aws = access.base
    coalescer = Coalescer(broker, window_seconds=settings.coalesce_window_seconds, replicas=settings.stream_replicas)
    planner = Planner(
        broker=broker,
        settings=settings,
        access=access,
        regions=ScanRegions(settings, access),
        coalescer=coalescer if settings.coalesce else None,
    )

    in_flight = InFlight()

    def consumer_of(spec: ConsumerSpec) -> Consumer[RunRequested]:
        return Consumer(
            spec=spec,
            model=RunRequested,
            handler=planner.handle,
            broker=broker,
            settings=settings,
            on_rejected=planner.rejected,
            context=lambda r: {"request_id": r.request_id},
            in_flight=in_flight,
        )

    requests, tenant_requests = consumer_of(scheduler_consumer()), consumer_of(scheduler_tenant_consumer())

    @durable_subscriber(
        broker, scheduler_consumer(), description="Validates RunRequested and fans out one CheckRequested per pair."
    )
    async def on_run_requested(msg: NatsMessage) -> None:
        await requests(msg)

    @durable_subscriber(
        broker,
        scheduler_tenant_consumer(),
        description="A tenant's RunRequested (kushim.runs.requested.<tenant>): only accounts on its allow-list.",
    )
    async def on_tenant_run_requested(msg: NatsMessage) -> None:
        await tenant_requests(msg)

    async def release(completed: RunCompleted, delivery: Delivery, msg: NatsMessage) -> None:
        # Also with KUSHIM_COALESCE off: claims made before it was turned off are released all the same.
        if await coalescer.release(completed.run_id):
            log.info("coalescing_claim_released", state=completed.state.value)

    def completions_of(spec: ConsumerSpec) -> Consumer[RunCompleted]:
        return Consumer(
            spec=spec,
            model=RunCompleted,
            handler=release,
            broker=broker,
            settings=settings,
            context=lambda c: {"run_id": c.run_id, "request_id": c.request_id},
            in_flight=in_flight,
        )

    completions = completions_of(scheduler_completions_consumer())
    tenant_completions = completions_of(scheduler_tenant_completions_consumer())

    @durable_subscriber(
        broker,
        scheduler_completions_consumer(),
        description="A completed run releases its coalescing claim: identical requests from then on start a new run.",
    )
    async def on_run_completed(msg: NatsMessage) -> None:
        await completions(msg)

    @durable_subscriber(
        broker,
        scheduler_tenant_completions_consumer(),
        description="A tenant's completed run (kushim.runs.completed.<tenant>) releases its coalescing claim.",
    )
    async def on_tenant_run_completed(msg: NatsMessage) -> None:
        await tenant_completions(msg)

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
        if request.account_id is None:
            result = await check_connection(settings, aws, request.request_id)
        else:
            try:
                target = await access.clients(request.account_id)
            except UnregisteredAccount as exc:
                log.warning("connection_test_rejected", reason=str(exc))
                result = ConnectionTestResult(ok=False, region=settings.aws_region, services=[], error=str(exc))
                return result.model_dump_json().encode()
            result = await check_connection(
                settings,
                target,
                request.request_id,
                access=access.describe_access(request.account_id) if target is not aws else None,
                account_id=request.account_id,
            )
        log.info("connection_tested", ok=result.ok, failed=[s.service for s in result.services if not s.connected])
        return result.model_dump_json().encode()

    async def resolve_accounts() -> None:
        registry = access.registry()  # an invalid registry stops the start with its reason
        accounts = await access.known_accounts()
        log.info("accounts_known", accounts=len(accounts), registry=str(settings.registry_path) if registry else None)

    app = ServiceApp(
        name="scheduler", broker=broker, url=url, settings=settings, on_start=[resolve_accounts], in_flight=in_flight
    )
    if settings.schedule_enabled:
        app.background.append(Schedules(broker=broker, settings=settings, registry=access.registry).run)
    return app
