"""collect() against moto (trails in two regions), and error paths moto cannot produce through AioStubber."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.stub import AioStubber

from services.collector_cloudtrail.app import summarize
from services.collector_cloudtrail.checks import CHECKS
from services.collector_cloudtrail.collect import (
    LOOKUP_ATTEMPTS,
    LOOKUP_MAX_PAGES,
    ClientFor,
    collect,
    scan,
)
from services.collector_cloudtrail.ratelimit import TokenBucket
from services.collector_cloudtrail.snapshot import CloudTrailSnapshot
from shared.aws import ApiCallCounter, AwsClients, TransientAwsError
from shared.checks import RunContext, evaluate
from shared.messages import CheckRequested, Finding, Service, Status
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT, boto3_client

if TYPE_CHECKING:
    from types_aiobotocore_cloudtrail import CloudTrailClient

RUN_ID = "run-" + "3" * 32
CTX = RunContext(RUN_ID, MOTO_ACCOUNT, datetime(2025, 1, 1, tzinfo=UTC), "test")
REGIONS = ["us-east-1", "eu-west-1"]
NOW = datetime(2025, 3, 2, tzinfo=UTC)
SINCE = NOW - timedelta(hours=24)


def request(regions: list[str]) -> CheckRequested:
    return CheckRequested(
        run_id=RUN_ID,
        request_id="req-cloudtrail",
        account_id=MOTO_ACCOUNT,
        service=Service.CLOUDTRAIL,
        regions=regions,
        requested_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def by_key(findings: list[Finding]) -> dict[tuple[str, str], Finding]:
    return {(f.check_id, f.resource_id): f for f in findings}


def statuses(findings: list[Finding]) -> dict[tuple[str, str], Status]:
    return {(f.check_id, f.resource_id): f.status for f in findings}


def arn(name: str, region: str = "us-east-1") -> str:
    return f"arn:aws:cloudtrail:{region}:{MOTO_ACCOUNT}:trail/{name}"


# --- moto ---------------------------------------------------------------------------------------


def make_trail(
    endpoint: str,
    region: str,
    name: str,
    *,
    multi: bool,
    validation: bool,
    start: bool,
    kms: str | None = None,
    **selectors: Any,
) -> None:
    cloudtrail = boto3_client(endpoint, "cloudtrail", region)
    extra = {"KmsKeyId": kms} if kms else {}
    cloudtrail.create_trail(
        Name=name, S3BucketName="trail-logs", IsMultiRegionTrail=multi, EnableLogFileValidation=validation, **extra
    )
    if selectors:
        cloudtrail.put_event_selectors(TrailName=name, **selectors)
    if start:
        cloudtrail.start_logging(Name=name)


ALL_EVENTS: dict[str, Any] = {"EventSelectors": [{"ReadWriteType": "All", "IncludeManagementEvents": True}]}


async def run_collect(
    endpoint: str, make_settings: Callable[..., Settings], counter: ApiCallCounter, regions: list[str] = REGIONS
) -> CloudTrailSnapshot:
    settings = make_settings(aws_endpoint_url=endpoint, aws_concurrency=2)
    return await collect(AwsClients(settings), request(regions), counter, settings)


async def test_collect_realistic_account(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    boto3_client(moto_endpoint, "s3").create_bucket(Bucket="trail-logs")
    key = boto3_client(moto_endpoint, "kms").create_key(Description="trail key")["KeyMetadata"]["Arn"]
    make_trail(
        moto_endpoint,
        "us-east-1",
        "audit-single",
        multi=False,
        validation=False,
        start=True,
        EventSelectors=[{"ReadWriteType": "WriteOnly", "IncludeManagementEvents": True}],
    )
    make_trail(moto_endpoint, "us-east-1", "audit-all", multi=True, validation=True, start=True, kms=key, **ALL_EVENTS)
    make_trail(
        moto_endpoint,
        "eu-west-1",
        "audit-stopped",
        multi=False,
        validation=False,
        start=False,
        AdvancedEventSelectors=[
            {
                "Name": "reads",
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["Management"]},
                    {"Field": "readOnly", "Equals": ["true"]},
                ],
            }
        ],
    )
    counter = ApiCallCounter()

    snapshot = await run_collect(moto_endpoint, make_settings, counter)

    findings = evaluate(CHECKS, snapshot, CTX)
    single, everywhere, stopped = (
        "trail/us-east-1/audit-single",
        "trail/us-east-1/audit-all",
        "trail/eu-west-1/audit-stopped",
    )
    assert statuses(findings) == {
        ("cloudtrail.multi_region_logging", "account"): Status.PASS,
        ("cloudtrail.trail_logging", single): Status.PASS,
        ("cloudtrail.trail_logging", everywhere): Status.PASS,
        ("cloudtrail.trail_logging", stopped): Status.FAIL,
        ("cloudtrail.trail_log_file_validation", single): Status.FAIL,
        ("cloudtrail.trail_log_file_validation", everywhere): Status.PASS,
        ("cloudtrail.trail_log_file_validation", stopped): Status.FAIL,
        ("cloudtrail.trail_delivery", single): Status.PASS,
        ("cloudtrail.trail_delivery", everywhere): Status.PASS,
        ("cloudtrail.trail_delivery", stopped): Status.FAIL,
        ("cloudtrail.trail_kms", single): Status.FAIL,
        ("cloudtrail.trail_kms", everywhere): Status.PASS,
        ("cloudtrail.trail_kms", stopped): Status.FAIL,
        ("cloudtrail.management_events", single): Status.FAIL,
        ("cloudtrail.management_events", everywhere): Status.PASS,
        ("cloudtrail.management_events", stopped): Status.FAIL,
        ("cloudtrail.region_coverage", "region/eu-west-1"): Status.PASS,
        ("cloudtrail.region_coverage", "region/us-east-1"): Status.PASS,
        # moto does not implement LookupEvents
        ("cloudtrail.recent_activity", "region/eu-west-1"): Status.ERROR,
        ("cloudtrail.recent_activity", "region/us-east-1"): Status.ERROR,
    }
    out = by_key(findings)
    account = out[("cloudtrail.multi_region_logging", "account")]
    assert account.summary == "multi-region trail logging with log-file validation: audit-all"
    assert [t["name"] for t in account.details["qualifying_trails"]] == ["audit-all"]
    trail_stopped = out[("cloudtrail.trail_logging", stopped)]
    assert trail_stopped.region == "eu-west-1"
    assert trail_stopped.resource_arn == arn("audit-stopped", "eu-west-1")
    assert trail_stopped.details["is_logging"] is False
    assert trail_stopped.details["s3_bucket"] == "trail-logs"
    assert out[("cloudtrail.trail_delivery", stopped)].summary == (
        "audit-stopped is not logging and has never delivered a log file"
    )
    assert out[("cloudtrail.trail_kms", everywhere)].details["kms_key_id"] == key
    assert out[("cloudtrail.management_events", single)].summary == (
        "audit-single records write-only management events (read events are not recorded)"
    )
    assert out[("cloudtrail.management_events", stopped)].summary == (
        "audit-stopped records read-only management events (write events are not recorded)"
    )
    assert out[("cloudtrail.region_coverage", "region/eu-west-1")].summary == (
        "eu-west-1 is logged by audit-all (multi-region)"
    )
    multi = out[("cloudtrail.trail_logging", everywhere)]
    assert (multi.details["multi_region"], multi.details["log_file_validation"]) == (True, True)
    summary = summarize(snapshot)
    assert summary.population == {"trails": 3, "regions": 2}
    assert summary.metrics == {"logging_trails": 2.0, "validated_trails": 1.0, "covered_regions": 2.0}
    assert summary.regions == ["eu-west-1", "us-east-1"]
    # audit-all is seen from both regions but read once; LookupEvents is one request per region (no retries).
    assert counter.snapshot() == {
        "cloudtrail:DescribeTrails": 2,
        "cloudtrail:GetEventSelectors": 3,
        "cloudtrail:GetTrailStatus": 3,
        "cloudtrail:LookupEvents": 2,
    }


async def test_collect_without_a_qualifying_trail(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    boto3_client(moto_endpoint, "s3").create_bucket(Bucket="trail-logs")
    make_trail(moto_endpoint, "us-east-1", "audit-single", multi=False, validation=False, start=True)
    make_trail(moto_endpoint, "eu-west-1", "audit-all", multi=True, validation=True, start=False)

    snapshot = await run_collect(moto_endpoint, make_settings, ApiCallCounter())

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    account = out[("cloudtrail.multi_region_logging", "account")]
    assert account.status is Status.FAIL
    assert account.summary == "audit-all is multi-region and validates log files but is not logging"
    assert out[("cloudtrail.trail_logging", "trail/eu-west-1/audit-all")].status is Status.FAIL
    eu = out[("cloudtrail.region_coverage", "region/eu-west-1")]
    assert eu.status is Status.FAIL
    assert eu.summary == (
        "no logging trail covers eu-west-1 (audit-all applies but is not logging; audit-single logs us-east-1 only)"
    )
    assert out[("cloudtrail.region_coverage", "region/us-east-1")].status is Status.PASS
    assert summarize(snapshot).metrics == {"logging_trails": 1.0, "validated_trails": 1.0, "covered_regions": 1.0}


async def test_collect_without_trails(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    snapshot = await run_collect(moto_endpoint, make_settings, ApiCallCounter())
    assert statuses(evaluate(CHECKS, snapshot, CTX)) == {
        ("cloudtrail.multi_region_logging", "account"): Status.FAIL,
        ("cloudtrail.region_coverage", "region/eu-west-1"): Status.FAIL,
        ("cloudtrail.region_coverage", "region/us-east-1"): Status.FAIL,
        ("cloudtrail.recent_activity", "region/eu-west-1"): Status.ERROR,
        ("cloudtrail.recent_activity", "region/us-east-1"): Status.ERROR,
    }


async def test_demo_like_account_calls(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    """2 trails, 1 region (the demo account's shape): six requests, the unimplemented LookupEvents included."""
    boto3_client(moto_endpoint, "s3").create_bucket(Bucket="trail-logs")
    make_trail(moto_endpoint, "us-east-1", "demo-single-region", multi=False, validation=False, start=True)
    make_trail(moto_endpoint, "us-east-1", "demo-org-trail", multi=True, validation=True, start=True)
    counter = ApiCallCounter()

    snapshot = await run_collect(moto_endpoint, make_settings, counter, regions=["us-east-1"])

    assert counter.snapshot() == {
        "cloudtrail:DescribeTrails": 1,
        "cloudtrail:GetEventSelectors": 2,
        "cloudtrail:GetTrailStatus": 2,
        "cloudtrail:LookupEvents": 1,
    }
    out = by_key(evaluate(CHECKS, snapshot, CTX))
    assert out[("cloudtrail.multi_region_logging", "account")].status is Status.PASS
    # moto answers GetEventSelectors with no selectors unless PutEventSelectors was called (AWS: All management).
    assert out[("cloudtrail.management_events", "trail/us-east-1/demo-org-trail")].summary == (
        "demo-org-trail records no management events (no event selectors)"
    )


async def test_a_trail_homed_in_an_uninspected_region_is_read_there(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    boto3_client(moto_endpoint, "s3").create_bucket(Bucket="trail-logs")
    make_trail(moto_endpoint, "eu-west-1", "org-all", multi=True, validation=True, start=True, **ALL_EVENTS)

    snapshot = await run_collect(moto_endpoint, make_settings, ApiCallCounter(), regions=["us-east-1"])

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    assert out[("cloudtrail.multi_region_logging", "account")].status is Status.PASS
    assert out[("cloudtrail.management_events", "trail/eu-west-1/org-all")].status is Status.PASS
    assert out[("cloudtrail.trail_delivery", "trail/eu-west-1/org-all")].status is Status.PASS
    assert out[("cloudtrail.region_coverage", "region/us-east-1")].status is Status.PASS
    assert snapshot.regions == ("us-east-1",)


async def test_lookup_events_on_moto_is_one_quick_error_per_region(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    """moto answers LookupEvents with HTTP 500 (code "500"): one request per region, not botocore's three (about
    2-3 s each with backoff). Clients are opened first so that the timing is the scan's, not botocore's start-up."""
    aws = AwsClients(make_settings(aws_endpoint_url=moto_endpoint))
    counter = ApiCallCounter()
    async with AsyncExitStack() as stack:
        opened = {r: await stack.enter_async_context(aws.client("cloudtrail", r, counter)) for r in REGIONS}
        started = time.monotonic()
        snapshot = await scan(regional(opened), regions=REGIONS, concurrency=2)
        elapsed = time.monotonic() - started

    assert elapsed < 2
    assert counter.snapshot() == {"cloudtrail:DescribeTrails": 2, "cloudtrail:LookupEvents": 2}
    out = by_key(evaluate(CHECKS, snapshot, CTX))
    for region in REGIONS:
        finding = out[("cloudtrail.recent_activity", f"region/{region}")]
        assert finding.status is Status.ERROR
        assert finding.region == region
        assert finding.details["error_code"] == "500"
        assert finding.details["required_permission"] == "cloudtrail:LookupEvents"
        assert finding.summary == (
            "LookupEvents failed (500): the endpoint answered with an HTML error page (500 Internal Server Error)"
        )


# --- stubbed (AioStubber) ----------------------------------------------------------------------------


@pytest.fixture
async def clients(make_settings: Callable[..., Settings]) -> AsyncIterator[dict[str, CloudTrailClient]]:
    """Real aiobotocore CloudTrail clients per region, to be stubbed (no endpoint is ever reached)."""
    aws = AwsClients(make_settings())
    async with AsyncExitStack() as stack:
        yield {r: await stack.enter_async_context(aws.client("cloudtrail", r)) for r in ("us-east-1", "eu-west-1")}


def regional(clients: dict[str, CloudTrailClient]) -> ClientFor:
    @asynccontextmanager
    async def client_for(region: str) -> AsyncIterator[CloudTrailClient]:
        yield clients[region]

    return client_for


async def stubbed_scan(clients: dict[str, CloudTrailClient], regions: list[str]) -> CloudTrailSnapshot:
    # Concurrency 1 keeps each client's calls in a fixed order: DescribeTrails and LookupEvents per region, then
    # GetTrailStatus and GetEventSelectors per trail (AioStubber answers in the order responses were queued).
    # LookupEvents is paced and retried without waiting here; its pacing is tested at a stub (test_ratelimit).
    return await scan(
        regional(clients),
        regions=regions,
        concurrency=1,
        now=NOW,
        limiter_for=lambda region: TokenBucket(1000.0),
        lookup_backoff=lambda attempt: 0.0,
    )


def described(name: str, *, home: str = "us-east-1", multi: bool = False) -> dict[str, Any]:
    return {
        "Name": name,
        "TrailARN": arn(name, home),
        "HomeRegion": home,
        "IsMultiRegionTrail": multi,
        "LogFileValidationEnabled": True,
        "S3BucketName": "trail-logs",
    }


SHADOWS = {"includeShadowTrails": True}
LOOKUP = {"StartTime": SINCE, "MaxResults": 1}
NO_EVENTS: dict[str, Any] = {"Events": []}
ONE_EVENT = {
    "Events": [
        {
            "EventId": "e-1",
            "EventName": "ConsoleLogin",
            "EventSource": "signin.amazonaws.com",
            "EventTime": NOW - timedelta(hours=1),
        }
    ]
}
SELECT_ALL = {"TrailARN": "x", "EventSelectors": [{"ReadWriteType": "All", "IncludeManagementEvents": True}]}
FRESH = {"IsLogging": True, "LatestDeliveryTime": NOW - timedelta(hours=1)}


async def test_describe_denied_in_one_region_makes_the_gating_check_error(
    clients: dict[str, CloudTrailClient],
) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        eu_stub.add_client_error("describe_trails", "AccessDeniedException", "denied", 400, expected_params=SHADOWS)
        eu_stub.add_response("lookup_events", NO_EVENTS, LOOKUP)
        us_stub.add_response("describe_trails", {"trailList": [described("audit-single")]}, SHADOWS)
        us_stub.add_response("lookup_events", ONE_EVENT, LOOKUP)
        us_stub.add_response("get_trail_status", FRESH, {"Name": arn("audit-single")})
        us_stub.add_response("get_event_selectors", SELECT_ALL, {"TrailName": arn("audit-single")})
        snapshot = await stubbed_scan(clients, REGIONS)
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    trail, unseen = "trail/us-east-1/audit-single", "region/eu-west-1"
    assert statuses(findings) == {
        ("cloudtrail.multi_region_logging", "account"): Status.ERROR,
        ("cloudtrail.trail_logging", unseen): Status.ERROR,
        ("cloudtrail.trail_logging", trail): Status.PASS,
        ("cloudtrail.trail_log_file_validation", unseen): Status.ERROR,
        ("cloudtrail.trail_log_file_validation", trail): Status.PASS,
        ("cloudtrail.trail_delivery", unseen): Status.ERROR,
        ("cloudtrail.trail_delivery", trail): Status.PASS,
        ("cloudtrail.trail_kms", unseen): Status.ERROR,
        ("cloudtrail.trail_kms", trail): Status.FAIL,
        ("cloudtrail.management_events", unseen): Status.ERROR,
        ("cloudtrail.management_events", trail): Status.PASS,
        ("cloudtrail.region_coverage", "region/eu-west-1"): Status.ERROR,
        ("cloudtrail.region_coverage", "region/us-east-1"): Status.PASS,
        ("cloudtrail.recent_activity", "region/eu-west-1"): Status.FAIL,
        ("cloudtrail.recent_activity", "region/us-east-1"): Status.PASS,
    }
    out = by_key(findings)
    account = out[("cloudtrail.multi_region_logging", "account")]
    assert account.details["required_permission"] == "cloudtrail:DescribeTrails"
    assert account.summary == "DescribeTrails was denied (AccessDeniedException): grant cloudtrail:DescribeTrails"
    assert out[("cloudtrail.recent_activity", "region/us-east-1")].details["latest_event"] == {
        "name": "ConsoleLogin",
        "source": "signin.amazonaws.com",
        "time": "2025-03-01T23:00:00+00:00",
    }


async def test_status_and_selectors_are_read_in_the_home_region_and_their_failures_are_errors(
    clients: dict[str, CloudTrailClient],
) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    org = arn("org-all", "eu-west-1")
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        # Only us-east-1 is inspected; the shadow of a multi-region trail whose home is eu-west-1 shows up there.
        us_stub.add_response("describe_trails", {"trailList": [described("org-all", home="eu-west-1", multi=True)]})
        us_stub.add_response("lookup_events", ONE_EVENT, LOOKUP)
        eu_stub.add_client_error("get_trail_status", "AccessDeniedException", "denied", 400, {"Name": org})
        eu_stub.add_client_error("get_event_selectors", "AccessDeniedException", "denied", 400, {"TrailName": org})
        snapshot = await stubbed_scan(clients, ["us-east-1"])
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    trail = "trail/eu-west-1/org-all"
    assert statuses(findings) == {
        ("cloudtrail.multi_region_logging", "account"): Status.ERROR,
        ("cloudtrail.trail_logging", trail): Status.ERROR,
        ("cloudtrail.trail_log_file_validation", trail): Status.PASS,
        ("cloudtrail.trail_delivery", trail): Status.ERROR,
        ("cloudtrail.trail_kms", trail): Status.FAIL,
        ("cloudtrail.management_events", trail): Status.ERROR,
        ("cloudtrail.region_coverage", "region/us-east-1"): Status.ERROR,
        ("cloudtrail.recent_activity", "region/us-east-1"): Status.PASS,
    }
    out = by_key(findings)
    assert out[("cloudtrail.trail_logging", trail)].details["required_permission"] == "cloudtrail:GetTrailStatus"
    assert out[("cloudtrail.management_events", trail)].details["required_permission"] == (
        "cloudtrail:GetEventSelectors"
    )
    assert out[("cloudtrail.trail_logging", trail)].region == "eu-west-1"
    assert summarize(snapshot).regions == ["us-east-1"]


async def test_delivery_details_are_reported(clients: dict[str, CloudTrailClient]) -> None:
    us = clients["us-east-1"]
    delivered = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    with AioStubber(us) as stub:
        stub.add_response("describe_trails", {"trailList": [described("audit-all", multi=True)]})
        stub.add_response("lookup_events", ONE_EVENT)
        stub.add_response(
            "get_trail_status",
            {"IsLogging": True, "LatestDeliveryTime": delivered, "LatestDeliveryError": "NoSuchBucket"},
        )
        stub.add_response("get_event_selectors", SELECT_ALL)
        snapshot = await stubbed_scan(clients, ["us-east-1"])

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    trail = out[("cloudtrail.trail_logging", "trail/us-east-1/audit-all")]
    assert trail.details["latest_delivery_time"] == "2025-03-01T12:30:00+00:00"
    assert trail.details["latest_delivery_error"] == "NoSuchBucket"
    delivery = out[("cloudtrail.trail_delivery", "trail/us-east-1/audit-all")]
    assert (delivery.status, delivery.summary) == (
        Status.FAIL,
        "audit-all failed to deliver log files: NoSuchBucket",
    )
    assert delivery.details["observed_at"] == NOW.isoformat()
    assert out[("cloudtrail.multi_region_logging", "account")].status is Status.PASS


async def test_advanced_event_selectors_are_read(clients: dict[str, CloudTrailClient]) -> None:
    us = clients["us-east-1"]
    advanced = {
        "TrailARN": arn("audit-all"),
        "AdvancedEventSelectors": [
            {
                "Name": "management",
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["Management"]},
                    {"Field": "eventSource", "NotEquals": ["kms.amazonaws.com"]},
                ],
            },
            {
                "Name": "s3-data",
                "FieldSelectors": [
                    {"Field": "eventCategory", "Equals": ["Data"]},
                    {"Field": "resources.type", "Equals": ["AWS::S3::Object"]},
                    {"Field": "resources.ARN", "StartsWith": ["arn:aws:s3:::customer-data/"]},
                ],
            },
        ],
    }
    with AioStubber(us) as stub:
        stub.add_response("describe_trails", {"trailList": [described("audit-all", multi=True)]})
        stub.add_response("lookup_events", ONE_EVENT)
        stub.add_response("get_trail_status", FRESH)
        stub.add_response("get_event_selectors", advanced, {"TrailName": arn("audit-all")})
        snapshot = await stubbed_scan(clients, ["us-east-1"])

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    finding = out[("cloudtrail.management_events", "trail/us-east-1/audit-all")]
    assert (finding.status, finding.summary) == (
        Status.PASS,
        "audit-all records read and write management events (except events from kms.amazonaws.com)",
    )
    assert finding.details["advanced_event_selectors"] == [
        {"name": "management", "field_selectors": ["eventCategory = Management", "eventSource != kms.amazonaws.com"]},
        {
            "name": "s3-data",
            "field_selectors": [
                "eventCategory = Data",
                "resources.type = AWS::S3::Object",
                "resources.ARN StartsWith",
            ],
        },
    ]


@pytest.mark.parametrize(
    ("pages", "status", "summary"),
    [
        ([ONE_EVENT], Status.PASS, "latest event in us-east-1: ConsoleLogin from signin.amazonaws.com at "),
        ([NO_EVENTS], Status.FAIL, "no CloudTrail event in us-east-1 since 2025-03-01T00:00:00+00:00"),
        ([{"Events": [], "NextToken": "t-1"}, ONE_EVENT], Status.PASS, "latest event in us-east-1: ConsoleLogin"),
        (
            [{"Events": [], "NextToken": f"t-{i}"} for i in range(1, LOOKUP_MAX_PAGES + 1)],
            Status.ERROR,
            "LookupEvents failed (IncompleteResult): no event in the first 5 pages and LookupEvents has more",
        ),
    ],
    ids=["event", "empty", "empty-page-then-event", "only-empty-pages"],
)
async def test_lookup_events(
    clients: dict[str, CloudTrailClient], pages: list[dict[str, Any]], status: Status, summary: str
) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("describe_trails", {"trailList": []}, SHADOWS)
        token: str | None = None
        for page in pages:
            stub.add_response("lookup_events", page, LOOKUP | ({"NextToken": token} if token else {}))
            token = page.get("NextToken")
        snapshot = await stubbed_scan(clients, ["us-east-1"])
        stub.assert_no_pending_responses()

    finding = by_key(evaluate(CHECKS, snapshot, CTX))[("cloudtrail.recent_activity", "region/us-east-1")]
    assert finding.status is status
    assert finding.summary.startswith(summary)
    assert finding.details["pages_read"] == len(pages)


async def test_lookup_events_denied_is_an_error(clients: dict[str, CloudTrailClient]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("describe_trails", {"trailList": []})
        stub.add_client_error("lookup_events", "AccessDeniedException", "denied", 400, LOOKUP)
        snapshot = await stubbed_scan(clients, ["us-east-1"])

    finding = by_key(evaluate(CHECKS, snapshot, CTX))[("cloudtrail.recent_activity", "region/us-east-1")]
    assert finding.status is Status.ERROR
    assert finding.summary == "LookupEvents was denied (AccessDeniedException): grant cloudtrail:LookupEvents"


@pytest.mark.parametrize(
    ("operation", "queue"),
    [
        (
            "LookupEvents",
            [("describe_trails", {"trailList": []})] + [("lookup_events", None)] * LOOKUP_ATTEMPTS,
        ),
        (
            "GetEventSelectors",
            [
                ("describe_trails", {"trailList": [described("audit-all", multi=True)]}),
                ("lookup_events", ONE_EVENT),
                ("get_trail_status", FRESH),
                ("get_event_selectors", None),
            ],
        ),
        (
            "GetTrailStatus",
            [
                ("describe_trails", {"trailList": [described("audit-all", multi=True)]}),
                ("lookup_events", ONE_EVENT),
                ("get_trail_status", None),
                ("get_event_selectors", SELECT_ALL),
            ],
        ),
    ],
)
async def test_throttling_raises_transient(
    clients: dict[str, CloudTrailClient], operation: str, queue: list[tuple[str, dict[str, Any] | None]]
) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        for method, response in queue:
            if response is None:
                stub.add_client_error(method, "ThrottlingException", "Rate exceeded", 400)
            else:
                stub.add_response(method, response)
        with pytest.raises(TransientAwsError, match=f"cloudtrail:{operation}"):
            await stubbed_scan(clients, ["us-east-1"])


async def test_lookup_events_is_retried_after_throttling(clients: dict[str, CloudTrailClient]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("describe_trails", {"trailList": []})
        stub.add_client_error("lookup_events", "ThrottlingException", "Rate exceeded", 400, LOOKUP)
        stub.add_client_error("lookup_events", "InternalFailure", "oops", 500, LOOKUP)
        stub.add_response("lookup_events", ONE_EVENT, LOOKUP)
        snapshot = await stubbed_scan(clients, ["us-east-1"])
        stub.assert_no_pending_responses()

    finding = by_key(evaluate(CHECKS, snapshot, CTX))[("cloudtrail.recent_activity", "region/us-east-1")]
    assert finding.status is Status.PASS


async def test_server_error_on_describe_raises_transient(clients: dict[str, CloudTrailClient]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_client_error("describe_trails", "InternalFailure", "oops", 503)
        stub.add_response("lookup_events", ONE_EVENT)
        with pytest.raises(TransientAwsError, match="cloudtrail:DescribeTrails"):
            await stubbed_scan(clients, ["us-east-1"])


# --- bounded concurrency --------------------------------------------------------------------------
