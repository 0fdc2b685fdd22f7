"""The typed state of one account's S3 buckets, as `collect` read it. Failed calls travel as `AwsCallError`s.

Each per-bucket API call has its own answer and its own error field, so that one denied call turns only the checks
that need it into ERROR. `error` is the exception: the bucket's region could not be read (GetBucketLocation failed),
so nothing else was asked and every check of that bucket is ERROR.
"""

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
KMS_ALGORITHMS = frozenset({"aws:kms", "aws:kms:dsse"})

# The four bucket-level Block Public Access settings, in the order AWS lists them.
PUBLIC_ACCESS_BLOCK_SETTINGS = ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy", "RestrictPublicBuckets")


@dataclass(frozen=True, slots=True)
class DefaultEncryption:
    """A bucket's default server-side encryption rule."""

    algorithm: str
    kms_key_id: str | None = None
    bucket_key_enabled: bool = False

    @property
    def uses_kms(self) -> bool:
        return self.algorithm in KMS_ALGORITHMS

    def describe(self) -> str:
        label = ALGORITHM_LABELS.get(self.algorithm, self.algorithm)
        if self.algorithm == "AES256":
            return f"{label} ({self.algorithm})"
        key = f"key {self.kms_key_id}" if self.kms_key_id else "AWS managed key aws/s3"
        return f"{label} ({self.algorithm}, {key})"


@dataclass(frozen=True, slots=True)
class Versioning:
    """GetBucketVersioning's answer. `status` is `Enabled`, `Suspended`, or None when versioning was never enabled
    (AWS then omits the Status key); `mfa_delete` is `Enabled` / `Disabled`, or None when not reported."""

    status: str | None = None
    mfa_delete: str | None = None

    @property
    def enabled(self) -> bool:
        return self.status == "Enabled"


@dataclass(frozen=True, slots=True)
class AccessLogging:
    """Server access logging is on: where the logs go."""

    target_bucket: str
    target_prefix: str = ""


@dataclass(frozen=True, slots=True)
class PublicAccessBlock:
    """The bucket-level Block Public Access configuration (a setting AWS leaves out counts as off)."""

    block_public_acls: bool = False
    ignore_public_acls: bool = False
    block_public_policy: bool = False
    restrict_public_buckets: bool = False

    def settings(self) -> dict[str, bool]:
        """The four settings under their AWS names, in AWS's order."""
        values = (self.block_public_acls, self.ignore_public_acls, self.block_public_policy)
        return dict(zip(PUBLIC_ACCESS_BLOCK_SETTINGS, (*values, self.restrict_public_buckets), strict=True))

    @property
    def missing(self) -> list[str]:
        """The settings that are off, in AWS's order."""
        return [name for name, on in self.settings().items() if not on]


@dataclass(frozen=True, slots=True)
class Bucket:
    """One bucket and the answers of its per-bucket calls.

    An answer means something only when its error is None (and `error` is None):
    `encryption` None: no default encryption configured; `versioning.status` None: never enabled;
    `logging` None: server access logging off; `public_access_block` None: no bucket-level configuration.
    `region` is None only when the bucket's region could not be read (then `error` says why).
    """

    name: str
    region: str | None
    created: datetime | None = None
    error: AwsCallError | None = None
    encryption: DefaultEncryption | None = None
    encryption_error: AwsCallError | None = None
    versioning: Versioning = Versioning()
    versioning_error: AwsCallError | None = None
    logging: AccessLogging | None = None
    logging_error: AwsCallError | None = None
    public_access_block: PublicAccessBlock | None = None
    public_access_block_error: AwsCallError | None = None

    @property
    def resource_id(self) -> str:
        return f"bucket/{self.name}"

    @property
    def arn(self) -> str:
        return f"arn:aws:s3:::{self.name}"

    def failure(self, call_error: AwsCallError | None) -> AwsCallError | None:
        """Why a check that needs the call behind `call_error` cannot judge this bucket (None: it can)."""
        return self.error or call_error

    def fields(self, details: dict[str, Any]) -> dict[str, Any]:
        """The Outcome keywords every check of this bucket shares."""
        return {"resource_arn": self.arn, "region": self.region or GLOBAL, "details": details}

    def error_details(self) -> dict[str, Any]:
        """Details of an ERROR outcome: only what is known (no answer-shaped None that reads as "off")."""
        return {"bucket_name": self.name}

    def encryption_details(self) -> dict[str, Any]:
        """Details of the two encryption checks."""
        enc = self.encryption
        return {
            "bucket_name": self.name,
            "algorithm": enc.algorithm if enc else None,
            "kms_key_id": enc.kms_key_id if enc else None,
            "bucket_key_enabled": enc.bucket_key_enabled if enc else None,
        }

    def versioning_details(self) -> dict[str, Any]:
        return {
            "bucket_name": self.name,
            "versioning_status": self.versioning.status,
            "mfa_delete": self.versioning.mfa_delete,
        }

    def logging_details(self) -> dict[str, Any]:
        log = self.logging
        return {
            "bucket_name": self.name,
            "logging_enabled": log is not None,
            "target_bucket": log.target_bucket if log else None,
            "target_prefix": log.target_prefix if log else None,
        }

    def public_access_block_details(self) -> dict[str, Any]:
        pab = self.public_access_block
        details: dict[str, Any] = {"bucket_name": self.name, "configured": pab is not None}
        details.update(pab.settings() if pab else dict.fromkeys(PUBLIC_ACCESS_BLOCK_SETTINGS))
        details["missing"] = pab.missing if pab else list(PUBLIC_ACCESS_BLOCK_SETTINGS)
        return details


@dataclass(frozen=True, slots=True)
class S3Snapshot:
    """Every bucket of the account, or `list_error` when ListBuckets (any page) failed and the population is unknown."""

    buckets: tuple[Bucket, ...] = ()
    list_error: AwsCallError | None = None
