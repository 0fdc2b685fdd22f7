"""collect() against moto (every kind of bucket configuration, two regions), and error paths moto cannot produce
through AioStubber."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.stub import AioStubber

from services.collector_s3.app import summarize
from services.collector_s3.checks import CHECKS
from services.collector_s3.collect import ClientFor, collect, scan
from shared.aws import ApiCallCounter, AwsClients, TransientAwsError
from shared.checks import RunContext, evaluate
from shared.controls import catalog_by_id
from shared.messages import CheckRequested, Finding, Service, Status
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT, boto3_client

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

RUN_ID = "run-" + "2" * 32
CTX = RunContext(RUN_ID, MOTO_ACCOUNT, datetime(2025, 1, 1, tzinfo=UTC), "test")
KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
PAGE = {"MaxBuckets": 10_000}  # AWS's largest page (see LIST_PAGE_SIZE)
CATALOG = catalog_by_id()
LOG_DELIVERY = "uri=http://acs.amazonaws.com/groups/s3/LogDelivery"
CHECK_IDS = (
    "s3.bucket_default_encryption",
    "s3.bucket_sse_kms",
    "s3.bucket_versioning",
    "s3.bucket_access_logging",
    "s3.bucket_public_access_block",
)
ENCRYPTION_CHECKS = ("s3.bucket_default_encryption", "s3.bucket_sse_kms")


def request() -> CheckRequested:
    return CheckRequested(
        run_id=RUN_ID,
        request_id="req-s3",
        account_id=MOTO_ACCOUNT,
        service=Service.S3,
        regions=["us-east-1"],
        requested_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def by_resource(findings: list[Finding], check_id: str = "s3.bucket_default_encryption") -> dict[str, Finding]:
    return {f.resource_id: f for f in findings if f.check_id == check_id}


def statuses(findings: list[Finding]) -> dict[tuple[str, str], Status]:
    return {(f.check_id, f.resource_id): f.status for f in findings}


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


def seed_account(endpoint: str) -> None:
    """Every kind of configuration the checks judge; `EXPECTED` below is the truth, written down separately."""
    us = boto3_client(endpoint, "s3", "us-east-1")
    eu = boto3_client(endpoint, "s3", "eu-west-1")
    for name in ("plain-logs", "sse-s3-data", "kms-data", "dsse-data", "access-logs"):
        us.create_bucket(Bucket=name)
    us.put_bucket_acl(Bucket="access-logs", GrantWrite=LOG_DELIVERY, GrantReadACP=LOG_DELIVERY)
    encrypt(us, "sse-s3-data", "AES256")
    us.put_bucket_versioning(Bucket="sse-s3-data", VersioningConfiguration={"Status": "Enabled"})
    us.put_bucket_versioning(Bucket="sse-s3-data", VersioningConfiguration={"Status": "Suspended"})
    us.put_public_access_block(
        Bucket="sse-s3-data", PublicAccessBlockConfiguration={"BlockPublicAcls": True, "IgnorePublicAcls": True}
    )
    encrypt(us, "kms-data", "aws:kms", KEY, bucket_key=True)
    us.put_bucket_versioning(Bucket="kms-data", VersioningConfiguration={"Status": "Enabled"})
    us.put_bucket_logging(
        Bucket="kms-data",
        BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": "access-logs", "TargetPrefix": "kms-data/"}},
    )
    full = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": True, "RestrictPublicBuckets": True}
    us.put_public_access_block(Bucket="kms-data", PublicAccessBlockConfiguration=full)
    encrypt(us, "dsse-data", "aws:kms:dsse", KEY)
    us.put_bucket_versioning(Bucket="dsse-data", VersioningConfiguration={"Status": "Enabled"})
    us.put_public_access_block(Bucket="dsse-data", PublicAccessBlockConfiguration=full)
    eu.create_bucket(Bucket="eu-archive", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    encrypt(eu, "eu-archive", "AES256")
    eu.put_bucket_versioning(Bucket="eu-archive", VersioningConfiguration={"Status": "Enabled"})
    eu.put_public_access_block(Bucket="eu-archive", PublicAccessBlockConfiguration=full)


P, F = Status.PASS, Status.FAIL
# bucket -> (region, statuses in CHECK_IDS order: default encryption, SSE-KMS, versioning, access logging, PAB)
EXPECTED: dict[str, tuple[str, tuple[Status, ...]]] = {
    "plain-logs": ("us-east-1", (F, F, F, F, F)),
    "sse-s3-data": ("us-east-1", (P, F, F, F, F)),
    "kms-data": ("us-east-1", (P, P, P, P, P)),
    "dsse-data": ("us-east-1", (P, P, P, F, P)),
    "access-logs": ("us-east-1", (F, F, F, F, F)),
    "eu-archive": ("eu-west-1", (P, F, P, F, P)),
}


async def test_collect_realistic_account(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    seed_account(moto_endpoint)
    settings = make_settings(aws_endpoint_url=moto_endpoint, aws_concurrency=2)
    counter = ApiCallCounter()

    snapshot = await collect(AwsClients(settings), request(), counter, settings)

    findings = evaluate(CHECKS, snapshot, CTX)
    assert {(f.check_id, f.resource_id): (f.status, f.region) for f in findings} == {
        (check_id, f"bucket/{name}"): (status, region)
        for name, (region, expected) in EXPECTED.items()
        for check_id, status in zip(CHECK_IDS, expected, strict=True)
    }
    out = by_resource(findings)
    assert out["bucket/kms-data"].summary == f"default encryption SSE-KMS (aws:kms, key {KEY})"
    assert out["bucket/kms-data"].details == {
        "bucket_name": "kms-data",
        "algorithm": "aws:kms",
        "kms_key_id": KEY,
        "bucket_key_enabled": True,
    }
    assert out["bucket/eu-archive"].details["algorithm"] == "AES256"
    assert out["bucket/plain-logs"].resource_arn == "arn:aws:s3:::plain-logs"
    assert by_resource(findings, "s3.bucket_sse_kms")["bucket/dsse-data"].details["algorithm"] == "aws:kms:dsse"
    versioning = by_resource(findings, "s3.bucket_versioning")
    assert versioning["bucket/sse-s3-data"].summary == "versioning suspended: new object versions are not kept"
    assert versioning["bucket/plain-logs"].summary == "versioning never enabled"
    logging = by_resource(findings, "s3.bucket_access_logging")
    assert logging["bucket/kms-data"].details["target_bucket"] == "access-logs"
    assert logging["bucket/kms-data"].details["target_prefix"] == "kms-data/"
    pab = by_resource(findings, "s3.bucket_public_access_block")
    assert pab["bucket/sse-s3-data"].summary == "public access block lacks BlockPublicPolicy, RestrictPublicBuckets"
    assert pab["bucket/plain-logs"].summary == "no public access block configured"  # NoSuchPublicAccessBlock...
    for finding in findings:
        assert finding.remediation == ("" if finding.status is Status.PASS else CATALOG[finding.check_id].remediation)
    summary = summarize(snapshot)
    assert summary.population == {"buckets": 6}
    assert summary.metrics == {
        "encrypted_percent": 66.7,
        "kms_percent": 33.3,
        "versioning_percent": 50.0,
        "logging_percent": 16.7,
        "public_access_blocked_percent": 50.0,
    }
    assert summary.regions == ["eu-west-1", "us-east-1"]
    # moto never returns BucketRegion, so GetBucketLocation is the fifth call per bucket (on AWS: four).
    assert counter.snapshot() == {
        "s3:GetBucketEncryption": 6,
        "s3:GetBucketLocation": 6,
        "s3:GetBucketLogging": 6,
        "s3:GetBucketVersioning": 6,
        "s3:GetPublicAccessBlock": 6,
        "s3:ListBuckets": 1,
    }


def aws_regional(aws: AwsClients, counter: ApiCallCounter, opened: list[str], in_flight: list[int]) -> ClientFor:
    """Clients from `AwsClients`, recording which regions were opened and the peak of calls in flight."""

    def sent(**_: Any) -> None:
        in_flight[0] += 1
        in_flight[1] = max(in_flight[1], in_flight[0])

    def received(**_: Any) -> None:
        in_flight[0] -= 1

    @asynccontextmanager
    async def client_for(region: str) -> AsyncIterator[S3Client]:
        opened.append(region)
        async with aws.client("s3", region, counter) as s3:
            s3.meta.events.register("before-send.s3.*", sent)
            s3.meta.events.register("response-received.s3.*", received)
            yield s3

    return client_for


async def test_one_client_per_region_at_most_five_calls_per_bucket_and_bounded_concurrency(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    us = boto3_client(moto_endpoint, "s3", "us-east-1")
    eu = boto3_client(moto_endpoint, "s3", "eu-west-1")
    for i in range(36):
        if i % 6 == 5:
            eu.create_bucket(Bucket=f"many-{i:02d}", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
        else:
            us.create_bucket(Bucket=f"many-{i:02d}")
    aws = AwsClients(make_settings(aws_endpoint_url=moto_endpoint))
    counter, opened, in_flight = ApiCallCounter(), list[str](), [0, 0]

    snapshot = await scan(aws_regional(aws, counter, opened, in_flight), home_region="us-east-1", concurrency=3)

    assert len(snapshot.buckets) == 36
    assert opened == ["us-east-1", "eu-west-1"]
    calls = counter.snapshot()
    assert calls.pop("s3:ListBuckets") == 1
    assert calls == dict.fromkeys(
        [
            "s3:GetBucketEncryption",
            "s3:GetBucketLocation",
            "s3:GetBucketLogging",
            "s3:GetBucketVersioning",
            "s3:GetPublicAccessBlock",
        ],
        36,
    )
    assert in_flight == [0, 3]  # all answered; never more than `concurrency` at once, and the bound was reached
    assert sum(1 for bucket in snapshot.buckets if bucket.region == "eu-west-1") == 6


async def test_moto_truncates_at_max_buckets_without_a_token_and_no_bucket_is_lost(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    us = boto3_client(moto_endpoint, "s3", "us-east-1")
    for name in ("page-one", "page-two", "page-three"):
        us.create_bucket(Bucket=name)
    # The quirk itself: a page of 2 and no ContinuationToken, although a third bucket exists.
    page = us.list_buckets(MaxBuckets=2)
    assert (len(page["Buckets"]), page.get("ContinuationToken")) == (2, None)
    aws = AwsClients(make_settings(aws_endpoint_url=moto_endpoint))
    counter = ApiCallCounter()

    snapshot = await scan(aws_regional(aws, counter, [], [0, 0]), home_region="us-east-1", concurrency=2, page_size=2)

    assert sorted(bucket.name for bucket in snapshot.buckets) == ["page-one", "page-three", "page-two"]
    assert counter.counts["s3:ListBuckets"] == 2  # the page, then one unpaginated listing to confirm it


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


# The four per-bucket calls in the order scan makes them, each with an answer that passes every check.
PASSING: dict[str, dict[str, Any]] = {
    "get_bucket_encryption": {
        "ServerSideEncryptionConfiguration": {
            "Rules": [
                {
                    "ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": KEY},
                    "BucketKeyEnabled": True,
                }
            ]
        }
    },
    "get_bucket_versioning": {"Status": "Enabled"},
    "get_bucket_logging": {"LoggingEnabled": {"TargetBucket": "central-logs", "TargetPrefix": "logs/"}},
    "get_public_access_block": {
        "PublicAccessBlockConfiguration": {
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        }
    },
}


def answer(
    stub: AioStubber,
    bucket: str,
    errors: Mapping[str, tuple[str, int]] | None = None,
    **answers: dict[str, Any],
) -> None:
    """Queue the bucket's four calls: `errors` maps a method to (error code, HTTP status), `answers` replace the
    passing answer of a method."""
    for method, passing in PASSING.items():
        if errors and method in errors:
            code, status = errors[method]
            stub.add_client_error(method, code, f"{code} (stubbed)", status, expected_params={"Bucket": bucket})
        else:
            stub.add_response(method, answers.get(method, passing), {"Bucket": bucket})


def recorded(client: S3Client) -> list[str]:
    """The operations a client is asked for, stubbed or not (before-parameter-build precedes the stub)."""
    operations: list[str] = []

    def record(*, event_name: str = "", **_: Any) -> None:
        operations.append(event_name.rsplit(".", 1)[-1])

    client.meta.events.register("before-parameter-build.s3", record)
    return operations


async def test_list_buckets_access_denied_is_one_account_error(clients: dict[str, S3Client]) -> None:
    with AioStubber(clients["us-east-1"]) as stub:
        stub.add_client_error("list_buckets", "AccessDenied", "Access Denied", 403, expected_params=PAGE)
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=4)
        stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    assert [(f.check_id, f.status, f.resource_id) for f in findings] == [
        (check_id, Status.ERROR, "account") for check_id in sorted(CHECK_IDS)
    ]
    for finding in findings:
        assert finding.details["required_permission"] == "s3:ListAllMyBuckets"
        assert finding.details["api_call"] == "s3:ListBuckets"


async def test_encryption_access_denied_is_error_not_fail(clients: dict[str, S3Client]) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    opened: list[str] = []
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        us_stub.add_response("list_buckets", listed("secret-data", region="eu-west-1"), PAGE)
        answer(eu_stub, "secret-data", {"get_bucket_encryption": ("AccessDenied", 403)})
        snapshot = await scan(regional(clients, opened), home_region="us-east-1", concurrency=4)
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    # BucketRegion was in the listing: no GetBucketLocation, and the calls went through the eu-west-1 client.
    assert opened == ["us-east-1", "eu-west-1"]
    findings = evaluate(CHECKS, snapshot, CTX)
    finding = by_resource(findings)["bucket/secret-data"]
    assert finding.status is Status.ERROR
    assert finding.region == "eu-west-1"
    assert finding.details["required_permission"] == "s3:GetEncryptionConfiguration"
    assert finding.summary == "GetBucketEncryption was denied (AccessDenied): grant s3:GetEncryptionConfiguration"
    assert by_resource(findings, "s3.bucket_sse_kms")["bucket/secret-data"].status is Status.ERROR


@pytest.mark.parametrize(
    ("method", "operation", "permission", "erroring"),
    [
        ("get_bucket_encryption", "GetBucketEncryption", "s3:GetEncryptionConfiguration", ENCRYPTION_CHECKS),
        ("get_bucket_versioning", "GetBucketVersioning", "s3:GetBucketVersioning", ("s3.bucket_versioning",)),
        ("get_bucket_logging", "GetBucketLogging", "s3:GetBucketLogging", ("s3.bucket_access_logging",)),
        (
            "get_public_access_block",
            "GetPublicAccessBlock",
            "s3:GetBucketPublicAccessBlock",
            ("s3.bucket_public_access_block",),
        ),
    ],
)
async def test_access_denied_on_one_call_errors_only_the_checks_that_need_it(
    clients: dict[str, S3Client], method: str, operation: str, permission: str, erroring: tuple[str, ...]
) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        us_stub.add_response(
            "list_buckets",
            {"Buckets": listed("secret-data", region="eu-west-1")["Buckets"] + listed("fine-data")["Buckets"]},
            PAGE,
        )
        us_stub.add_response("get_bucket_location", {}, {"Bucket": "fine-data"})
        answer(eu_stub, "secret-data", {method: ("AccessDenied", 403)})
        answer(us_stub, "fine-data")
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=4)
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    assert statuses(findings) == {
        **{(c, "bucket/secret-data"): Status.ERROR if c in erroring else Status.PASS for c in CHECK_IDS},
        **{(c, "bucket/fine-data"): Status.PASS for c in CHECK_IDS},
    }
    for finding in findings:
        if finding.status is Status.ERROR:
            assert finding.details["api_call"] == f"s3:{operation}"
            assert finding.details["required_permission"] == permission
            assert finding.summary == f"{operation} was denied (AccessDenied): grant {permission}"
            assert finding.region == "eu-west-1"


async def test_location_denied_is_error_for_that_bucket_without_an_encryption_call(
    clients: dict[str, S3Client],
) -> None:
    us = clients["us-east-1"]
    operations = recorded(us)
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("where-bucket"), PAGE)
        stub.add_client_error("get_bucket_location", "AccessDenied", "Access Denied", 403, {"Bucket": "where-bucket"})
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=4)
        stub.assert_no_pending_responses()

    assert operations == ["ListBuckets", "GetBucketLocation"]  # no per-bucket call without the bucket's region
    findings = evaluate(CHECKS, snapshot, CTX)
    assert [f.status for f in findings] == [Status.ERROR] * 5
    for finding in findings:
        assert finding.details["required_permission"] == "s3:GetBucketLocation"
        assert finding.region == "global"


async def test_not_found_configuration_is_fail_and_legacy_eu_location(clients: dict[str, S3Client]) -> None:
    us, eu = clients["us-east-1"], clients["eu-west-1"]
    with AioStubber(us) as us_stub, AioStubber(eu) as eu_stub:
        us_stub.add_response("list_buckets", listed("old-eu-bucket", "home-bucket"), PAGE)
        us_stub.add_response("get_bucket_location", {"LocationConstraint": "EU"}, {"Bucket": "old-eu-bucket"})
        us_stub.add_response("get_bucket_location", {}, {"Bucket": "home-bucket"})
        answer(
            eu_stub,
            "old-eu-bucket",
            {
                "get_bucket_encryption": ("ServerSideEncryptionConfigurationNotFoundError", 404),
                "get_public_access_block": ("NoSuchPublicAccessBlockConfiguration", 404),
            },
            get_bucket_versioning={},
            get_bucket_logging={},
        )
        answer(
            us_stub,
            "home-bucket",
            get_bucket_encryption={
                "ServerSideEncryptionConfiguration": {
                    "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
                }
            },
        )
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=1)
        us_stub.assert_no_pending_responses()
        eu_stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    out = by_resource(findings)
    assert {k: (f.status, f.region) for k, f in out.items()} == {
        "bucket/old-eu-bucket": (Status.FAIL, "eu-west-1"),
        "bucket/home-bucket": (Status.PASS, "us-east-1"),
    }
    # Every "not configured" answer is a FAIL, never an ERROR.
    assert {f.check_id: f.summary for f in findings if f.resource_id == "bucket/old-eu-bucket"} == {
        "s3.bucket_default_encryption": "no default server-side encryption",
        "s3.bucket_sse_kms": "no default server-side encryption",
        "s3.bucket_versioning": "versioning never enabled",
        "s3.bucket_access_logging": "server access logging disabled",
        "s3.bucket_public_access_block": "no public access block configured",
    }
    assert by_resource(findings, "s3.bucket_sse_kms")["bucket/home-bucket"].status is Status.FAIL


async def test_mfa_delete_and_partial_public_access_block_as_aws_answers_them(clients: dict[str, S3Client]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("vault-data", region="us-east-1"), PAGE)
        answer(
            stub,
            "vault-data",
            get_bucket_versioning={"Status": "Enabled", "MFADelete": "Enabled"},
            get_public_access_block={"PublicAccessBlockConfiguration": {"BlockPublicAcls": True}},
        )
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=1)
        stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    versioning = by_resource(findings, "s3.bucket_versioning")["bucket/vault-data"]
    assert (versioning.status, versioning.summary) == (Status.PASS, "versioning enabled (MFA delete enabled)")
    assert versioning.details["mfa_delete"] == "Enabled"
    pab = by_resource(findings, "s3.bucket_public_access_block")["bucket/vault-data"]
    assert pab.status is Status.FAIL
    assert pab.details["missing"] == ["IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"]


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
    assert [(f.status, f.resource_id) for f in findings] == [(Status.ERROR, "account")] * 5
    assert summarize(snapshot).population == {}


async def test_full_last_page_without_a_token_is_confirmed_by_one_unpaginated_listing(
    clients: dict[str, S3Client],
) -> None:
    us = clients["us-east-1"]
    operations = recorded(us)
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("one-bucket", "two-bucket", region="us-east-1"), {"MaxBuckets": 2})
        stub.add_response("list_buckets", listed("one-bucket", "two-bucket", "three-bucket"), {})
        stub.add_response("get_bucket_location", {}, {"Bucket": "three-bucket"})
        for name in ("one-bucket", "two-bucket", "three-bucket"):
            answer(stub, name)
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=1, page_size=2)
        stub.assert_no_pending_responses()

    assert [bucket.name for bucket in snapshot.buckets] == ["one-bucket", "two-bucket", "three-bucket"]
    assert operations[:3] == ["ListBuckets", "ListBuckets", "GetBucketLocation"]
    assert set(statuses(evaluate(CHECKS, snapshot, CTX)).values()) == {Status.PASS}


async def test_full_last_page_that_cannot_be_confirmed_is_an_error(clients: dict[str, S3Client]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("one-bucket", "two-bucket", region="us-east-1"), {"MaxBuckets": 2})
        stub.add_client_error("list_buckets", "AccessDenied", "paginate: more than 10,000 buckets", 403, {})
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=1, page_size=2)
        stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    assert [(f.status, f.resource_id) for f in findings] == [(Status.ERROR, "account")] * 5
    assert findings[0].details["api_call"] == "s3:ListBuckets"


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


@pytest.mark.parametrize(
    ("method", "operation"),
    [
        ("get_bucket_versioning", "GetBucketVersioning"),
        ("get_bucket_logging", "GetBucketLogging"),
        ("get_public_access_block", "GetPublicAccessBlock"),
    ],
)
async def test_server_errors_on_the_other_calls_raise_transient(
    clients: dict[str, S3Client], method: str, operation: str
) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("busy-bucket", region="us-east-1"), PAGE)
        answer(stub, "busy-bucket", {method: ("InternalError", 500)})
        with pytest.raises(TransientAwsError, match=f"s3:{operation}"):
            await scan(regional(clients), home_region="us-east-1", concurrency=4)


async def test_not_implemented_is_an_error_for_that_check_not_a_retry(clients: dict[str, S3Client]) -> None:
    us = clients["us-east-1"]
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("odd-bucket", region="us-east-1"), PAGE)
        answer(stub, "odd-bucket", {"get_bucket_logging": ("NotImplemented", 501)})
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=4)
        stub.assert_no_pending_responses()

    found = statuses(evaluate(CHECKS, snapshot, CTX))
    assert found == {(c, "bucket/odd-bucket"): Status.PASS for c in CHECK_IDS} | {
        ("s3.bucket_access_logging", "bucket/odd-bucket"): Status.ERROR
    }


async def test_other_encryption_errors_are_errors_for_that_bucket_only(clients: dict[str, S3Client]) -> None:
    us = clients["us-east-1"]
    gone = dict.fromkeys(PASSING, ("NoSuchBucket", 404))
    with AioStubber(us) as stub:
        stub.add_response("list_buckets", listed("gone-bucket", "kept-bucket", region="us-east-1"), PAGE)
        answer(stub, "gone-bucket", gone)
        answer(
            stub,
            "kept-bucket",
            get_bucket_encryption={
                "ServerSideEncryptionConfiguration": {
                    "Rules": [
                        {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms:dsse", "KMSMasterKeyID": KEY}}
                    ]
                }
            },
        )
        snapshot = await scan(regional(clients), home_region="us-east-1", concurrency=1)
        stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    out = by_resource(findings)
    assert out["bucket/gone-bucket"].status is Status.ERROR
    assert out["bucket/gone-bucket"].details["error_code"] == "NoSuchBucket"
    assert out["bucket/kept-bucket"].status is Status.PASS
    assert out["bucket/kept-bucket"].details["algorithm"] == "aws:kms:dsse"
    assert statuses(findings) == {(c, "bucket/gone-bucket"): Status.ERROR for c in CHECK_IDS} | {
        (c, "bucket/kept-bucket"): Status.PASS for c in CHECK_IDS
    }


# --- bounded concurrency --------------------------------------------------------------------------
