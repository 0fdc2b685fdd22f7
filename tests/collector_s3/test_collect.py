"""collect() against moto (buckets in two regions), and error paths moto cannot produce through AioStubber."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.stub import AioStubber

from services.collector_s3.app import summarize
from services.collector_s3.checks import CHECKS
from services.collector_s3.collect import ClientFor, _bounded, collect, scan
from shared.aws import ApiCallCounter, AwsClients, TransientAwsError
from shared.checks import RunContext, evaluate
from shared.messages import CheckRequested, Finding, Service, Status
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT, boto3_client

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

RUN_ID = "run-" + "2" * 32
CTX = RunContext(RUN_ID, MOTO_ACCOUNT, datetime(2025, 1, 1, tzinfo=UTC), "test")
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PAGE = {"MaxBuckets": 1000}


def request() -> CheckRequested:
    return CheckRequested(
        run_id=RUN_ID,
        request_id="req-s3",
        account_id=MOTO_ACCOUNT,
        service=Service.S3,
        regions=["us-east-1"],
        requested_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def by_resource(findings: list[Finding]) -> dict[str, Finding]:
    return {f.resource_id: f for f in findings}


# --- moto ---------------------------------------------------------------------------------------


def encrypt(s3: Any, bucket: str, algorithm: str, key: str | None = None, bucket_key: bool = False) -> None:
    default: dict[str, str] = {"SSEAlgorithm": algorithm}
    if key:
        default["KMSMasterKeyID"] = key
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": bucket_key}]
        },
    )


async def test_collect_realistic_account(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    us = boto3_client(moto_endpoint, "s3", "us-east-1")
    eu = boto3_client(moto_endpoint, "s3", "eu-west-1")
    us.create_bucket(Bucket="plain-logs")
    us.create_bucket(Bucket="sse-s3-data")
    encrypt(us, "sse-s3-data", "AES256")
    us.create_bucket(Bucket="kms-data")
    encrypt(us, "kms-data", "aws:kms", KEY, bucket_key=True)
    eu.create_bucket(Bucket="eu-archive", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    encrypt(eu, "eu-archive", "AES256")
    settings = make_settings(aws_endpoint_url=moto_endpoint, aws_concurrency=2)
    counter = ApiCallCounter()

    snapshot = await collect(AwsClients(settings), request(), counter, settings)

    out = by_resource(evaluate(CHECKS, snapshot, CTX))
    assert {k: (f.status, f.region) for k, f in out.items()} == {
        "bucket/plain-logs": (Status.FAIL, "us-east-1"),
        "bucket/sse-s3-data": (Status.PASS, "us-east-1"),
        "bucket/kms-data": (Status.PASS, "us-east-1"),
        "bucket/eu-archive": (Status.PASS, "eu-west-1"),
    }
    assert out["bucket/kms-data"].summary == f"default encryption SSE-KMS (aws:kms, key {KEY})"
    assert out["bucket/kms-data"].details == {
        "bucket_name": "kms-data",
        "algorithm": "aws:kms",
        "kms_key_id": KEY,
        "bucket_key_enabled": True,
    }
    assert out["bucket/eu-archive"].details["algorithm"] == "AES256"
    assert out["bucket/plain-logs"].resource_arn == "arn:aws:s3:::plain-logs"
    summary = summarize(snapshot)
    assert summary.population == {"buckets": 4}
    assert summary.metrics == {"encrypted_percent": 75.0}
    assert summary.regions == ["eu-west-1", "us-east-1"]
    assert counter.snapshot() == {"s3:GetBucketEncryption": 4, "s3:GetBucketLocation": 4, "s3:ListBuckets": 1}


async def test_collect_empty_account(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(aws_endpoint_url=moto_endpoint)
    snapshot = await collect(AwsClients(settings), request(), ApiCallCounter(), settings)
    assert snapshot.buckets == ()
    assert snapshot.list_error is None
    assert summarize(snapshot).population == {"buckets": 0}


# --- stubbed errors ---------------------------------------------------------------------------------


@pytest.fixture
async def clients(make_settings: Callable[..., Settings]) -> AsyncIterator[dict[str, S3Client]]:
    """Real aiobotocore S3 clients per region, to be stubbed (no endpoint is ever reached)."""
    aws = AwsClients(make_settings())
    async with AsyncExitStack() as stack:
        yield {
            region: await stack.enter_async_context(aws.client("s3", region)) for region in ("us-east-1", "eu-west-1")
        }


def regional(clients: dict[str, S3Client], opened: list[str] | None = None) -> ClientFor:
    @asynccontextmanager
    async def client_for(region: str) -> AsyncIterator[S3Client]:
        if opened is not None:
            opened.append(region)
        yield clients[region]

    return client_for


def listed(*names: str, region: str | None = None) -> dict[str, Any]:
    buckets: list[dict[str, Any]] = []
    for name in names:
        entry: dict[str, Any] = {"Name": name, "CreationDate": datetime(2024, 1, 1, tzinfo=UTC)}
        if region:
            entry["BucketRegion"] = region
        buckets.append(entry)
    return {"Buckets": buckets}


async def test_list_buckets_access_denied_is_one_account_error(clients: dict[str, S3Client]) -> None:
    with AioStubber(clients["us-east-1"]) as stub:
        stub.add_client_error("list_buckets", "AccessDenied", "Access Denied", 403, expected_params=PAGE)
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=4)
        stub.assert_no_pending_responses()

    (finding,) = evaluate(CHECKS, snapshot, CTX)
    assert (finding.status, finding.resource_id) == (Status.ERROR, "account")
    assert finding.details["required_permission"] == "s3:ListAllMyBuckets"
    assert finding.details["api_call"] == "s3:ListBuckets"


async def test_encryption_access_denied_is_error_not_fail(clients: dict[str, S3Client]) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    opened: list[str] = []
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        us_stub.add_response("list_buckets", listed("secret-data", region="eu-west-1"), PAGE)
        eu_stub.add_client_error(
            "get_bucket_encryption", "AccessDenied", "Access Denied", 403, expected_params={"Bucket": "secret-data"}
        )
        snapshot = await scan(regional(clients, opened), home_region="us-east-1", concurrency=4)
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    # BucketRegion was in the listing: no GetBucketLocation, and the call went through the eu-west-1 client.
    assert opened == ["us-east-1", "eu-west-1"]
    (finding,) = evaluate(CHECKS, snapshot, CTX)
    assert finding.status is Status.ERROR
    assert finding.region == "eu-west-1"
    assert finding.details["required_permission"] == "s3:GetEncryptionConfiguration"
    assert finding.summary == "GetBucketEncryption was denied (AccessDenied): grant s3:GetEncryptionConfiguration"


async def test_location_denied_is_error_for_that_bucket_without_an_encryption_call(
    clients: dict[str, S3Client],
) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("where-bucket"), PAGE)
        stub.add_client_error("get_bucket_location", "AccessDenied", "Access Denied", 403, {"Bucket": "where-bucket"})
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=4)
        stub.assert_no_pending_responses()

    (finding,) = evaluate(CHECKS, snapshot, CTX)
    assert finding.status is Status.ERROR
    assert finding.details["required_permission"] == "s3:GetBucketLocation"


async def test_not_found_configuration_is_fail_and_legacy_eu_location(clients: dict[str, S3Client]) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        us_stub.add_response("list_buckets", listed("old-eu-bucket", "home-bucket"), PAGE)
        us_stub.add_response("get_bucket_location", {"LocationConstraint": "EU"}, {"Bucket": "old-eu-bucket"})
        us_stub.add_response("get_bucket_location", {}, {"Bucket": "home-bucket"})
        eu_stub.add_client_error(
            "get_bucket_encryption",
            "ServerSideEncryptionConfigurationNotFoundError",
            "The server side encryption configuration was not found",
            404,
            expected_params={"Bucket": "old-eu-bucket"},
        )
        us_stub.add_response(
            "get_bucket_encryption",
            {
                "ServerSideEncryptionConfiguration": {
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                }
            },
            {"Bucket": "home-bucket"},
        )
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=1)
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    out = by_resource(evaluate(CHECKS, snapshot, CTX))
    assert {k: (f.status, f.region) for k, f in out.items()} == {
        "bucket/old-eu-bucket": (Status.FAIL, "eu-west-1"),
        "bucket/home-bucket": (Status.PASS, "us-east-1"),
    }


async def test_failing_second_page_of_buckets_is_an_error_never_a_smaller_pass(clients: dict[str, S3Client]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response(
            "list_buckets", {**listed("first-bucket", region="us-east-1"), "ContinuationToken": "t2"}, PAGE
        )
        stub.add_client_error("list_buckets", "AccessDenied", "Access Denied", 403, {**PAGE, "ContinuationToken": "t2"})
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=4)
        stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    assert [(f.status, f.resource_id) for f in findings] == [(Status.ERROR, "account")]
    assert summarize(snapshot).population == {}


async def test_second_page_server_error_is_transient(clients: dict[str, S3Client]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response(
            "list_buckets", {**listed("first-bucket", region="us-east-1"), "ContinuationToken": "t2"}, PAGE
        )
        stub.add_client_error("list_buckets", "InternalError", "We encountered an internal error", 500)
        with pytest.raises(TransientAwsError, match="s3:ListBuckets"):
            await scan(regional(clients), home_region="us-east-1", concurrency=4)


async def test_throttled_encryption_call_raises_transient(clients: dict[str, S3Client]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("busy-bucket", region="us-east-1"), PAGE)
        stub.add_client_error("get_bucket_encryption", "SlowDown", "Please reduce your request rate", 503)
        with pytest.raises(TransientAwsError, match="s3:GetBucketEncryption"):
            await scan(regional(clients), home_region="us-east-1", concurrency=4)


async def test_other_encryption_errors_are_errors_for_that_bucket_only(clients: dict[str, S3Client]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("gone-bucket", "kept-bucket", region="us-east-1"), PAGE)
        stub.add_client_error("get_bucket_encryption", "NoSuchBucket", "gone", 404, {"Bucket": "gone-bucket"})
        stub.add_response(
            "get_bucket_encryption",
            {
                "ServerSideEncryptionConfiguration": {
                    "Rules": [
                        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms:dsse", "KMSMasterKeyID": KEY}}
                    ]
                }
            },
            {"Bucket": "kept-bucket"},
        )
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=1)
        stub.assert_no_pending_responses()

    out = by_resource(evaluate(CHECKS, snapshot, CTX))
    assert out["bucket/gone-bucket"].status is Status.ERROR
    assert out["bucket/gone-bucket"].details["error_code"] == "NoSuchBucket"
    assert out["bucket/kept-bucket"].status is Status.PASS
    assert out["bucket/kept-bucket"].details["algorithm"] == "aws:kms:dsse"


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
