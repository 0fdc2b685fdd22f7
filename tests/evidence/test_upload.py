"""The S3 uploader against moto: create-only puts, replays, conflicts, encryption and the start-up bucket check."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.evidence.document import EvidenceDocument
from services.evidence.upload import EvidenceBucketError, EvidenceConflict, S3Uploader
from shared.aws import AwsClients
from shared.settings import Settings
from tests.conftest import boto3_client

BUCKET = "kushim-evidence-storage-test"
KEY = "evidence/123456789012/2026/03/14/run-0/iam.json"
OLD_KEY = "evidence/123456789012/2020/03/14/run-1/iam.json"


def document(body: bytes, key: str = KEY) -> EvidenceDocument:
    return EvidenceDocument(key=key, body=body, sha256=hashlib.sha256(body).hexdigest())


@pytest.fixture
def s3(moto_endpoint: str) -> Any:
    client = boto3_client(moto_endpoint, "s3")
    client.create_bucket(Bucket=BUCKET)
    client.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return client


@pytest.fixture
def s3_settings(make_settings: Callable[..., Settings], moto_endpoint: str) -> Settings:
    return make_settings(aws_endpoint_url=moto_endpoint, evidence_bucket=BUCKET)


@pytest.fixture
async def uploader(s3: Any, s3_settings: Settings) -> AsyncIterator[S3Uploader]:
    up = S3Uploader(AwsClients(s3_settings), s3_settings, BUCKET)
    await up.start()
    try:
        yield up
    finally:
        await up.stop()


def versions(s3: Any, key: str = KEY) -> list[str]:
    listing = s3.list_object_versions(Bucket=BUCKET, Prefix=key)
    return [v["VersionId"] for v in listing.get("Versions", [])]


async def test_put_is_create_only_with_checksum_and_sse(uploader: S3Uploader, s3: Any) -> None:
    doc = document(b'{"a":1}')
    stored = await uploader.put(doc)
    assert stored.location == f"s3://{BUCKET}/{KEY}"
    assert not stored.replay
    head = s3.head_object(Bucket=BUCKET, Key=KEY, ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(doc.body).digest()).decode()
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/json"
    assert versions(s3) == [stored.version_id]

    replay = await uploader.put(doc)
    assert replay.replay
    assert replay.version_id == stored.version_id
    assert versions(s3) == [stored.version_id]  # nothing written


async def test_different_bytes_under_the_same_key_are_a_conflict(uploader: S3Uploader, s3: Any) -> None:
    await uploader.put(document(b'{"a":1}'))
    with pytest.raises(EvidenceConflict, match="not overwritten"):
        await uploader.put(document(b'{"a":2}'))
    assert s3.get_object(Bucket=BUCKET, Key=KEY)["Body"].read() == b'{"a":1}'
    assert len(versions(s3)) == 1


async def test_kms_key_gives_sse_kms(s3: Any, make_settings: Callable[..., Settings], moto_endpoint: str) -> None:
    key_id = boto3_client(moto_endpoint, "kms").create_key()["KeyMetadata"]["Arn"]
    settings = make_settings(aws_endpoint_url=moto_endpoint, evidence_bucket=BUCKET, evidence_kms_key_id=key_id)
    up = S3Uploader(AwsClients(settings), settings, BUCKET)
    await up.start()
    try:
        await up.put(document(b"{}"))
    finally:
        await up.stop()
    head = s3.head_object(Bucket=BUCKET, Key=KEY)
    assert head["ServerSideEncryption"] == "aws:kms"
    assert head["SSEKMSKeyId"] == key_id


async def test_missing_bucket_is_a_clear_error(make_settings: Callable[..., Settings], moto_endpoint: str) -> None:
    settings = make_settings(aws_endpoint_url=moto_endpoint, evidence_bucket="kushim-evidence-storage-missing")
    up = S3Uploader(AwsClients(settings), settings, "kushim-evidence-storage-missing")
    with pytest.raises(EvidenceBucketError, match=r"'kushim-evidence-storage-missing' .* does not exist"):
        await up.start()
    await up.stop()  # harmless after a failed start


async def test_object_lock_retention_is_dated_from_the_run(
    make_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    """With Object Lock configured, each object is retained until requested_at + days (the same date on a replay)."""
    client = boto3_client(moto_endpoint, "s3")
    client.create_bucket(Bucket="kushim-evidence-storage-locked", ObjectLockEnabledForBucket=True)
    settings = make_settings(
        aws_endpoint_url=moto_endpoint,
        evidence_bucket="kushim-evidence-storage-locked",
        evidence_object_lock_mode="COMPLIANCE",
        evidence_object_lock_days=30,
    )
    up = S3Uploader(AwsClients(settings), settings, "kushim-evidence-storage-locked")
    await up.start()
    try:
        body = b'{"locked":true}'
        dated = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        doc = EvidenceDocument(key=KEY, body=body, sha256=hashlib.sha256(body).hexdigest(), dated=dated)
        await up.put(doc)
        assert (await up.put(doc)).replay
        # A run older than the retention (late evidence, an adopted history): S3 refuses a past date, so at least
        # a day from now.
        old = EvidenceDocument(
            key=OLD_KEY, body=body, sha256=hashlib.sha256(body).hexdigest(), dated=dated.replace(year=2020)
        )
        await up.put(old)
    finally:
        await up.stop()
    # moto answers GetObjectRetention with HTTP 500 here; HeadObject reports the same retention.
    head = client.head_object(Bucket="kushim-evidence-storage-locked", Key=KEY)
    assert head["ObjectLockMode"] == "COMPLIANCE"
    assert head["ObjectLockRetainUntilDate"] == dated + timedelta(days=30)
    old_head = client.head_object(Bucket="kushim-evidence-storage-locked", Key=OLD_KEY)
    assert old_head["ObjectLockRetainUntilDate"] > datetime.now(UTC) + timedelta(hours=23)
    listing = client.list_object_versions(Bucket="kushim-evidence-storage-locked", Prefix=KEY)
    assert len(listing["Versions"]) == 1


async def test_object_lock_setting_without_a_locked_bucket_refuses_to_start(
    s3: Any, make_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    settings = make_settings(
        aws_endpoint_url=moto_endpoint, evidence_bucket=BUCKET, evidence_object_lock_mode="GOVERNANCE"
    )
    up = S3Uploader(AwsClients(settings), settings, BUCKET)
    with pytest.raises(EvidenceBucketError, match="does not have Object Lock enabled"):
        await up.start()
