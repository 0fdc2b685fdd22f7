"""cloudtrail.trail_logging: every trail is logging (one finding per trail)."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_cloudtrail.snapshot import ACCOUNT_TYPE, TRAIL_TYPE, CloudTrailSnapshot
from shared.checks import Outcome, check


@check("cloudtrail.trail_logging")
def trail_logging(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    for failure in snapshot.describe_failures:
        # The trails of this region are unknown: say so rather than report a smaller population.
        yield Outcome.error(f"region/{failure.region}", ACCOUNT_TYPE, failure.error, region=failure.region)
    for trail in snapshot.trails:
        fields = {"resource_arn": trail.arn, "region": trail.home_region, "details": trail.details()}
        if trail.status_error is not None:
            yield Outcome.error(trail.resource_id, TRAIL_TYPE, trail.status_error, **fields)
        elif trail.status is None:
            raise ValueError(f"trail {trail.arn} has neither a status nor a status error")
        elif trail.status.is_logging:
            yield Outcome.ok(trail.resource_id, TRAIL_TYPE, trail.describe(), **fields)
        else:
            yield Outcome.fail(trail.resource_id, TRAIL_TYPE, f"{trail.name} is not logging", **fields)
