"""cloudtrail.trail_logging: every trail is logging (one finding per trail)."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_cloudtrail.checks.common import trail_fields, unseen_regions
from services.collector_cloudtrail.snapshot import TRAIL_TYPE, CloudTrailSnapshot
from shared.checks import Outcome, check


@check("cloudtrail.trail_logging")
def trail_logging(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    # The trails of a region DescribeTrails could not list are unknown: say so rather than report a smaller population.
    yield from unseen_regions(snapshot)
    for trail in snapshot.trails:
        fields = trail_fields(trail)
        if trail.status_error is not None:
            yield Outcome.error(trail.resource_id, TRAIL_TYPE, trail.status_error, **fields)
        elif trail.status is None:
            raise ValueError(f"trail {trail.arn} has neither a status nor a status error")
        elif trail.status.is_logging:
            yield Outcome.ok(trail.resource_id, TRAIL_TYPE, trail.describe(), **fields)
        else:
            yield Outcome.fail(trail.resource_id, TRAIL_TYPE, f"{trail.name} is not logging", **fields)
