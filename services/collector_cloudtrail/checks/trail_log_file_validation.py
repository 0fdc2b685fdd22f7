"""cloudtrail.trail_log_file_validation: every trail writes digest files so tampering with its logs is detectable."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_cloudtrail.checks.common import trail_fields, unseen_regions
from services.collector_cloudtrail.snapshot import TRAIL_TYPE, CloudTrailSnapshot
from shared.checks import Outcome, check


@check("cloudtrail.trail_log_file_validation")
def trail_log_file_validation(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    yield from unseen_regions(snapshot)
    for trail in snapshot.trails:
        fields = trail_fields(trail)
        if trail.log_file_validation:
            yield Outcome.ok(trail.resource_id, TRAIL_TYPE, f"{trail.name} validates its log files", **fields)
        else:
            summary = f"{trail.name} does not validate its log files (no digest files)"
            yield Outcome.fail(trail.resource_id, TRAIL_TYPE, summary, **fields)
