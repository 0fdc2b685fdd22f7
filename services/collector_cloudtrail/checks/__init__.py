"""The CloudTrail collector's checks, listed explicitly (decorators describe, never register)."""

from __future__ import annotations

from services.collector_cloudtrail.checks.management_events import management_events
from services.collector_cloudtrail.checks.multi_region_logging import multi_region_logging
from services.collector_cloudtrail.checks.recent_activity import recent_activity
from services.collector_cloudtrail.checks.region_coverage import region_coverage
from services.collector_cloudtrail.checks.trail_delivery import trail_delivery
from services.collector_cloudtrail.checks.trail_kms import trail_kms
from services.collector_cloudtrail.checks.trail_log_file_validation import trail_log_file_validation
from services.collector_cloudtrail.checks.trail_logging import trail_logging
from services.collector_cloudtrail.snapshot import CloudTrailSnapshot
from shared.checks import Check

CHECKS: tuple[Check[CloudTrailSnapshot], ...] = (
    multi_region_logging,
    trail_logging,
    trail_log_file_validation,
    trail_delivery,
    trail_kms,
    management_events,
    region_coverage,
    recent_activity,
)

__all__ = [
    "CHECKS",
    "management_events",
    "multi_region_logging",
    "recent_activity",
    "region_coverage",
    "trail_delivery",
    "trail_kms",
    "trail_log_file_validation",
    "trail_logging",
]
