"""cloudtrail.region_coverage: every inspected region is recorded by a logging trail (one finding per region).

A region is covered by a logging multi-region trail, or by a logging single-region trail whose home it is. When no
trail covers it and something that could have (the region's own trail list, or the status of a trail that applies
there) could not be read, the answer is unknown: ERROR.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.collector_cloudtrail.snapshot import REGION_TYPE, CloudTrailSnapshot, Trail, region_resource
from shared.checks import Outcome, check


def _scope(trail: Trail) -> str:
    return "multi-region" if trail.multi_region else "single-region"


@check("cloudtrail.region_coverage")
def region_coverage(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    for region in snapshot.regions:
        applying = [t for t in snapshot.trails if t.covers(region)]
        covering = snapshot.covering(region)
        details: dict[str, Any] = {
            "region": region,
            "covering_trails": [t.name for t in covering],
            "applying_trails": [t.describe() for t in applying],
        }
        resource = region_resource(region)
        if covering:
            names = ", ".join(f"{t.name} ({_scope(t)})" for t in covering)
            yield Outcome.ok(resource, REGION_TYPE, f"{region} is logged by {names}", region=region, details=details)
            continue
        failure = snapshot.describe_failure(region)
        unknown = [t.status_error for t in applying if t.status_error is not None]
        if failure is not None or unknown:
            error = failure.error if failure is not None else unknown[0]
            yield Outcome.error(resource, REGION_TYPE, error, region=region, details=details)
            continue
        notes = [f"{t.name} applies but is not logging" for t in applying]
        notes += [
            f"{t.name} logs {t.home_region} only" for t in snapshot.trails if not t.covers(region) and t.is_logging
        ]
        summary = f"no logging trail covers {region} ({'; '.join(notes) if notes else 'no trail applies to it'})"
        yield Outcome.fail(resource, REGION_TYPE, summary, region=region, details=details)
