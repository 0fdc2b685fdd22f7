"""The CloudTrail collector's checks, listed explicitly (decorators describe, never register)."""

from __future__ import annotations

from services.collector_cloudtrail.checks.multi_region_logging import multi_region_logging
from services.collector_cloudtrail.checks.trail_logging import trail_logging
from services.collector_cloudtrail.snapshot import CloudTrailSnapshot
from shared.checks import Check

CHECKS: tuple[Check[CloudTrailSnapshot], ...] = (multi_region_logging, trail_logging)

__all__ = ["CHECKS", "multi_region_logging", "trail_logging"]
