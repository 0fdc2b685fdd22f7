"""The S3 checks and summary on hand-built snapshots: no AWS, no NATS."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest

from services.collector_s3.app import summarize
from services.collector_s3.checks import (
    CHECKS,
    bucket_access_logging,
    bucket_default_encryption,
    bucket_public_access_block,
    bucket_sse_kms,
    bucket_versioning,
)
from services.collector_s3.collect import location_region
from services.collector_s3.snapshot import (
    AccessLogging,
    Bucket,
    DefaultEncryption,
    PublicAccessBlock,
    S3Snapshot,
    Versioning,
)
from shared.aws import AwsCallError
from shared.checks import Check, Outcome, RunContext, evaluate
from shared.controls import check_info
from shared.messages import Status

KEY = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
DENIED_ENC = AwsCallError(
    "s3", "GetBucketEncryption", "AccessDenied", "Access Denied", "s3:GetEncryptionConfiguration", False
)
DENIED_LOCATION = AwsCallError(
    "s3", "GetBucketLocation", "AccessDenied", "Access Denied", "s3:GetBucketLocation", False
)
DENIED_LIST = AwsCallError("s3", "ListBuckets", "AccessDenied", "Access Denied", "s3:ListAllMyBuckets", False)

ACCOUNT = S3Snapshot(
    buckets=(
        Bucket("plain-logs", "us-east-1"),
        Bucket("sse-s3-data", "us-east-1", encryption=DefaultEncryption("AES256")),
        Bucket("kms-data", "eu-west-1", encryption=DefaultEncryption("aws:kms", KEY, bucket_key_enabled=True)),
        Bucket("kms-default-key", "us-west-2", encryption=DefaultEncryption("aws:kms")),
        Bucket("dsse-data", "us-east-1", encryption=DefaultEncryption("aws:kms:dsse", KEY)),
        Bucket("denied-data", "eu-west-1", encryption_error=DENIED_ENC),
        Bucket("nowhere-data", None, error=DENIED_LOCATION),
    )
)


def outcomes(snapshot: S3Snapshot) -> dict[str, Outcome]:
    result = {o.resource_id: o for o in bucket_default_encryption(snapshot)}
    return result


def test_statuses_per_bucket() -> None:
    out = outcomes(ACCOUNT)
    assert {k: o.status for k, o in out.items()} == {
        "bucket/plain-logs": Status.FAIL,
        "bucket/sse-s3-data": Status.PASS,
        "bucket/kms-data": Status.PASS,
        "bucket/kms-default-key": Status.PASS,
        "bucket/dsse-data": Status.PASS,
        "bucket/denied-data": Status.ERROR,
        "bucket/nowhere-data": Status.ERROR,
    }


def test_pass_summaries_and_details_name_the_algorithm_and_key() -> None:
    out = outcomes(ACCOUNT)
    assert out["bucket/sse-s3-data"].summary == "default encryption SSE-S3 (AES256)"
    assert out["bucket/kms-data"].summary == f"default encryption SSE-KMS (aws:kms, key {KEY})"
    assert out["bucket/kms-default-key"].summary == "default encryption SSE-KMS (aws:kms, AWS managed key aws/s3)"
    assert out["bucket/dsse-data"].summary == f"default encryption DSSE-KMS (aws:kms:dsse, key {KEY})"
    kms = out["bucket/kms-data"]
    assert kms.details == {
        "bucket_name": "kms-data",
        "algorithm": "aws:kms",
        "kms_key_id": KEY,
        "bucket_key_enabled": True,
    }
    assert (kms.resource_arn, kms.resource_type, kms.region) == (
        "arn:aws:s3:::kms-data",
        "AWS::S3::Bucket",
        "eu-west-1",
    )


def test_missing_default_encryption_fails() -> None:
    plain = outcomes(ACCOUNT)["bucket/plain-logs"]
    assert plain.summary == "no default server-side encryption"
    assert plain.details["algorithm"] is None
    assert plain.region == "us-east-1"


def test_failed_calls_are_errors_never_unencrypted() -> None:
    out = outcomes(ACCOUNT)
    denied = out["bucket/denied-data"]
    assert denied.details["required_permission"] == "s3:GetEncryptionConfiguration"
    assert "s3:GetEncryptionConfiguration" in denied.summary
    assert denied.region == "eu-west-1"
    nowhere = out["bucket/nowhere-data"]
    assert nowhere.details["required_permission"] == "s3:GetBucketLocation"
    assert nowhere.region == "global"


def test_list_failure_is_one_account_error() -> None:
    (only,) = list(bucket_default_encryption(S3Snapshot(list_error=DENIED_LIST)))
    assert (only.status, only.resource_id, only.resource_type) == (Status.ERROR, "account", "AWS::::Account")
    assert only.details["required_permission"] == "s3:ListAllMyBuckets"


def test_no_buckets_no_findings() -> None:
    assert [list(chk(S3Snapshot())) for chk in CHECKS] == [[], [], [], [], []]


def test_summarize() -> None:
    summary = summarize(ACCOUNT)
    assert summary.population == {"buckets": 7}
    assert summary.metrics == {
        "encrypted_percent": 80.0,  # 4 of the 5 buckets whose answer could be read
        "kms_percent": 60.0,  # kms-data, kms-default-key, dsse-data of the same 5
        "versioning_percent": 0.0,  # the other answers of denied-data could be read: 6 buckets
        "logging_percent": 0.0,
        "public_access_blocked_percent": 0.0,
    }
    assert summary.regions == ["eu-west-1", "us-east-1", "us-west-2"]
    assert summarize(S3Snapshot()).metrics == {}
    assert summarize(S3Snapshot(list_error=DENIED_LIST)).population == {}


def test_location_constraint_to_region() -> None:
    assert location_region(None) == "us-east-1"
    assert location_region("") == "us-east-1"
    assert location_region("EU") == "eu-west-1"
    assert location_region("ap-southeast-2") == "ap-southeast-2"


# --- the other four checks ------------------------------------------------------------------------

DENIED_VERSIONING = AwsCallError(
    "s3", "GetBucketVersioning", "AccessDenied", "Access Denied", "s3:GetBucketVersioning", False
)
DENIED_LOGGING = AwsCallError("s3", "GetBucketLogging", "AccessDenied", "Access Denied", "s3:GetBucketLogging", False)
DENIED_PAB = AwsCallError(
    "s3", "GetPublicAccessBlock", "AccessDenied", "Access Denied", "s3:GetBucketPublicAccessBlock", False
)
FULL_PAB = PublicAccessBlock(True, True, True, True)


def by_id(check: Check[S3Snapshot], snapshot: S3Snapshot) -> dict[str, Outcome]:
    return {o.resource_id: o for o in check(snapshot)}


def test_sse_kms_passes_only_kms_algorithms() -> None:
    out = by_id(bucket_sse_kms, ACCOUNT)
    assert {k: o.status for k, o in out.items()} == {
        "bucket/plain-logs": Status.FAIL,
        "bucket/sse-s3-data": Status.FAIL,
        "bucket/kms-data": Status.PASS,
        "bucket/kms-default-key": Status.PASS,
        "bucket/dsse-data": Status.PASS,
        "bucket/denied-data": Status.ERROR,
        "bucket/nowhere-data": Status.ERROR,
    }
    assert out["bucket/plain-logs"].summary == "no default server-side encryption"
    assert out["bucket/sse-s3-data"].summary == "default encryption SSE-S3 (AES256), not a KMS key"
    assert out["bucket/dsse-data"].summary == f"default encryption DSSE-KMS (aws:kms:dsse, key {KEY})"
    assert out["bucket/kms-data"].details == {
        "bucket_name": "kms-data",
        "algorithm": "aws:kms",
        "kms_key_id": KEY,
        "bucket_key_enabled": True,
    }
    assert out["bucket/denied-data"].details["required_permission"] == "s3:GetEncryptionConfiguration"
    assert out["bucket/denied-data"].details["api_call"] == "s3:GetBucketEncryption"
    assert out["bucket/nowhere-data"].details["required_permission"] == "s3:GetBucketLocation"


def test_versioning_enabled_suspended_and_never_enabled() -> None:
    snapshot = S3Snapshot(
        buckets=(
            Bucket("kept-data", "us-east-1", versioning=Versioning("Enabled")),
            Bucket("mfa-data", "us-east-1", versioning=Versioning("Enabled", mfa_delete="Enabled")),
            Bucket("paused-data", "eu-west-1", versioning=Versioning("Suspended", mfa_delete="Disabled")),
            Bucket("fresh-data", "us-east-1"),
            Bucket("denied-data", "us-east-1", versioning_error=DENIED_VERSIONING),
        )
    )
    out = by_id(bucket_versioning, snapshot)
    assert {k: (o.status, o.summary) for k, o in out.items()} == {
        "bucket/kept-data": (Status.PASS, "versioning enabled"),
        "bucket/mfa-data": (Status.PASS, "versioning enabled (MFA delete enabled)"),
        "bucket/paused-data": (
            Status.FAIL,
            "versioning suspended: new object versions are not kept (MFA delete disabled)",
        ),
        "bucket/fresh-data": (Status.FAIL, "versioning never enabled"),
        "bucket/denied-data": (
            Status.ERROR,
            "GetBucketVersioning was denied (AccessDenied): grant s3:GetBucketVersioning",
        ),
    }
    assert out["bucket/paused-data"].details == {
        "bucket_name": "paused-data",
        "versioning_status": "Suspended",
        "mfa_delete": "Disabled",
    }
    assert out["bucket/paused-data"].region == "eu-west-1"
    assert out["bucket/fresh-data"].details["versioning_status"] is None
    # An ERROR reports the call, never an answer-shaped "status None" that reads as never enabled.
    assert "versioning_status" not in out["bucket/denied-data"].details
    assert out["bucket/denied-data"].details["required_permission"] == "s3:GetBucketVersioning"


def test_access_logging_on_and_off() -> None:
    snapshot = S3Snapshot(
        buckets=(
            Bucket("logged-data", "us-east-1", logging=AccessLogging("central-logs", "logged-data/")),
            Bucket("silent-data", "us-east-1"),
            Bucket("denied-data", "us-east-1", logging_error=DENIED_LOGGING),
        )
    )
    out = by_id(bucket_access_logging, snapshot)
    assert {k: o.status for k, o in out.items()} == {
        "bucket/logged-data": Status.PASS,
        "bucket/silent-data": Status.FAIL,
        "bucket/denied-data": Status.ERROR,
    }
    assert out["bucket/logged-data"].summary == "server access logs delivered to s3://central-logs/logged-data/"
    assert out["bucket/logged-data"].details == {
        "bucket_name": "logged-data",
        "logging_enabled": True,
        "target_bucket": "central-logs",
        "target_prefix": "logged-data/",
    }
    assert out["bucket/silent-data"].summary == "server access logging disabled"
    assert out["bucket/silent-data"].details["logging_enabled"] is False
    assert out["bucket/denied-data"].details["required_permission"] == "s3:GetBucketLogging"


def test_public_access_block_full_partial_and_none() -> None:
    snapshot = S3Snapshot(
        buckets=(
            Bucket("locked-data", "us-east-1", public_access_block=FULL_PAB),
            Bucket(
                "half-data",
                "us-east-1",
                public_access_block=PublicAccessBlock(block_public_acls=True, block_public_policy=True),
            ),
            Bucket("open-data", "us-east-1"),
            Bucket("denied-data", "us-east-1", public_access_block_error=DENIED_PAB),
        )
    )
    out = by_id(bucket_public_access_block, snapshot)
    assert {k: (o.status, o.summary) for k, o in out.items()} == {
        "bucket/locked-data": (Status.PASS, "all four public access block settings on"),
        "bucket/half-data": (Status.FAIL, "public access block lacks IgnorePublicAcls, RestrictPublicBuckets"),
        "bucket/open-data": (Status.FAIL, "no public access block configured"),
        "bucket/denied-data": (
            Status.ERROR,
            "GetPublicAccessBlock was denied (AccessDenied): grant s3:GetBucketPublicAccessBlock",
        ),
    }
    assert out["bucket/half-data"].details == {
        "bucket_name": "half-data",
        "configured": True,
        "BlockPublicAcls": True,
        "IgnorePublicAcls": False,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": False,
        "missing": ["IgnorePublicAcls", "RestrictPublicBuckets"],
    }
    assert out["bucket/open-data"].details == {
        "bucket_name": "open-data",
        "configured": False,
        "BlockPublicAcls": None,
        "IgnorePublicAcls": None,
        "BlockPublicPolicy": None,
        "RestrictPublicBuckets": None,
        "missing": ["BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets"],
    }
    assert out["bucket/denied-data"].details["api_call"] == "s3:GetPublicAccessBlock"


GOOD = Bucket(
    "good-data",
    "us-east-1",
    encryption=DefaultEncryption("aws:kms", KEY, bucket_key_enabled=True),
    versioning=Versioning("Enabled"),
    logging=AccessLogging("central-logs", "good-data/"),
    public_access_block=FULL_PAB,
)
CHECK_IDS = [chk.id for chk in CHECKS]


@pytest.mark.parametrize(
    ("bucket", "error", "erroring"),
    [
        (
            replace(GOOD, encryption_error=DENIED_ENC),
            DENIED_ENC,
            {"s3.bucket_default_encryption", "s3.bucket_sse_kms"},
        ),
        (replace(GOOD, versioning_error=DENIED_VERSIONING), DENIED_VERSIONING, {"s3.bucket_versioning"}),
        (replace(GOOD, logging_error=DENIED_LOGGING), DENIED_LOGGING, {"s3.bucket_access_logging"}),
        (replace(GOOD, public_access_block_error=DENIED_PAB), DENIED_PAB, {"s3.bucket_public_access_block"}),
        (replace(GOOD, region=None, error=DENIED_LOCATION), DENIED_LOCATION, set(CHECK_IDS)),
    ],
    ids=["encryption", "versioning", "logging", "public-access-block", "location"],
)
def test_a_failed_call_errors_only_the_checks_that_need_it(
    bucket: Bucket, error: AwsCallError, erroring: set[str]
) -> None:
    snapshot = S3Snapshot(buckets=(bucket,))
    outcomes = {chk.id: list(chk(snapshot)) for chk in CHECKS}
    assert {check_id: [o.status for o in found] for check_id, found in outcomes.items()} == {
        check_id: [Status.ERROR if check_id in erroring else Status.PASS] for check_id in CHECK_IDS
    }
    for check_id in erroring:
        (outcome,) = outcomes[check_id]
        assert outcome.details["required_permission"] == error.permission
        assert outcome.details["api_call"] == f"s3:{error.operation}"


def test_list_failure_is_one_account_error_in_every_check() -> None:
    for chk in CHECKS:
        (only,) = list(chk(S3Snapshot(list_error=DENIED_LIST)))
        assert (only.status, only.resource_id, only.region) == (Status.ERROR, "account", "global")
        assert only.details["required_permission"] == "s3:ListAllMyBuckets"


def test_findings_carry_the_catalogue_remediation_when_not_passed() -> None:
    snapshot = S3Snapshot(
        buckets=(GOOD, Bucket("bare-data", "us-east-1"), Bucket("lost-data", None, error=DENIED_LOCATION))
    )
    ctx = RunContext("run-" + "3" * 32, "123456789012", datetime(2025, 1, 1, tzinfo=UTC), "test")
    findings = evaluate(CHECKS, snapshot, ctx)
    assert len(findings) == 15
    for finding in findings:
        expected = check_info(finding.check_id).remediation
        assert finding.remediation == ("" if finding.status is Status.PASS else expected)
        assert (
            finding.status
            is {
                "bucket/good-data": Status.PASS,
                "bucket/bare-data": Status.FAIL,
                "bucket/lost-data": Status.ERROR,
            }[finding.resource_id]
        )


def test_summarize_every_metric_over_readable_answers() -> None:
    snapshot = S3Snapshot(
        buckets=(
            GOOD,
            Bucket("bare-data", "us-east-1", encryption=DefaultEncryption("AES256")),
            Bucket("half-data", "eu-west-1", versioning=Versioning("Suspended"), logging_error=DENIED_LOGGING),
            Bucket("denied-data", "eu-west-1", encryption_error=DENIED_ENC, public_access_block_error=DENIED_PAB),
            Bucket("lost-data", None, error=DENIED_LOCATION),
        )
    )
    summary = summarize(snapshot)
    assert summary.population == {"buckets": 5}
    assert summary.metrics == {
        "encrypted_percent": 66.7,  # good, bare of good, bare, half
        "kms_percent": 33.3,  # good of the same 3
        "versioning_percent": 25.0,  # good of good, bare, half, denied
        "logging_percent": 33.3,  # good of good, bare, denied
        "public_access_blocked_percent": 33.3,  # good of good, bare, half
    }
    assert summary.regions == ["eu-west-1", "us-east-1"]
    only_denied = summarize(S3Snapshot(buckets=(Bucket("lost-data", None, error=DENIED_LOCATION),)))
    assert (only_denied.population, only_denied.metrics) == ({"buckets": 1}, {})
