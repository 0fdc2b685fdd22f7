"""The S3 check and summary on hand-built snapshots: no AWS, no NATS."""

from __future__ import annotations

from services.collector_s3.app import summarize
from services.collector_s3.checks import CHECKS, bucket_default_encryption
from services.collector_s3.collect import location_region
from services.collector_s3.snapshot import Bucket, DefaultEncryption, S3Snapshot
from shared.aws import AwsCallError
from shared.checks import Outcome
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
        Bucket("denied-data", "eu-west-1", error=DENIED_ENC),
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
    assert [list(chk(S3Snapshot())) for chk in CHECKS] == [[]]


def test_summarize() -> None:
    summary = summarize(ACCOUNT)
    assert summary.population == {"buckets": 7}
    assert summary.metrics == {"encrypted_percent": 80.0}  # 4 of the 5 buckets whose answer could be read
    assert summary.regions == ["eu-west-1", "us-east-1", "us-west-2"]
    assert summarize(S3Snapshot()).metrics == {}
    assert summarize(S3Snapshot(list_error=DENIED_LIST)).population == {}


def test_location_constraint_to_region() -> None:
    assert location_region(None) == "us-east-1"
    assert location_region("") == "us-east-1"
    assert location_region("EU") == "eu-west-1"
    assert location_region("ap-southeast-2") == "ap-southeast-2"
