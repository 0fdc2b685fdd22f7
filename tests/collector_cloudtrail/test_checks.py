"""The CloudTrail checks and summary on hand-built snapshots: no AWS, no NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.collector_cloudtrail.app import summarize
from services.collector_cloudtrail.checks import (
    CHECKS,
    management_events,
    multi_region_logging,
    recent_activity,
    region_coverage,
    trail_delivery,
    trail_kms,
    trail_log_file_validation,
    trail_logging,
)
from services.collector_cloudtrail.snapshot import (
    AdvancedSelector,
    ClassicSelector,
    CloudTrailSnapshot,
    EventSelectors,
    FieldSelector,
    RecentEvent,
    RegionActivity,
    RegionFailure,
    Trail,
    TrailStatus,
)
from shared.aws import AwsCallError
from shared.checks import Check, Outcome, RunContext, evaluate
from shared.controls import check_info
from shared.messages import Status

REGIONS = ("eu-west-1", "us-east-1")
NOW = datetime(2025, 3, 2, 0, 0, tzinfo=UTC)
DELIVERED = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)  # 11.5 h before NOW
KEY = "arn:aws:kms:us-east-1:123456789012:key/0000-trail"
ALL_MANAGEMENT = EventSelectors(classic=(ClassicSelector("All", True),))
DENIED_DESCRIBE = AwsCallError(
    "cloudtrail", "DescribeTrails", "AccessDeniedException", "denied", "cloudtrail:DescribeTrails", False
)
DENIED_STATUS = AwsCallError(
    "cloudtrail", "GetTrailStatus", "AccessDeniedException", "denied", "cloudtrail:GetTrailStatus", False
)
DENIED_SELECTORS = AwsCallError(
    "cloudtrail", "GetEventSelectors", "AccessDeniedException", "denied", "cloudtrail:GetEventSelectors", False
)
LOOKUP_500 = AwsCallError("cloudtrail", "LookupEvents", "500", "HTML error page", "cloudtrail:LookupEvents", False)
EVENT = RecentEvent("ConsoleLogin", "signin.amazonaws.com", datetime(2025, 3, 1, 23, 0, tzinfo=UTC))


def trail(
    name: str,
    *,
    home: str = "us-east-1",
    multi: bool = False,
    validation: bool = False,
    logging: bool | None = True,
    error: AwsCallError | None = None,
    kms: str | None = None,
    delivered: datetime | None = DELIVERED,
    delivery_error: str | None = None,
    selectors: EventSelectors | None = ALL_MANAGEMENT,
    selectors_error: AwsCallError | None = None,
) -> Trail:
    status = None if logging is None else TrailStatus(logging, delivered if logging else None, delivery_error)
    return Trail(
        name=name,
        arn=f"arn:aws:cloudtrail:{home}:123456789012:trail/{name}",
        home_region=home,
        multi_region=multi,
        log_file_validation=validation,
        s3_bucket="trail-logs",
        kms_key_id=kms,
        status=status,
        status_error=error,
        event_selectors=None if selectors_error else selectors,
        event_selectors_error=selectors_error,
    )


def snap(
    *trails: Trail,
    failures: tuple[RegionFailure, ...] = (),
    activity: tuple[RegionActivity, ...] | None = None,
    regions: tuple[str, ...] = REGIONS,
) -> CloudTrailSnapshot:
    if activity is None:
        activity = tuple(RegionActivity(region, latest=EVENT) for region in regions)
    return CloudTrailSnapshot(regions, trails, failures, activity, now=NOW)


def only(outcomes: list[Outcome]) -> Outcome:
    assert len(outcomes) == 1
    return outcomes[0]


def statuses(outcomes: list[Outcome]) -> dict[str, Status]:
    return {o.resource_id: o.status for o in outcomes}


def by_resource(outcomes: list[Outcome]) -> dict[str, Outcome]:
    return {o.resource_id: o for o in outcomes}


# --- cloudtrail.multi_region_logging (gating) ------------------------------------------------------


def test_multi_region_logging_passes_with_a_logging_validating_multi_region_trail() -> None:
    snapshot = snap(trail("audit-single"), trail("audit-all", multi=True, validation=True), trail("old", logging=False))
    out = only(list(multi_region_logging(snapshot)))
    assert (out.status, out.resource_id, out.resource_type, out.region) == (
        Status.PASS,
        "account",
        "AWS::::Account",
        "global",
    )
    assert out.summary == "multi-region trail logging with log-file validation: audit-all"
    assert out.details["qualifying_trails"] == [
        {
            "name": "audit-all",
            "arn": "arn:aws:cloudtrail:us-east-1:123456789012:trail/audit-all",
            "home_region": "us-east-1",
            "log_file_validation": True,
        }
    ]


def test_multi_region_logging_fails_without_log_file_validation_and_says_so() -> None:
    snapshot = snap(trail("demo-single-region"), trail("demo-org-trail", multi=True, validation=False))
    out = only(list(multi_region_logging(snapshot)))
    assert out.status is Status.FAIL
    assert out.summary == "demo-org-trail is multi-region and logging but does not validate log files"


@pytest.mark.parametrize(
    ("trails", "summary"),
    [
        (
            (trail("audit-all", multi=True, validation=True, logging=False),),
            "audit-all is multi-region and validates log files but is not logging",
        ),
        (
            (trail("audit-single"), trail("audit-all", multi=True, logging=False)),
            "audit-all is multi-region but is not logging and does not validate log files",
        ),
        (
            (trail("audit-single", validation=True), trail("old", logging=False)),
            "no multi-region trail (2 trails: audit-single single-region, logging; old single-region, not logging)",
        ),
        ((), "no multi-region trail (0 trails)"),
        (
            (trail("a-all", multi=True), trail("b-all", multi=True, validation=True, logging=False)),
            "a-all is multi-region and logging but does not validate log files; "
            "b-all is multi-region and validates log files but is not logging",
        ),
    ],
    ids=["not-logging", "neither", "single-region-only", "no-trails", "two-partial"],
)
def test_multi_region_logging_fails_and_says_what_exists(trails: tuple[Trail, ...], summary: str) -> None:
    out = only(list(multi_region_logging(snap(*trails))))
    assert (out.status, out.summary) == (Status.FAIL, summary)
    assert out.region == "global"


@pytest.mark.parametrize(
    "snapshot",
    [
        snap(trail("audit-single"), failures=(RegionFailure("eu-west-1", DENIED_DESCRIBE),)),
        snap(trail("audit-all", multi=True, validation=True, logging=None, error=DENIED_STATUS)),
    ],
    ids=["describe-failed", "status-failed"],
)
def test_multi_region_logging_is_error_when_part_of_the_account_was_not_seen(snapshot: CloudTrailSnapshot) -> None:
    out = only(list(multi_region_logging(snapshot)))
    assert out.status is Status.ERROR
    assert out.details["required_permission"] in {"cloudtrail:DescribeTrails", "cloudtrail:GetTrailStatus"}
    assert out.details["failed_calls"]


def test_multi_region_logging_fails_when_the_unreadable_trail_could_not_qualify_anyway() -> None:
    # Its status is unknown, but without validation it fails whatever the status: the FAIL is certain.
    snapshot = snap(trail("audit-all", multi=True, validation=False, logging=None, error=DENIED_STATUS))
    out = only(list(multi_region_logging(snapshot)))
    assert out.status is Status.FAIL
    assert out.summary == "audit-all is multi-region but does not validate log files (logging status unknown)"


def test_a_qualifying_trail_passes_despite_other_failures() -> None:
    snapshot = snap(
        trail("audit-all", multi=True, validation=True),
        trail("x-trail", error=DENIED_STATUS, logging=None),
        failures=(RegionFailure("eu-west-1", DENIED_DESCRIBE),),
    )
    assert only(list(multi_region_logging(snapshot))).status is Status.PASS


# --- per-trail checks ---------------------------------------------------------------------------------


def test_trail_logging_one_finding_per_trail() -> None:
    snapshot = snap(
        trail("audit-all", multi=True, validation=True, kms=KEY),
        trail("stopped", home="eu-west-1", logging=False),
        trail("hidden", error=DENIED_STATUS, logging=None),
    )
    out = by_resource(list(trail_logging(snapshot)))
    assert statuses(list(out.values())) == {
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
        "kms_key_id": KEY,
        "is_logging": True,
        "latest_delivery_time": "2025-03-01T12:30:00+00:00",
        "latest_delivery_error": None,
    }
    assert stopped.details["latest_delivery_time"] is None
    assert out["trail/us-east-1/hidden"].details["required_permission"] == "cloudtrail:GetTrailStatus"


PER_TRAIL = (trail_logging, trail_log_file_validation, trail_delivery, trail_kms, management_events)


@pytest.mark.parametrize("chk", PER_TRAIL, ids=lambda c: c.id)
def test_per_trail_checks_report_regions_they_could_not_list(chk: Check[CloudTrailSnapshot]) -> None:
    assert chk in CHECKS
    snapshot = snap(
        trail("audit-single", validation=True, kms=KEY), failures=(RegionFailure("eu-west-1", DENIED_DESCRIBE),)
    )
    out = by_resource(list(chk(snapshot)))
    region = out["region/eu-west-1"]
    assert (region.status, region.region, region.resource_type) == (Status.ERROR, "eu-west-1", "AWS::::Region")
    assert region.details["required_permission"] == "cloudtrail:DescribeTrails"
    assert out["trail/us-east-1/audit-single"].status is Status.PASS


def test_trail_log_file_validation() -> None:
    out = by_resource(list(trail_log_file_validation(snap(trail("good", validation=True), trail("bad")))))
    assert statuses(list(out.values())) == {"trail/us-east-1/good": Status.PASS, "trail/us-east-1/bad": Status.FAIL}
    assert out["trail/us-east-1/bad"].summary == "bad does not validate its log files (no digest files)"
    assert out["trail/us-east-1/good"].summary == "good validates its log files"


def test_trail_log_file_validation_needs_no_status() -> None:
    # Validation comes from DescribeTrails: a denied GetTrailStatus does not hide it.
    out = only(list(trail_log_file_validation(snap(trail("t-1", logging=None, error=DENIED_STATUS)))))
    assert out.status is Status.FAIL


def test_trail_kms() -> None:
    out = by_resource(list(trail_kms(snap(trail("sealed", kms=KEY), trail("plain", home="eu-west-1")))))
    assert statuses(list(out.values())) == {
        "trail/us-east-1/sealed": Status.PASS,
        "trail/eu-west-1/plain": Status.FAIL,
    }
    assert out["trail/us-east-1/sealed"].summary == f"sealed encrypts its log files with KMS key {KEY}"
    assert out["trail/eu-west-1/plain"].summary == "plain does not encrypt its log files with a KMS key (SSE-S3 only)"
    assert out["trail/eu-west-1/plain"].region == "eu-west-1"


@pytest.mark.parametrize(
    ("subject", "status", "summary"),
    [
        (trail("fresh"), Status.PASS, "fresh delivered a log file 11 h ago"),
        (
            trail("edge", delivered=NOW - timedelta(hours=24)),
            Status.PASS,
            "edge delivered a log file 24 h ago",
        ),
        (
            trail("late", delivered=NOW - timedelta(hours=24, minutes=1)),
            Status.FAIL,
            "late (logging) last delivered a log file 24 h ago, more than 24 h",
        ),
        (
            trail("stale", delivered=NOW - timedelta(days=3, hours=2)),
            Status.FAIL,
            "stale (logging) last delivered a log file 3 days ago, more than 24 h",
        ),
        (
            trail("broken", delivery_error="AccessDenied"),
            Status.FAIL,
            "broken failed to deliver log files: AccessDenied",
        ),
        (trail("silent", delivered=None), Status.FAIL, "silent is logging and has never delivered a log file"),
        (
            trail("stopped", logging=False),
            Status.FAIL,
            "stopped is not logging and has never delivered a log file",
        ),
        (trail("skewed", delivered=NOW + timedelta(minutes=3)), Status.PASS, "skewed delivered a log file 0 min ago"),
        (trail("hidden", logging=None, error=DENIED_STATUS), Status.ERROR, None),
    ],
    ids=["fresh", "exactly-24h", "stale-by-a-minute", "stale", "error", "never", "stopped", "clock-skew", "denied"],
)
def test_trail_delivery(subject: Trail, status: Status, summary: str | None) -> None:
    out = only(list(trail_delivery(snap(subject))))
    assert out.status is status
    if summary is not None:
        assert out.summary == summary
        assert out.details["observed_at"] == NOW.isoformat()
        assert out.details["max_age_hours"] == 24
    else:
        assert out.details["required_permission"] == "cloudtrail:GetTrailStatus"


def test_trail_delivery_fails_on_a_delivery_error_even_when_recent() -> None:
    out = only(list(trail_delivery(snap(trail("t-1", delivered=NOW, delivery_error="NoSuchBucket")))))
    assert out.status is Status.FAIL
    assert out.details["latest_delivery_error"] == "NoSuchBucket"
    assert out.details["delivery_age_hours"] == 0


def management(*conditions: FieldSelector, name: str = "m") -> AdvancedSelector:
    return AdvancedSelector(name, (FieldSelector("eventCategory", equals=("Management",)), *conditions))


@pytest.mark.parametrize(
    ("selectors", "status", "summary"),
    [
        (ALL_MANAGEMENT, Status.PASS, "t-1 records read and write management events"),
        (
            EventSelectors(classic=(ClassicSelector("WriteOnly", True),)),
            Status.FAIL,
            "t-1 records write-only management events (read events are not recorded)",
        ),
        (
            EventSelectors(classic=(ClassicSelector("ReadOnly", True),)),
            Status.FAIL,
            "t-1 records read-only management events (write events are not recorded)",
        ),
        (
            EventSelectors(classic=(ClassicSelector("All", False, data_resource_types=("AWS::S3::Object",)),)),
            Status.FAIL,
            "t-1 records no management events (its selectors select other events only)",
        ),
        (EventSelectors(), Status.FAIL, "t-1 records no management events (no event selectors)"),
        (
            EventSelectors(classic=(ClassicSelector("ReadOnly", True), ClassicSelector("WriteOnly", True))),
            Status.PASS,
            "t-1 records read and write management events",
        ),
        (
            EventSelectors(classic=(ClassicSelector("All", True, ("kms.amazonaws.com",)),)),
            Status.PASS,
            "t-1 records read and write management events (except events from kms.amazonaws.com)",
        ),
        (EventSelectors(advanced=(management(),)), Status.PASS, "t-1 records read and write management events"),
        (
            EventSelectors(advanced=(management(FieldSelector("readOnly", equals=("true",))),)),
            Status.FAIL,
            "t-1 records read-only management events (write events are not recorded)",
        ),
        (
            EventSelectors(advanced=(management(FieldSelector("readOnly", equals=("false",))),)),
            Status.FAIL,
            "t-1 records write-only management events (read events are not recorded)",
        ),
        (
            EventSelectors(
                advanced=(
                    management(FieldSelector("readOnly", equals=("true",)), name="reads"),
                    management(FieldSelector("readOnly", equals=("false",)), name="writes"),
                )
            ),
            Status.PASS,
            "t-1 records read and write management events",
        ),
        (
            EventSelectors(advanced=(management(FieldSelector("eventSource", not_equals=("kms.amazonaws.com",))),)),
            Status.PASS,
            "t-1 records read and write management events (except events from kms.amazonaws.com)",
        ),
        (
            EventSelectors(advanced=(management(FieldSelector("eventSource", equals=("iam.amazonaws.com",))),)),
            Status.FAIL,
            "t-1 records only some management events (eventSource = iam.amazonaws.com)",
        ),
        (
            EventSelectors(
                advanced=(
                    AdvancedSelector(
                        "data",
                        (
                            FieldSelector("eventCategory", equals=("Data",)),
                            FieldSelector("resources.type", equals=("AWS::S3::Object",)),
                        ),
                    ),
                )
            ),
            Status.FAIL,
            "t-1 records no management events (its selectors select other events only)",
        ),
    ],
    ids=[
        "classic-all",
        "classic-write-only",
        "classic-read-only",
        "classic-data-only",
        "none",
        "classic-read-plus-write",
        "classic-excluded-source",
        "advanced-management",
        "advanced-read-only",
        "advanced-write-only",
        "advanced-read-plus-write",
        "advanced-excluded-source",
        "advanced-narrowed",
        "advanced-data-only",
    ],
)
def test_management_events(selectors: EventSelectors, status: Status, summary: str) -> None:
    out = only(list(management_events(snap(trail("t-1", selectors=selectors)))))
    assert (out.status, out.summary) == (status, summary)
    assert out.resource_id == "trail/us-east-1/t-1"
    assert "event_selectors" in out.details
    assert "advanced_event_selectors" in out.details


def test_management_events_details() -> None:
    selectors = EventSelectors(advanced=(management(FieldSelector("readOnly", equals=("false",))),))
    out = only(list(management_events(snap(trail("t-1", selectors=selectors)))))
    assert out.details["advanced_event_selectors"] == [
        {"name": "m", "field_selectors": ["eventCategory = Management", "readOnly = false"]}
    ]
    assert out.details["management_events"] == ["write"]


def test_management_events_is_error_when_the_selectors_cannot_be_read() -> None:
    out = only(list(management_events(snap(trail("t-1", selectors_error=DENIED_SELECTORS)))))
    assert out.status is Status.ERROR
    assert out.details["required_permission"] == "cloudtrail:GetEventSelectors"
    assert out.summary == "GetEventSelectors was denied (AccessDeniedException): grant cloudtrail:GetEventSelectors"


# --- per-region checks --------------------------------------------------------------------------------


def test_region_coverage_by_a_multi_region_trail() -> None:
    out = by_resource(list(region_coverage(snap(trail("audit-all", multi=True)))))
    assert statuses(list(out.values())) == {"region/eu-west-1": Status.PASS, "region/us-east-1": Status.PASS}
    eu = out["region/eu-west-1"]
    assert (eu.region, eu.resource_type) == ("eu-west-1", "AWS::::Region")
    assert eu.summary == "eu-west-1 is logged by audit-all (multi-region)"


def test_a_single_region_trail_covers_only_its_home_region() -> None:
    out = by_resource(list(region_coverage(snap(trail("audit-single", home="us-east-1")))))
    assert statuses(list(out.values())) == {"region/eu-west-1": Status.FAIL, "region/us-east-1": Status.PASS}
    assert out["region/eu-west-1"].summary == "no logging trail covers eu-west-1 (audit-single logs us-east-1 only)"
    assert out["region/us-east-1"].summary == "us-east-1 is logged by audit-single (single-region)"


@pytest.mark.parametrize(
    ("snapshot", "expected", "summary"),
    [
        (snap(), Status.FAIL, "no logging trail covers eu-west-1 (no trail applies to it)"),
        (
            snap(trail("audit-all", multi=True, logging=False)),
            Status.FAIL,
            "no logging trail covers eu-west-1 (audit-all applies but is not logging)",
        ),
        (
            snap(trail("audit-single"), failures=(RegionFailure("eu-west-1", DENIED_DESCRIBE),)),
            Status.ERROR,
            "DescribeTrails was denied (AccessDeniedException): grant cloudtrail:DescribeTrails",
        ),
        (
            snap(trail("audit-all", multi=True, logging=None, error=DENIED_STATUS)),
            Status.ERROR,
            "GetTrailStatus was denied (AccessDeniedException): grant cloudtrail:GetTrailStatus",
        ),
        (
            snap(trail("audit-all", multi=True), failures=(RegionFailure("eu-west-1", DENIED_DESCRIBE),)),
            Status.PASS,
            "eu-west-1 is logged by audit-all (multi-region)",
        ),
    ],
    ids=["no-trails", "not-logging", "describe-denied", "status-denied", "covered-despite-denied-describe"],
)
def test_region_coverage_states(snapshot: CloudTrailSnapshot, expected: Status, summary: str) -> None:
    out = by_resource(list(region_coverage(snapshot)))["region/eu-west-1"]
    assert (out.status, out.summary) == (expected, summary)


def test_recent_activity() -> None:
    activity = (
        RegionActivity("eu-west-1"),
        RegionActivity("us-east-1", latest=EVENT),
        RegionActivity("ap-south-1", error=LOOKUP_500),
    )
    snapshot = snap(activity=activity, regions=("ap-south-1", "eu-west-1", "us-east-1"))
    out = by_resource(list(recent_activity(snapshot)))
    assert statuses(list(out.values())) == {
        "region/eu-west-1": Status.FAIL,
        "region/us-east-1": Status.PASS,
        "region/ap-south-1": Status.ERROR,
    }
    assert out["region/eu-west-1"].summary == "no CloudTrail event in eu-west-1 since 2025-03-01T00:00:00+00:00"
    assert out["region/us-east-1"].summary == (
        "latest event in us-east-1: ConsoleLogin from signin.amazonaws.com at 2025-03-01T23:00:00+00:00"
    )
    assert out["region/us-east-1"].details["latest_event"]["name"] == "ConsoleLogin"
    assert out["region/ap-south-1"].details["required_permission"] == "cloudtrail:LookupEvents"
    assert {o.region for o in out.values()} == {"ap-south-1", "eu-west-1", "us-east-1"}
    assert {o.resource_type for o in out.values()} == {"AWS::::Region"}


def test_recent_activity_refuses_a_snapshot_without_a_result_for_an_inspected_region() -> None:
    with pytest.raises(ValueError, match="eu-west-1"):
        list(recent_activity(snap(activity=(RegionActivity("us-east-1", latest=EVENT),))))


# --- all checks, findings and summary --------------------------------------------------------------


def test_no_trails() -> None:
    findings = {(chk.id, o.resource_id): o.status for chk in CHECKS for o in chk(snap())}
    assert findings == {
        ("cloudtrail.multi_region_logging", "account"): Status.FAIL,
        ("cloudtrail.region_coverage", "region/eu-west-1"): Status.FAIL,
        ("cloudtrail.region_coverage", "region/us-east-1"): Status.FAIL,
        ("cloudtrail.recent_activity", "region/eu-west-1"): Status.PASS,
        ("cloudtrail.recent_activity", "region/us-east-1"): Status.PASS,
    }


def test_findings_carry_the_catalogue_remediation_and_unique_ids() -> None:
    snapshot = snap(
        trail("audit-all", multi=True, validation=True, kms=KEY),
        trail("audit-single", home="eu-west-1", logging=False),
        failures=(RegionFailure("ap-south-1", DENIED_DESCRIBE),),
        activity=tuple(RegionActivity(r) for r in ("ap-south-1", *REGIONS)),
        regions=("ap-south-1", *REGIONS),
    )
    ctx = RunContext("run-" + "1" * 32, "123456789012", NOW, "test")
    findings = evaluate(CHECKS, snapshot, ctx)
    assert len({f.finding_id for f in findings}) == len(findings)
    assert {f.check_id for f in findings} == {chk.id for chk in CHECKS}
    for finding in findings:
        expected = "" if finding.status is Status.PASS else check_info(finding.check_id).remediation
        assert finding.remediation == expected


def test_summarize() -> None:
    snapshot = snap(
        trail("a-trail", validation=True),
        trail("b-trail", logging=False, validation=True, multi=True),
        trail("c-trail", logging=None, error=DENIED_STATUS),
    )
    summary = summarize(snapshot)
    assert summary.population == {"trails": 3, "regions": 2}
    assert summary.metrics == {"logging_trails": 1.0, "validated_trails": 2.0, "covered_regions": 1.0}
    assert summary.regions == ["eu-west-1", "us-east-1"]
