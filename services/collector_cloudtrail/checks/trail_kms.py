"""cloudtrail.trail_kms: every trail encrypts its log files with a KMS key (SSE-KMS) rather than SSE-S3 only."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_cloudtrail.checks.common import trail_fields, unseen_regions
from services.collector_cloudtrail.snapshot import TRAIL_TYPE, CloudTrailSnapshot
from shared.checks import Outcome, check


@check("cloudtrail.trail_kms")
def trail_kms(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    yield from unseen_regions(snapshot)
    for trail in snapshot.trails:
        fields = trail_fields(trail)
        if trail.kms_key_id:
            summary = f"{trail.name} encrypts its log files with KMS key {trail.kms_key_id}"
            yield Outcome.ok(trail.resource_id, TRAIL_TYPE, summary, **fields)
        else:
            summary = f"{trail.name} does not encrypt its log files with a KMS key (SSE-S3 only)"
            yield Outcome.fail(trail.resource_id, TRAIL_TYPE, summary, **fields)
