"""The typed state of one account's S3 buckets, as `collect` read it. Failed calls travel as `AwsCallError`s."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.aws import AwsCallError

BUCKET_TYPE = "AWS::S3::Bucket"
ACCOUNT_TYPE = "AWS::::Account"
ACCOUNT_RESOURCE = "account"
GLOBAL = "global"

ALGORITHM_LABELS = {"AES256": "SSE-S3", "aws:kms": "SSE-KMS", "aws:kms:dsse": "DSSE-KMS"}


@dataclass(frozen=True, slots=True)
class DefaultEncryption:
    """A bucket's default server-side encryption rule."""

    algorithm: str
    kms_key_id: str | None = None
    bucket_key_enabled: bool = False

    def describe(self) -> str:
        label = ALGORITHM_LABELS.get(self.algorithm, self.algorithm)
        if self.algorithm == "AES256":
            return f"{label} ({self.algorithm})"
        key = f"key {self.kms_key_id}" if self.kms_key_id else "AWS managed key aws/s3"
        return f"{label} ({self.algorithm}, {key})"


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket. When `error` is None, `encryption` is the answer (None: no default encryption configured);
    when `error` is set (GetBucketLocation or GetBucketEncryption failed), nothing is known about encryption.
    `region` is None only when the bucket's region could not be read."""

    name: str
    region: str | None
    created: datetime | None = None
    encryption: DefaultEncryption | None = None
    error: AwsCallError | None = None

    @property
    def resource_id(self) -> str:
        return f"bucket/{self.name}"

    @property
    def arn(self) -> str:
        return f"arn:aws:s3:::{self.name}"

    def details(self) -> dict[str, Any]:
        enc = self.encryption
        return {
            "bucket_name": self.name,
            "algorithm": enc.algorithm if enc else None,
            "kms_key_id": enc.kms_key_id if enc else None,
            "bucket_key_enabled": enc.bucket_key_enabled if enc else None,
        }


@dataclass(frozen=True, slots=True)
class S3Snapshot:
    """Every bucket of the account, or `list_error` when ListBuckets (any page) failed and the population is unknown."""

    buckets: tuple[Bucket, ...] = ()
    list_error: AwsCallError | None = None
