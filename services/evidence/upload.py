"""Evidence objects in S3: create-only puts (`If-None-Match: *`) with a SHA-256 checksum and server-side encryption.

A 412 means the key exists: the object is read back and its SHA-256 compared. Identical bytes are a replay
(success, nothing written); different bytes are a conflict that is logged and raised, never overwritten.
The bucket is checked with HeadBucket at start-up so that a missing or forbidden bucket stops the service at once.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from services.evidence.document import EvidenceDocument
from services.evidence.manifest import dated_retention
from shared.aws import AwsClients, TransientAwsError, error_code
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = structlog.get_logger(__name__)


WRITE_CHECK_KEY = "kushim/write-check"
"""The marker object the start-up check writes once (outside `evidence/` and `manifests/`)."""


class EvidenceConflict(Exception):
    """An evidence object already exists under the key with different bytes: it is never overwritten."""


class EvidenceBucketError(RuntimeError):
    """The evidence bucket cannot be used: the service refuses to start."""


@dataclass(frozen=True, slots=True)
class StoredObject:
    bucket: str
    key: str
    version_id: str | None
    replay: bool

    @property
    def location(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


class Uploader(Protocol):
    """Where evidence documents go when a bucket is configured."""

    @property
    def bucket(self) -> str: ...

    async def start(self) -> None:
        """Open clients and verify the bucket; raise `EvidenceBucketError` when it cannot be used."""

    async def stop(self) -> None: ...

    async def put(self, document: EvidenceDocument) -> StoredObject: ...


def _status(exc: ClientError) -> int:
    return int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)


class S3Uploader:
    """Puts evidence documents into the evidence bucket with one long-lived aiobotocore S3 client."""

    def __init__(self, aws: AwsClients, settings: Settings, bucket: str) -> None:
        self._aws = aws
        self._bucket = bucket
        self._kms_key_id = settings.evidence_kms_key_id
        self._lock_mode = settings.evidence_object_lock_mode
        self._lock_days = settings.evidence_object_lock_days
        self._region = settings.aws_region
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: S3Client | None = None

    @property
    def bucket(self) -> str:
        return self._bucket

    async def start(self) -> None:
        stack = contextlib.AsyncExitStack()
        try:
            self._client = await stack.enter_async_context(self._aws.client("s3"))
            await self.check_bucket()
            if self._lock_mode is not None:
                await self.check_object_lock()
        except BaseException:
            self._client = None
            await stack.aclose()
            raise
        self._stack = stack

    async def stop(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = None
        self._client = None

    def _s3(self) -> S3Client:
        if self._client is None:
            raise RuntimeError("S3Uploader used before start()")
        return self._client

    async def check_bucket(self) -> None:
        """HeadBucket on the evidence bucket: a clear error now rather than a failed upload at 2 AM."""
        name = self._bucket
        try:
            await self._s3().head_bucket(Bucket=name)
        except ClientError as exc:
            code, status = error_code(exc) or "", _status(exc)
            if code in ("404", "NoSuchBucket") or status == 404:
                reason = (
                    f"evidence bucket {name!r} (AWS_S3_BUCKET_NAME) does not exist in region {self._region}: "
                    "create it (versioned, encrypted) or unset AWS_S3_BUCKET_NAME to keep evidence in the database"
                )
            elif code in ("403", "AccessDenied", "Forbidden") or status == 403:
                reason = (
                    f"access to evidence bucket {name!r} (AWS_S3_BUCKET_NAME) is denied: grant s3:ListBucket on "
                    f"arn:aws:s3:::{name} and s3:PutObject, s3:GetObject on arn:aws:s3:::{name}/* (evidence/, "
                    "manifests/ and the kushim/write-check marker); `kushim policy` prints the statement"
                )
            elif code in ("301", "PermanentRedirect") or status == 301:
                reason = (
                    f"evidence bucket {name!r} (AWS_S3_BUCKET_NAME) is not in region {self._region}: set AWS_REGION "
                    "to the bucket's region"
                )
            else:
                reason = f"evidence bucket {name!r} (AWS_S3_BUCKET_NAME) cannot be checked: HeadBucket failed ({code})"
            log.error("evidence_bucket_unusable", bucket=name, code=code, status=status)
            raise EvidenceBucketError(reason) from exc
        except (BotoCoreError, OSError) as exc:
            log.error("evidence_bucket_unreachable", bucket=name, error=type(exc).__name__)
            raise EvidenceBucketError(
                f"evidence bucket {name!r} (AWS_S3_BUCKET_NAME) cannot be reached ({type(exc).__name__}): check "
                "AWS_REGION, AWS_ENDPOINT_URL and network access to S3"
            ) from exc
        await self._check_writable()
        log.info("evidence_bucket_ok", bucket=name)

    async def _check_writable(self) -> None:
        """A create-only put of a fixed marker object: S3 checks the permission before the condition, so a bucket
        Kushim may not write to fails here (AccessDenied) rather than at the first upload; 412 means it exists."""
        name = self._bucket
        try:
            params: dict[str, Any] = {"Bucket": name, "Key": WRITE_CHECK_KEY, "Body": b"kushim evidence writer\n"}
            await self._s3().put_object(**params, IfNoneMatch="*", **self._encryption())
        except ClientError as exc:
            code, status = error_code(exc) or "", _status(exc)
            if code == "PreconditionFailed" or status in (409, 412):
                return
            log.error("evidence_bucket_not_writable", bucket=name, code=code, status=status)
            raise EvidenceBucketError(
                f"evidence bucket {name!r} (AWS_S3_BUCKET_NAME) is not writable: PutObject failed ({code}); grant "
                f"s3:PutObject on arn:aws:s3:::{name}/* (and kms:GenerateDataKey on the key with SSE-KMS)"
            ) from exc

    async def check_object_lock(self) -> None:
        """With KUSHIM_EVIDENCE_OBJECT_LOCK_MODE set, the bucket must have Object Lock enabled (it can only be
        enabled on a versioned bucket): otherwise every put would fail."""
        name = self._bucket
        try:
            response = await self._s3().get_object_lock_configuration(Bucket=name)
            enabled = response.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
        except ClientError as exc:
            code = error_code(exc) or ""
            if code != "ObjectLockConfigurationNotFoundError":
                log.error("evidence_object_lock_unknown", bucket=name, code=code)
                raise EvidenceBucketError(
                    f"cannot read the Object Lock configuration of evidence bucket {name!r} ({code}): grant "
                    f"s3:GetBucketObjectLockConfiguration on arn:aws:s3:::{name}, or unset "
                    "KUSHIM_EVIDENCE_OBJECT_LOCK_MODE"
                ) from exc
            enabled = False
        if not enabled:
            log.error("evidence_object_lock_disabled", bucket=name)
            raise EvidenceBucketError(
                f"KUSHIM_EVIDENCE_OBJECT_LOCK_MODE={self._lock_mode} but evidence bucket {name!r} does not have "
                "Object Lock enabled: enable it on the bucket (versioning required) or unset the setting"
            )
        log.info("evidence_object_lock_ok", bucket=name, mode=self._lock_mode, days=self._lock_days)

    def _encryption(self) -> dict[str, Any]:
        """SSE-KMS with the configured key, else SSE-S3."""
        if self._kms_key_id:
            return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": self._kms_key_id}
        return {"ServerSideEncryption": "AES256"}

    async def put(self, document: EvidenceDocument) -> StoredObject:
        digest = base64.b64encode(bytes.fromhex(document.sha256)).decode()
        params: dict[str, Any] = {
            "Bucket": self._bucket,
            "Key": document.key,
            "Body": document.body,
            "ContentType": "application/json",
            "ChecksumAlgorithm": "SHA256",
            "ChecksumSHA256": digest,
            "IfNoneMatch": "*",
        }
        params.update(self._encryption())
        if self._lock_mode is not None and document.dated is not None:
            params["ObjectLockMode"] = self._lock_mode
            params["ObjectLockRetainUntilDate"] = dated_retention(document.dated, self._lock_days, datetime.now(UTC))
        try:
            response = await self._s3().put_object(**params)
        except ClientError as exc:
            code = error_code(exc)
            if code == "PreconditionFailed" or _status(exc) == 412:
                return await self._existing(document)
            if code == "ConditionalRequestConflict" or _status(exc) == 409:
                raise TransientAwsError(f"concurrent write to {document.key}; retry") from exc
            raise
        return StoredObject(self._bucket, document.key, response.get("VersionId"), replay=False)

    async def _existing(self, document: EvidenceDocument) -> StoredObject:
        """The key exists: identical bytes are a replay, anything else is a conflict."""
        response = await self._s3().get_object(Bucket=self._bucket, Key=document.key)
        async with response["Body"] as stream:
            found = await stream.read()
        found_sha256 = hashlib.sha256(found).hexdigest()
        if found_sha256 != document.sha256:
            log.error(
                "evidence_conflict",
                bucket=self._bucket,
                key=document.key,
                expected_sha256=document.sha256,
                found_sha256=found_sha256,
            )
            raise EvidenceConflict(
                f"s3://{self._bucket}/{document.key} exists with SHA-256 {found_sha256}, not {document.sha256}; "
                "it was not overwritten"
            )
        return StoredObject(self._bucket, document.key, response.get("VersionId"), replay=True)
