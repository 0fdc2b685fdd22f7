"""The CloudTrail collector's only AWS I/O: DescribeTrails in every requested region, GetTrailStatus per trail.

DescribeTrails (with shadow trails) in each region sees the trails that apply there, so a multi-region trail shows up
once per region: trails are deduplicated by ARN and their status is read through a client for their home region.
A non-transient failure is recorded in the snapshot (ERROR findings naming the call and the permission); a transient
one raises `TransientAwsError` so the runtime redelivers the request later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from services.collector_cloudtrail.snapshot import CloudTrailSnapshot, RegionFailure, Trail, TrailStatus
from shared.aws import ApiCallCounter, AwsCallError, AwsClients, TransientAwsError, classify_error
from shared.messages import CheckRequested
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_cloudtrail import CloudTrailClient
    from types_aiobotocore_cloudtrail.type_defs import TrailTypeDef

log = structlog.get_logger(__name__)

SERVICE = "cloudtrail"
AWS_ERRORS = (BotoCoreError, ClientError, asyncio.TimeoutError)

ClientFor = Callable[[str], AbstractAsyncContextManager["CloudTrailClient"]]

T = TypeVar("T")
R = TypeVar("R")


async def collect(
    aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings
) -> CloudTrailSnapshot:
    """Read the trails that apply to the requested regions and the logging status of each."""

    @asynccontextmanager
    async def client_for(region: str) -> AsyncIterator[CloudTrailClient]:
        async with aws.client("cloudtrail", region, counter) as cloudtrail:
            yield cloudtrail

    return await scan(client_for, regions=request.regions, concurrency=settings.aws_concurrency)


async def scan(client_for: ClientFor, *, regions: Iterable[str], concurrency: int) -> CloudTrailSnapshot:
    """The collection itself; `client_for(region)` opens a CloudTrail client for a region (tests pass stubbed ones)."""
    inspected = tuple(sorted(set(regions)))
    async with AsyncExitStack() as stack:
        clients: dict[str, CloudTrailClient] = {}
        for region in inspected:
            clients[region] = await stack.enter_async_context(client_for(region))
        described = await _bounded(concurrency, inspected, lambda region: _describe(clients[region], region))
        trails: dict[str, Trail] = {}
        failures: list[RegionFailure] = []
        for region, result in zip(inspected, described, strict=True):
            if isinstance(result, RegionFailure):
                failures.append(result)
                continue
            for entry in result:
                trail = _trail(entry, region)
                trails.setdefault(trail.arn, trail)
        log.debug("cloudtrail_trails_described", regions=len(inspected), trails=len(trails), failed=len(failures))
        for home in sorted({trail.home_region for trail in trails.values()} - clients.keys()):
            clients[home] = await stack.enter_async_context(client_for(home))
        ordered = sorted(trails.values(), key=lambda t: (t.home_region, t.name, t.arn))
        read = await _bounded(concurrency, ordered, lambda trail: _read_status(clients[trail.home_region], trail))
    return CloudTrailSnapshot(regions=inspected, trails=tuple(read), describe_failures=tuple(failures))


async def _describe(cloudtrail: CloudTrailClient, region: str) -> list[TrailTypeDef] | RegionFailure:
    try:
        response = await cloudtrail.describe_trails(includeShadowTrails=True)
    except AWS_ERRORS as exc:
        return RegionFailure(region, _recorded("DescribeTrails", exc, region=region))
    return list(response.get("trailList", []))


def _trail(entry: TrailTypeDef, region: str) -> Trail:
    name = entry.get("Name", "")
    home = entry.get("HomeRegion") or region
    return Trail(
        name=name,
        arn=entry.get("TrailARN") or name,
        home_region=home,
        multi_region=bool(entry.get("IsMultiRegionTrail", False)),
        log_file_validation=bool(entry.get("LogFileValidationEnabled", False)),
        s3_bucket=entry.get("S3BucketName"),
        organization=bool(entry.get("IsOrganizationTrail", False)),
    )


async def _read_status(cloudtrail: CloudTrailClient, trail: Trail) -> Trail:
    try:
        response = await cloudtrail.get_trail_status(Name=trail.arn)
    except AWS_ERRORS as exc:
        return replace(trail, status_error=_recorded("GetTrailStatus", exc, trail=trail.arn))
    status = TrailStatus(
        is_logging=bool(response.get("IsLogging", False)),
        latest_delivery_time=response.get("LatestDeliveryTime"),
        latest_delivery_error=response.get("LatestDeliveryError") or None,
    )
    return replace(trail, status=status)


def _recorded(operation: str, exc: BaseException, **context: str) -> AwsCallError:
    """The error to record in the snapshot; raises TransientAwsError when retrying later may succeed."""
    err = classify_error(SERVICE, operation, exc)
    if err.transient:
        log.warning("aws_call_transient", api_call=f"{SERVICE}:{operation}", code=err.code, **context)
        raise TransientAwsError(f"{SERVICE}:{operation} failed ({err.code}): {err.message}") from exc
    log.warning("aws_call_failed", api_call=f"{SERVICE}:{operation}", code=err.code, **context)
    return err


async def _bounded(concurrency: int, items: Iterable[T], fn: Callable[[T], Awaitable[R]]) -> list[R]:
    """`fn` over every item, at most `concurrency` at a time, results in input order.

    The first failure cancels the rest and is raised as itself (not as an ExceptionGroup).
    """
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with semaphore:
            return await fn(item)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
    else:
        return [task.result() for task in tasks]
    raise first  # outside the handler: keeps its own cause (the botocore error), not the group
