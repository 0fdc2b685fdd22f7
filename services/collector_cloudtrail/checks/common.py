"""Helpers the per-trail checks share (no check lives here)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.collector_cloudtrail.snapshot import REGION_TYPE, CloudTrailSnapshot, Trail, region_resource
from shared.checks import Outcome


def unseen_regions(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    """ERROR for each region whose DescribeTrails failed: its trails are unknown, so the population is incomplete."""
    for failure in snapshot.describe_failures:
        yield Outcome.error(region_resource(failure.region), REGION_TYPE, failure.error, region=failure.region)


def trail_fields(trail: Trail, **details: Any) -> dict[str, Any]:
    """The Outcome keywords of a per-trail finding: its ARN, home region and details (plus `details`)."""
    return {"resource_arn": trail.arn, "region": trail.home_region, "details": {**trail.details(), **details}}


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
