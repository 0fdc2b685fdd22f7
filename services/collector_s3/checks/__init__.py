"""The S3 collector's checks, listed explicitly (decorators describe, never register)."""

from __future__ import annotations

from services.collector_s3.checks.bucket_default_encryption import bucket_default_encryption
from services.collector_s3.snapshot import S3Snapshot
from shared.checks import Check

CHECKS: tuple[Check[S3Snapshot], ...] = (bucket_default_encryption,)

__all__ = ["CHECKS", "bucket_default_encryption"]
