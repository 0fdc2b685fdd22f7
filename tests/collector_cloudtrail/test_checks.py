"""The CloudTrail checks and summary on hand-built snapshots: no AWS, no NATS."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.collector_cloudtrail.app import summarize
from services.collector_cloudtrail.checks import CHECKS, multi_region_logging, trail_logging
from services.collector_cloudtrail.snapshot import CloudTrailSnapshot, RegionFailure, Trail, TrailStatus
from shared.aws import AwsCallError
from shared.checks import Outcome
from shared.messages import Status

REGIONS = ("eu-west-1", "us-east-1")
DELIVERED = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
DENIED_DESCRIBE = AwsCallError(
    "cloudtrail", "DescribeTrails", "AccessDeniedException", "denied", "cloudtrail:DescribeTrails", False
)
DENIED_STATUS = AwsCallError(
    "cloudtrail", "GetTrailStatus", "AccessDeniedException", "denied", "cloudtrail:GetTrailStatus", False
)


def trail(
    name: str,
    *,
    home: str = "us-east-1",
    multi: bool = False,
    validation: bool = False,
    logging: bool | None = True,
    error: AwsCallError | None = None,
) -> Trail:
    status = None if logging is None else TrailStatus(logging, DELIVERED if logging else None)
    return Trail(
        name=name,
        arn=f"arn:aws:cloudtrail:{home}:123456789012:trail/{name}",
        home_region=home,
        multi_region=multi,
        log_file_validation=validation,
        s3_bucket="trail-logs",
        status=status,
        status_error=error,
    )


def only(outcomes: list[Outcome]) -> Outcome:
    assert len(outcomes) == 1
    return outcomes[0]


def test_multi_region_logging_passes_with_a_logging_multi_region_trail() -> None:
    snapshot = CloudTrailSnapshot(
        REGIONS, (trail("audit-single"), trail("audit-all", multi=True, validation=True), trail("old", logging=False))
    )
    out = only(list(multi_region_logging(snapshot)))
    assert (out.status, out.resource_id, out.resource_type, out.region) == (
        Status.PASS,
        "account",
        "AWS::::Account",
        "global",
    )
    assert out.summary == "multi-region trail logging: audit-all (log file validation on)"
    assert out.details["qualifying_trails"] == [
        {
            "name": "audit-all",
            "arn": "arn:aws:cloudtrail:us-east-1:123456789012:trail/audit-all",
            "home_region": "us-east-1",
            "log_file_validation": True,
        }
    ]
    assert out.details["log_file_validation"] is True


def test_multi_region_logging_fails_and_says_what_exists() -> None:
    snapshot = CloudTrailSnapshot(REGIONS, (trail("audit-single"), trail("audit-all", multi=True, logging=False)))
    out = only(list(multi_region_logging(snapshot)))
    assert out.status is Status.FAIL
    assert out.summary == (
        "no multi-region trail is logging "
        "(2 trails: audit-single single-region, logging; audit-all multi-region, not logging)"
    )


def test_multi_region_logging_fails_without_trails() -> None:
    out = only(list(multi_region_logging(CloudTrailSnapshot(REGIONS))))
    assert out.status is Status.FAIL
    assert out.summary == "no multi-region trail is logging (0 trails)"


@pytest.mark.parametrize(
    "snapshot",
    [
        CloudTrailSnapshot(REGIONS, (trail("audit-single"),), (RegionFailure("eu-west-1", DENIED_DESCRIBE),)),
        CloudTrailSnapshot(REGIONS, (trail("audit-all", multi=True, logging=None, error=DENIED_STATUS),)),
    ],
    ids=["describe-failed", "status-failed"],
)
def test_multi_region_logging_is_error_when_part_of_the_account_was_not_seen(snapshot: CloudTrailSnapshot) -> None:
    out = only(list(multi_region_logging(snapshot)))
    assert out.status is Status.ERROR
    assert out.details["required_permission"] in {"cloudtrail:DescribeTrails", "cloudtrail:GetTrailStatus"}
    assert out.details["failed_calls"]


def test_a_qualifying_trail_passes_despite_other_failures() -> None:
    snapshot = CloudTrailSnapshot(
        REGIONS,
        (trail("audit-all", multi=True), trail("x-trail", error=DENIED_STATUS, logging=None)),
        (RegionFailure("eu-west-1", DENIED_DESCRIBE),),
    )
    assert only(list(multi_region_logging(snapshot))).status is Status.PASS


def test_trail_logging_one_finding_per_trail() -> None:
    snapshot = CloudTrailSnapshot(
        REGIONS,
        (
            trail("audit-all", multi=True, validation=True),
            trail("stopped", home="eu-west-1", logging=False),
            trail("hidden", error=DENIED_STATUS, logging=None),
        ),
    )
    out = {o.resource_id: o for o in trail_logging(snapshot)}
    assert {k: o.status for k, o in out.items()} == {
        "trail/us-east-1/audit-all": Status.PASS,
        "trail/eu-west-1/stopped": Status.FAIL,
        "trail/us-east-1/hidden": Status.ERROR,
    }
    stopped = out["trail/eu-west-1/stopped"]
    assert stopped.summary == "stopped is not logging"
    assert (stopped.region, stopped.resource_type) == ("eu-west-1", "AWS::CloudTrail::Trail")
    assert stopped.resource_arn == "arn:aws:cloudtrail:eu-west-1:123456789012:trail/stopped"
    assert out["trail/us-east-1/audit-all"].details == {
        "trail_name": "audit-all",
        "home_region": "us-east-1",
        "multi_region": True,
        "log_file_validation": True,
        "s3_bucket": "trail-logs",
        "organization_trail": False,
        "is_logging": True,
        "latest_delivery_time": "2025-03-01T12:30:00+00:00",
        "latest_delivery_error": None,
    }
    assert stopped.details["latest_delivery_time"] is None
    assert out["trail/us-east-1/hidden"].details["required_permission"] == "cloudtrail:GetTrailStatus"


def test_trail_logging_reports_regions_it_could_not_list() -> None:
    snapshot = CloudTrailSnapshot(REGIONS, (trail("audit-single"),), (RegionFailure("eu-west-1", DENIED_DESCRIBE),))
    out = {o.resource_id: o for o in trail_logging(snapshot)}
    assert out["region/eu-west-1"].status is Status.ERROR
    assert out["region/eu-west-1"].region == "eu-west-1"
    assert out["region/eu-west-1"].details["required_permission"] == "cloudtrail:DescribeTrails"
    assert out["trail/us-east-1/audit-single"].status is Status.PASS


def test_no_trails() -> None:
    assert [o.status for chk in CHECKS for o in chk(CloudTrailSnapshot(REGIONS))] == [Status.FAIL]


def test_summarize() -> None:
    snapshot = CloudTrailSnapshot(
        REGIONS,
        (trail("a-trail"), trail("b-trail", logging=False), trail("c-trail", logging=None, error=DENIED_STATUS)),
    )
    summary = summarize(snapshot)
    assert summary.population == {"trails": 3, "regions": 2}
    assert summary.metrics == {"logging_trails": 1.0}
    assert summary.regions == ["eu-west-1", "us-east-1"]
