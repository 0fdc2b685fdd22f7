"""collect() against moto (trails in two regions), and error paths moto cannot produce through AioStubber."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.stub import AioStubber

from services.collector_cloudtrail.app import summarize
from services.collector_cloudtrail.checks import CHECKS
from services.collector_cloudtrail.collect import ClientFor, _bounded, collect, scan
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


def arn(name: str, region: str = "us-east-1") -> str:
    return f"arn:aws:cloudtrail:{region}:{MOTO_ACCOUNT}:trail/{name}"


# --- moto ---------------------------------------------------------------------------------------


def make_trail(endpoint: str, region: str, name: str, *, multi: bool, validation: bool, start: bool) -> None:
    cloudtrail = boto3_client(endpoint, "cloudtrail", region)
    cloudtrail.create_trail(
        Name=name, S3BucketName="trail-logs", IsMultiRegionTrail=multi, EnableLogFileValidation=validation
    )
    if start:
        cloudtrail.start_logging(Name=name)


async def run_collect(endpoint: str, make_settings: Callable[..., Settings], counter: ApiCallCounter) -> Any:
    settings = make_settings(aws_endpoint_url=endpoint, aws_concurrency=2)
    return await collect(AwsClients(settings), request(REGIONS), counter, settings)


async def test_collect_realistic_account(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    boto3_client(moto_endpoint, "s3").create_bucket(Bucket="trail-logs")
    make_trail(moto_endpoint, "us-east-1", "audit-single", multi=False, validation=False, start=True)
    make_trail(moto_endpoint, "us-east-1", "audit-all", multi=True, validation=True, start=True)
    make_trail(moto_endpoint, "eu-west-1", "audit-stopped", multi=False, validation=False, start=False)
    counter = ApiCallCounter()

    snapshot = await run_collect(moto_endpoint, make_settings, counter)

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    assert {k: f.status for k, f in out.items()} == {
        ("cloudtrail.multi_region_logging", "account"): Status.PASS,
        ("cloudtrail.trail_logging", "trail/us-east-1/audit-single"): Status.PASS,
        ("cloudtrail.trail_logging", "trail/us-east-1/audit-all"): Status.PASS,
        ("cloudtrail.trail_logging", "trail/eu-west-1/audit-stopped"): Status.FAIL,
    }
    account = out[("cloudtrail.multi_region_logging", "account")]
    assert account.summary == "multi-region trail logging: audit-all (log file validation on)"
    assert [t["name"] for t in account.details["qualifying_trails"]] == ["audit-all"]
    stopped = out[("cloudtrail.trail_logging", "trail/eu-west-1/audit-stopped")]
    assert stopped.region == "eu-west-1"
    assert stopped.resource_arn == arn("audit-stopped", "eu-west-1")
    assert stopped.details["is_logging"] is False
    assert stopped.details["s3_bucket"] == "trail-logs"
    everywhere = out[("cloudtrail.trail_logging", "trail/us-east-1/audit-all")]
    assert (everywhere.details["multi_region"], everywhere.details["log_file_validation"]) == (True, True)
    summary = summarize(snapshot)
    assert summary.population == {"trails": 3, "regions": 2}
    assert summary.metrics == {"logging_trails": 2.0}
    assert summary.regions == ["eu-west-1", "us-east-1"]
    # audit-all is seen from both regions but its status is read once.
    assert counter.snapshot() == {"cloudtrail:DescribeTrails": 2, "cloudtrail:GetTrailStatus": 3}


async def test_collect_without_a_logging_multi_region_trail(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    boto3_client(moto_endpoint, "s3").create_bucket(Bucket="trail-logs")
    make_trail(moto_endpoint, "us-east-1", "audit-single", multi=False, validation=False, start=True)
    make_trail(moto_endpoint, "eu-west-1", "audit-all", multi=True, validation=True, start=False)

    snapshot = await run_collect(moto_endpoint, make_settings, ApiCallCounter())

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    account = out[("cloudtrail.multi_region_logging", "account")]
    assert account.status is Status.FAIL
    assert account.summary == (
        "no multi-region trail is logging "
        "(2 trails: audit-all multi-region, not logging; audit-single single-region, logging)"
    )
    assert out[("cloudtrail.trail_logging", "trail/eu-west-1/audit-all")].status is Status.FAIL


async def test_collect_without_trails(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    snapshot = await run_collect(moto_endpoint, make_settings, ApiCallCounter())
    findings = evaluate(CHECKS, snapshot, CTX)
    assert [(f.check_id, f.status) for f in findings] == [("cloudtrail.multi_region_logging", Status.FAIL)]


# --- stubbed errors ---------------------------------------------------------------------------------


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


async def test_describe_denied_in_one_region_makes_the_gating_check_error(
    clients: dict[str, CloudTrailClient],
) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        eu_stub.add_client_error("describe_trails", "AccessDeniedException", "denied", 400, expected_params=SHADOWS)
        us_stub.add_response("describe_trails", {"trailList": [described("audit-single")]}, SHADOWS)
        us_stub.add_response("get_trail_status", {"IsLogging": True}, {"Name": arn("audit-single")})
        snapshot = await scan(regional(clients), regions=REGIONS, concurrency=1)
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    assert {k: f.status for k, f in out.items()} == {
        ("cloudtrail.multi_region_logging", "account"): Status.ERROR,
        ("cloudtrail.trail_logging", "region/eu-west-1"): Status.ERROR,
        ("cloudtrail.trail_logging", "trail/us-east-1/audit-single"): Status.PASS,
    }
    account = out[("cloudtrail.multi_region_logging", "account")]
    assert account.details["required_permission"] == "cloudtrail:DescribeTrails"
    assert account.summary == "DescribeTrails was denied (AccessDeniedException): grant cloudtrail:DescribeTrails"


async def test_status_is_read_in_the_home_region_and_its_failure_is_an_error(
    clients: dict[str, CloudTrailClient],
) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        # Only us-east-1 is inspected; the shadow of a multi-region trail whose home is eu-west-1 shows up there.
        us_stub.add_response("describe_trails", {"trailList": [described("org-all", home="eu-west-1", multi=True)]})
        eu_stub.add_client_error(
            "get_trail_status", "AccessDeniedException", "denied", 400, {"Name": arn("org-all", "eu-west-1")}
        )
        snapshot = await scan(regional(clients), regions=["us-east-1"], concurrency=4)
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    assert {k: f.status for k, f in out.items()} == {
        ("cloudtrail.multi_region_logging", "account"): Status.ERROR,
        ("cloudtrail.trail_logging", "trail/eu-west-1/org-all"): Status.ERROR,
    }
    trail = out[("cloudtrail.trail_logging", "trail/eu-west-1/org-all")]
    assert trail.details["required_permission"] == "cloudtrail:GetTrailStatus"
    assert trail.region == "eu-west-1"
    assert summarize(snapshot).regions == ["us-east-1"]


async def test_delivery_details_are_reported(clients: dict[str, CloudTrailClient]) -> None:
    us = clients["us-east-1"]
    delivered = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    with AioStubber(us) as stub:
        stub.add_response("describe_trails", {"trailList": [described("audit-all", multi=True)]})
        stub.add_response(
            "get_trail_status",
            {"IsLogging": True, "LatestDeliveryTime": delivered, "LatestDeliveryError": "NoSuchBucket"},
        )
        snapshot = await scan(regional(clients), regions=["us-east-1"], concurrency=4)

    out = by_key(evaluate(CHECKS, snapshot, CTX))
    trail = out[("cloudtrail.trail_logging", "trail/us-east-1/audit-all")]
    assert trail.details["latest_delivery_time"] == "2025-03-01T12:30:00+00:00"
    assert trail.details["latest_delivery_error"] == "NoSuchBucket"
    assert out[("cloudtrail.multi_region_logging", "account")].status is Status.PASS


async def test_throttled_status_raises_transient(clients: dict[str, CloudTrailClient]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("describe_trails", {"trailList": [described("audit-all", multi=True)]})
        stub.add_client_error("get_trail_status", "ThrottlingException", "Rate exceeded", 400)
        with pytest.raises(TransientAwsError, match="cloudtrail:GetTrailStatus"):
            await scan(regional(clients), regions=["us-east-1"], concurrency=4)


async def test_server_error_on_describe_raises_transient(clients: dict[str, CloudTrailClient]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_client_error("describe_trails", "InternalFailure", "oops", 503)
        with pytest.raises(TransientAwsError, match="cloudtrail:DescribeTrails"):
            await scan(regional(clients), regions=["us-east-1"], concurrency=4)


# --- bounded concurrency --------------------------------------------------------------------------


async def test_bounded_limits_concurrency_and_keeps_order() -> None:
    in_flight = peak = 0

    async def work(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002 * (5 - i % 5))
        in_flight -= 1
        return i * 2

    assert await _bounded(3, range(12), work) == [i * 2 for i in range(12)]
    assert peak == 3


async def test_bounded_raises_the_first_failure_itself_and_cancels_the_rest() -> None:
    async def work(i: int) -> int:
        if i == 1:
            raise TransientAwsError("throttled")
        await asyncio.sleep(5)
        return i

    started = time.monotonic()
    with pytest.raises(TransientAwsError, match="throttled"):
        await _bounded(4, range(4), work)
    assert time.monotonic() - started < 2
