"""cloudtrail.multi_region_logging: some multi-region trail is logging (one account-level finding)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from services.collector_cloudtrail.snapshot import ACCOUNT_RESOURCE, ACCOUNT_TYPE, GLOBAL, CloudTrailSnapshot
from shared.checks import Outcome, check


@check("cloudtrail.multi_region_logging")
def multi_region_logging(snapshot: CloudTrailSnapshot) -> Iterator[Outcome]:
    qualifying = [t for t in snapshot.trails if t.multi_region and t.is_logging]
    details: dict[str, Any] = {
        "trails": [t.describe() for t in snapshot.trails],
        "regions_inspected": list(snapshot.regions),
    }
    if qualifying:
        details["qualifying_trails"] = [
            {"name": t.name, "arn": t.arn, "home_region": t.home_region, "log_file_validation": t.log_file_validation}
            for t in qualifying
        ]
        details["log_file_validation"] = any(t.log_file_validation for t in qualifying)
        names = ", ".join(
            f"{t.name} (log file validation {'on' if t.log_file_validation else 'off'})" for t in qualifying
        )
        yield Outcome.ok(ACCOUNT_RESOURCE, ACCOUNT_TYPE, f"multi-region trail logging: {names}", details=details)
        return
    errors = snapshot.errors
    if errors:
        # Nothing seen qualifies, but part of the account could not be seen: unknown, not failed.
        details["failed_calls"] = [f"{e.service}:{e.operation} ({e.code})" for e in errors]
        yield Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, errors[0], region=GLOBAL, details=details)
        return
    trails = snapshot.trails
    seen = f"{len(trails)} trail{'s' if len(trails) != 1 else ''}"
    if trails:
        seen += ": " + "; ".join(t.describe() for t in trails)
    yield Outcome.fail(
        ACCOUNT_RESOURCE, ACCOUNT_TYPE, f"no multi-region trail is logging ({seen})", region=GLOBAL, details=details
    )
