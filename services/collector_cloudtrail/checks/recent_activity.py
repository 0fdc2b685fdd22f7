"""cloudtrail.recent_activity: LookupEvents finds an event in the 24 hours before the observation, per region.

Advisory: a quiet region may simply be unused. LookupEvents returns the most recent event first, so one event
(MaxResults=1) answers the question.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from services.collector_cloudtrail.snapshot import REGION_TYPE, CloudTrailSnapshot, region_resource
from shared.checks import Outcome, check

WINDOW = timedelta(hours=24)


@check("cloudtrail.recent_activity")
def recent_activity(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    since = snapshot.now - WINDOW
    for region in snapshot.regions:
        activity = snapshot.activity_in(region)
        resource = region_resource(region)
        details: dict[str, Any] = {"region": region, "since": since.isoformat(), "pages_read": activity.pages}
        if activity.error is not None:
            yield Outcome.error(resource, REGION_TYPE, activity.error, region=region, details=details)
            continue
        latest = activity.latest
        if latest is None:
            summary = f"no CloudTrail event in {region} since {since.isoformat(timespec='seconds')}"
            yield Outcome.fail(resource, REGION_TYPE, summary, region=region, details=details)
            continue
        when = latest.time.isoformat(timespec="seconds") if latest.time else None
        details["latest_event"] = {"name": latest.name, "source": latest.source, "time": when}
        summary = f"latest event in {region}: {latest.name or 'unnamed'} from {latest.source or 'unknown source'}"
        if when:
            summary += f" at {when}"
        yield Outcome.ok(resource, REGION_TYPE, summary, region=region, details=details)
