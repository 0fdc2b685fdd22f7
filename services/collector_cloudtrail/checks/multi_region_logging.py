"""cloudtrail.multi_region_logging: some multi-region trail is logging with log-file validation (one account-level
finding). It gates CC7.2."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.collector_cloudtrail.checks.common import plural
from services.collector_cloudtrail.snapshot import (
    ACCOUNT_RESOURCE,
    ACCOUNT_TYPE,
    GLOBAL,
    CloudTrailSnapshot,
    Trail,
)
from shared.checks import Outcome, check


def _shortfall(trail: Trail) -> str:
    """What a multi-region trail lacks, e.g. 'audit is multi-region and logging but does not validate log files'."""
    has = ["multi-region"]
    lacks = []
    if trail.is_logging:
        has.append("logging")
    elif trail.is_logging is False:
        lacks.append("is not logging")
    if trail.log_file_validation:
        has.append("validates log files")
    else:
        lacks.append("does not validate log files")
    text = f"{trail.name} is {' and '.join(has)}"
    if lacks:
        text += f" but {' and '.join(lacks)}"
    if trail.is_logging is None:
        text += " (logging status unknown)"
    return text


@check("cloudtrail.multi_region_logging")
def multi_region_logging(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    trails = snapshot.trails
    qualifying = [t for t in trails if t.multi_region and t.is_logging and t.log_file_validation]
    details: dict[str, Any] = {
        "trails": [t.describe() for t in trails],
        "regions_inspected": list(snapshot.regions),
    }
    if qualifying:
        details["qualifying_trails"] = [
            {"name": t.name, "arn": t.arn, "home_region": t.home_region, "log_file_validation": True}
            for t in qualifying
        ]
        names = ", ".join(t.name for t in qualifying)
        summary = f"multi-region trail logging with log-file validation: {names}"
        yield Outcome.ok(ACCOUNT_RESOURCE, ACCOUNT_TYPE, summary, details=details)
        return
    # Unknowns that could still hide a qualifying trail: a region whose trails could not be listed, or a validating
    # multi-region trail whose logging status could not be read. A trail that cannot qualify whatever its status
    # (single-region, or without validation) leaves the FAIL certain.
    unknowns = [f.error for f in snapshot.describe_failures] + [
        t.status_error
        for t in trails
        if t.status_error is not None and t.multi_region and t.log_file_validation and t.is_logging is None
    ]
    if unknowns:
        details["failed_calls"] = [f"{e.service}:{e.operation} ({e.code})" for e in snapshot.errors]
        yield Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, unknowns[0], region=GLOBAL, details=details)
        return
    multi = [t for t in trails if t.multi_region]
    if multi:
        summary = "; ".join(_shortfall(t) for t in multi)
    else:
        seen = plural(len(trails), "trail")
        if trails:
            seen += ": " + "; ".join(t.describe() for t in trails)
        summary = f"no multi-region trail ({seen})"
    yield Outcome.fail(ACCOUNT_RESOURCE, ACCOUNT_TYPE, summary, region=GLOBAL, details=details)
