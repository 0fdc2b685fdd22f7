"""The CloudTrail collector's only AWS I/O.

Per inspected region, on one client per region: DescribeTrails (with shadow trails) and LookupEvents (the latest
event of the last 24 hours). DescribeTrails in each region sees the trails that apply there, so a multi-region trail
shows up once per region: trails are deduplicated by ARN, and GetTrailStatus and GetEventSelectors are read through
the client of each trail's home region.

LookupEvents is paced by a token bucket per account and region (`ratelimit`), awaited on botocore's `before-send`
event so that every HTTP attempt counts, pages and botocore's retries included. A 5xx that `classify_error` calls
non-transient (NotImplemented, or moto's bare "500" for LookupEvents, which it does not implement) is not retried
by botocore: one request, one ERROR.

A non-transient failure is recorded in the snapshot (ERROR findings naming the call and the permission); a transient
one raises `TransientAwsError` so the runtime redelivers the request later.
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from services.collector_cloudtrail.ratelimit import LookupLimiters, TokenBucket
from services.collector_cloudtrail.snapshot import (
    AdvancedSelector,
    ClassicSelector,
    CloudTrailSnapshot,
    EventSelectors,
    FieldSelector,
    RecentEvent,
    RegionActivity,
    RegionFailure,
    Trail,
    TrailStatus,
)
from shared.aws import ApiCallCounter, AwsCallError, AwsClients, classify_error, recorded_error
from shared.concurrency import bounded
from shared.messages import CheckRequested
from shared.permissions import iam_action
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_cloudtrail import CloudTrailClient
    from types_aiobotocore_cloudtrail.type_defs import (
        AdvancedFieldSelectorOutputTypeDef,
        GetEventSelectorsResponseTypeDef,
        LookupEventsRequestTypeDef,
        LookupEventsResponseTypeDef,
        TrailTypeDef,
    )

log = structlog.get_logger(__name__)

SERVICE = "cloudtrail"
AWS_ERRORS = (BotoCoreError, ClientError, asyncio.TimeoutError)
LOOKUP_WINDOW = timedelta(hours=24)
LOOKUP_MAX_PAGES = 5
"""LookupEvents may answer a page without events but with a NextToken: follow at most this many pages."""
LOOKUP_ATTEMPTS = 3
"""Attempts of one LookupEvents page when the failure is transient (throttling, 5xx), as botocore's standard mode."""
MAX_LOOKUP_RATE = 2.0
"""AWS's documented LookupEvents limit (requests per second per account and region), used when none is given."""

ClientFor = Callable[[str], AbstractAsyncContextManager["CloudTrailClient"]]
LimiterFor = Callable[[str], TokenBucket]
Backoff = Callable[[int], float]


def full_jitter(attempt: int) -> float:
    """Seconds to wait before retrying after failed attempt `attempt` (1-based): botocore's standard backoff."""
    return random.random() * min(20.0, 2.0 ** (attempt - 1))


T = TypeVar("T")
R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")


async def collect(
    aws: AwsClients,
    request: CheckRequested,
    counter: ApiCallCounter,
    settings: Settings,
    *,
    limiters: LookupLimiters | None = None,
) -> CloudTrailSnapshot:
    """Read the trails that apply to the requested regions, their status and event selectors, and recent activity.

    `limiters` is the process's LookupEvents buckets (shared by concurrent scans); without it a scan has its own.
    """
    buckets = limiters or LookupLimiters(settings.lookup_events_rate)

    @asynccontextmanager
    async def client_for(region: str) -> AsyncIterator[CloudTrailClient]:
        async with aws.client("cloudtrail", region, counter) as cloudtrail:
            yield cloudtrail

    return await scan(
        client_for,
        regions=request.regions,
        concurrency=settings.aws_concurrency,
        limiter_for=partial(buckets.bucket, request.account_id),
    )


async def scan(
    client_for: ClientFor,
    *,
    regions: Iterable[str],
    concurrency: int,
    limiter_for: LimiterFor | None = None,
    now: datetime | None = None,
    lookup_backoff: Backoff = full_jitter,
) -> CloudTrailSnapshot:
    """The collection itself; `client_for(region)` opens a CloudTrail client for a region (tests pass stubbed ones),
    `limiter_for(region)` paces its LookupEvents, `now` is the observation time (default: the clock) and
    `lookup_backoff(attempt)` the wait before a LookupEvents retry."""
    observed = now or datetime.now(UTC)
    if limiter_for is None:
        limiter_for = partial(LookupLimiters(MAX_LOOKUP_RATE).bucket, "")
    inspected = tuple(sorted(set(regions)))
    gate = asyncio.Semaphore(concurrency)
    async with AsyncExitStack() as stack:
        clients: dict[str, CloudTrailClient] = {}

        async def open_client(region: str) -> None:
            cloudtrail = await stack.enter_async_context(client_for(region))
            _prepare(cloudtrail)
            clients[region] = cloudtrail

        def lookup(region: str) -> Awaitable[RegionActivity]:
            pace = Paced(clients[region], limiter_for(region), lookup_backoff, region)
            return _lookup(pace, region, observed - LOOKUP_WINDOW)

        for region in inspected:
            await open_client(region)
        described, activity = await _both(
            bounded(gate, inspected, lambda region: _describe(clients[region], region)),
            bounded(gate, inspected, lookup),
        )
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
            await open_client(home)
        ordered = sorted(trails.values(), key=lambda t: (t.home_region, t.name, t.arn))
        statuses, selectors = await _both(
            bounded(gate, ordered, lambda trail: _read_status(clients[trail.home_region], trail)),
            bounded(gate, ordered, lambda trail: _read_selectors(clients[trail.home_region], trail)),
        )
    read = tuple(
        replace(trail, event_selectors=found, event_selectors_error=error)
        for trail, (found, error) in zip(statuses, selectors, strict=True)
    )
    return CloudTrailSnapshot(
        regions=inspected, trails=read, describe_failures=tuple(failures), activity=tuple(activity), now=observed
    )


def _prepare(cloudtrail: CloudTrailClient) -> None:
    """botocore retries no LookupEvents (`Paced` does, each attempt paced) and no 5xx that is not transient."""
    # aiobotocore reads a handler's False as "do not retry"; botocore-stubs types handlers as returning None.
    events: Any = cloudtrail.meta.events
    events.register_first("needs-retry.cloudtrail.LookupEvents", _never, unique_id="kushim-lookup-events-no-retry")
    events.register_first("needs-retry.cloudtrail", _no_retry_when_not_transient, unique_id="kushim-permanent-5xx")


def _never(**_: Any) -> bool:
    return False


def _no_retry_when_not_transient(response: Any = None, operation: Any = None, **_: Any) -> bool | None:
    """A `needs-retry` handler run before botocore's own: False (aiobotocore: "do not retry") for a 5xx answer that
    `classify_error` deems permanent, None (no opinion: botocore decides) otherwise."""
    if response is None or operation is None:
        return None
    http, parsed = response
    if getattr(http, "status_code", 0) < 500 or "Error" not in parsed:
        return None
    err = classify_error(SERVICE, operation.name, ClientError(parsed, operation.name))
    return None if err.transient else False


class Paced:
    """LookupEvents on one region's client: every attempt inside the region's bucket, transient failures retried
    here (after `backoff`, outside the bucket so other scans of the region may go meanwhile)."""

    def __init__(self, cloudtrail: CloudTrailClient, bucket: TokenBucket, backoff: Backoff, region: str) -> None:
        self._cloudtrail = cloudtrail
        self._bucket = bucket
        self._backoff = backoff
        self._region = region

    async def lookup_events(self, params: LookupEventsRequestTypeDef) -> LookupEventsResponseTypeDef:
        attempt = 1
        while True:
            try:
                async with self._bucket.request():
                    return await self._cloudtrail.lookup_events(**params)
            except AWS_ERRORS as exc:
                err = classify_error(SERVICE, "LookupEvents", exc)
                if not err.transient or attempt >= LOOKUP_ATTEMPTS:
                    raise
                delay = self._backoff(attempt)
                log.info("aws_call_retry", api_call=f"{SERVICE}:LookupEvents", code=err.code, region=self._region)
            await asyncio.sleep(delay)
            attempt += 1


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
        kms_key_id=entry.get("KmsKeyId") or None,
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


async def _read_selectors(
    cloudtrail: CloudTrailClient, trail: Trail
) -> tuple[EventSelectors | None, AwsCallError | None]:
    try:
        response = await cloudtrail.get_event_selectors(TrailName=trail.arn)
    except AWS_ERRORS as exc:
        return None, _recorded("GetEventSelectors", exc, trail=trail.arn)
    return _selectors(response), None


def _selectors(response: GetEventSelectorsResponseTypeDef) -> EventSelectors:
    classic = tuple(
        ClassicSelector(
            read_write_type=entry.get("ReadWriteType", "All"),
            include_management_events=bool(entry.get("IncludeManagementEvents", True)),
            exclude_management_event_sources=tuple(entry.get("ExcludeManagementEventSources", [])),
            data_resource_types=tuple(d.get("Type", "") for d in entry.get("DataResources", [])),
        )
        for entry in response.get("EventSelectors", [])
    )
    advanced = tuple(
        AdvancedSelector(
            name=entry.get("Name"), field_selectors=tuple(_field(f) for f in entry.get("FieldSelectors", []))
        )
        for entry in response.get("AdvancedEventSelectors", [])
    )
    return EventSelectors(classic=classic, advanced=advanced)


def _field(entry: AdvancedFieldSelectorOutputTypeDef) -> FieldSelector:
    others = {
        "StartsWith": entry.get("StartsWith"),
        "EndsWith": entry.get("EndsWith"),
        "NotStartsWith": entry.get("NotStartsWith"),
        "NotEndsWith": entry.get("NotEndsWith"),
    }
    return FieldSelector(
        field=entry["Field"],
        equals=tuple(entry.get("Equals", [])),
        not_equals=tuple(entry.get("NotEquals", [])),
        other_operators=tuple(op for op, values in others.items() if values),
    )


async def _lookup(cloudtrail: Paced, region: str, since: datetime) -> RegionActivity:
    """The latest event since `since` (LookupEvents answers newest first), following empty pages a few times."""
    params: LookupEventsRequestTypeDef = {"StartTime": since, "MaxResults": 1}
    for page in range(1, LOOKUP_MAX_PAGES + 1):
        try:
            response = await cloudtrail.lookup_events(params)
        except AWS_ERRORS as exc:
            return RegionActivity(region, error=_recorded("LookupEvents", exc, region=region), pages=page)
        events = response.get("Events", [])
        if events:
            event = events[0]
            latest = RecentEvent(event.get("EventName"), event.get("EventSource"), event.get("EventTime"))
            return RegionActivity(region, latest=latest, pages=page)
        token = response.get("NextToken")
        if not token:
            return RegionActivity(region, pages=page)
        params = {**params, "NextToken": token}
    message = f"no event in the first {LOOKUP_MAX_PAGES} pages and LookupEvents has more"
    incomplete = AwsCallError(
        SERVICE, "LookupEvents", "IncompleteResult", message, iam_action(SERVICE, "LookupEvents"), False
    )
    log.warning("aws_call_incomplete", api_call=f"{SERVICE}:LookupEvents", region=region, pages=LOOKUP_MAX_PAGES)
    return RegionActivity(region, error=incomplete, pages=LOOKUP_MAX_PAGES)


_HTML_TITLE = re.compile(r"<title>(.*?)</title>", re.IGNORECASE | re.DOTALL)


def _tidy(err: AwsCallError) -> AwsCallError:
    """An endpoint's HTML error page (moto's 500) as its title, not as markup in a finding's summary."""
    text = err.message.lstrip()
    if not text.startswith("<"):
        return err
    title = _HTML_TITLE.search(text)
    page = " ".join(title.group(1).split()) if title else "no title"
    return replace(err, message=f"the endpoint answered with an HTML error page ({page})")


def _recorded(operation: str, exc: BaseException, **context: str) -> AwsCallError:
    """The error to record in the snapshot, with HTML error pages shortened; raises TransientAwsError when
    retrying later may succeed."""
    return _tidy(recorded_error(SERVICE, operation, exc, **context))


async def _both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Await two things concurrently; the first failure cancels the other and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            a = group.create_task(_awaited(first))
            b = group.create_task(_awaited(second))
    except ExceptionGroup as failed:
        error = failed.exceptions[0]
    else:
        return a.result(), b.result()
    raise error  # outside the handler: keeps its own cause, not the group


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable
