"""The S3 collector's checks, listed explicitly (decorators describe, never register)."""

from __future__ import annotations

from services.collector_s3.checks.bucket_access_logging import bucket_access_logging
from services.collector_s3.checks.bucket_default_encryption import bucket_default_encryption
from services.collector_s3.checks.bucket_public_access_block import bucket_public_access_block
from services.collector_s3.checks.bucket_sse_kms import bucket_sse_kms
from services.collector_s3.checks.bucket_versioning import bucket_versioning
from services.collector_s3.snapshot import S3Snapshot
from shared.checks import Check

CHECKS: tuple[Check[S3Snapshot], ...] = (
    bucket_default_encryption,
    bucket_sse_kms,
    bucket_versioning,
    bucket_access_logging,
    bucket_public_access_block,
)

__all__ = [
    "CHECKS",
    "bucket_access_logging",
    "bucket_default_encryption",
    "bucket_public_access_block",
    "bucket_sse_kms",
    "bucket_versioning",
]
