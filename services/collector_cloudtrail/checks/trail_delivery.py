"""cloudtrail.trail_delivery: every trail delivered a log file within 24 hours of the observation, without error.

The age is measured against the snapshot's `now` (the observation time), never the clock: the check stays pure.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from services.collector_cloudtrail.checks.common import trail_fields, unseen_regions
from services.collector_cloudtrail.snapshot import TRAIL_TYPE, CloudTrailSnapshot
from shared.checks import Outcome, check

MAX_AGE = timedelta(hours=24)


def ago(age: timedelta) -> str:
    """'12 min', '26 h', '3 days' (a delivery time after the observation counts as 0 min)."""
    minutes = max(0, int(age.total_seconds() // 60))
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // (24 * 60)} days"


@check("cloudtrail.trail_delivery")
def trail_delivery(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    yield from unseen_regions(snapshot)
    now = snapshot.now
    for trail in snapshot.trails:
        status = trail.status
        if trail.status_error is not None:
            yield Outcome.error(trail.resource_id, TRAIL_TYPE, trail.status_error, **trail_fields(trail))
            continue
        if status is None:
            raise ValueError(f"trail {trail.arn} has neither a status nor a status error")
        delivered = status.latest_delivery_time
        age = now - delivered if delivered is not None else None
        fields = trail_fields(
            trail,
            observed_at=now.isoformat(),
            max_age_hours=MAX_AGE.total_seconds() / 3600,
            delivery_age_hours=round(age.total_seconds() / 3600, 2) if age is not None else None,
        )
        logging = "logging" if status.is_logging else "not logging"
        if status.latest_delivery_error:
            summary = f"{trail.name} failed to deliver log files: {status.latest_delivery_error}"
            yield Outcome.fail(trail.resource_id, TRAIL_TYPE, summary, **fields)
        elif age is None:
            summary = f"{trail.name} is {logging} and has never delivered a log file"
            yield Outcome.fail(trail.resource_id, TRAIL_TYPE, summary, **fields)
        elif age > MAX_AGE:
            summary = f"{trail.name} ({logging}) last delivered a log file {ago(age)} ago, more than 24 h"
            yield Outcome.fail(trail.resource_id, TRAIL_TYPE, summary, **fields)
        else:
            summary = f"{trail.name} delivered a log file {ago(age)} ago"
            yield Outcome.ok(trail.resource_id, TRAIL_TYPE, summary, **fields)
