"""The typed state of one account's CloudTrail trails, as `collect` read it. Failed calls travel as `AwsCallError`s.

`now` is the observation time: checks that judge ages (delivery within 24 hours) compare with it, never with the
clock, so they stay pure and a replay of a snapshot gives the same findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.aws import AwsCallError

TRAIL_TYPE = "AWS::CloudTrail::Trail"
ACCOUNT_TYPE = "AWS::::Account"
REGION_TYPE = "AWS::::Region"
ACCOUNT_RESOURCE = "account"
GLOBAL = "global"


def region_resource(region: str) -> str:
    return f"region/{region}"


@dataclass(frozen=True, slots=True)
class TrailStatus:
    """GetTrailStatus's answer."""

    is_logging: bool
    latest_delivery_time: datetime | None = None
    latest_delivery_error: str | None = None


@dataclass(frozen=True, slots=True)
class ClassicSelector:
    """One of GetEventSelectors' `EventSelectors`."""

    read_write_type: str = "All"  # All | ReadOnly | WriteOnly
    include_management_events: bool = True
    exclude_management_event_sources: tuple[str, ...] = ()
    data_resource_types: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """One condition of an advanced event selector (only the operators the checks read)."""

    field: str
    equals: tuple[str, ...] = ()
    not_equals: tuple[str, ...] = ()
    other_operators: tuple[str, ...] = ()  # StartsWith, EndsWith, ... present on this field

    def describe(self) -> str:
        parts = [f"{self.field} = {', '.join(self.equals)}"] if self.equals else []
        parts += [f"{self.field} != {', '.join(self.not_equals)}"] if self.not_equals else []
        parts += [f"{self.field} {op}" for op in self.other_operators]
        return "; ".join(parts) or self.field


@dataclass(frozen=True, slots=True)
class AdvancedSelector:
    """One of GetEventSelectors' `AdvancedEventSelectors`."""

    name: str | None
    field_selectors: tuple[FieldSelector, ...]

    def fields(self, name: str) -> tuple[FieldSelector, ...]:
        return tuple(f for f in self.field_selectors if f.field == name)


@dataclass(frozen=True, slots=True)
class EventSelectors:
    """A trail's event selectors: classic or advanced (AWS returns one kind or the other)."""

    classic: tuple[ClassicSelector, ...] = ()
    advanced: tuple[AdvancedSelector, ...] = ()

    def details(self) -> dict[str, Any]:
        return {
            "event_selectors": [
                {
                    "read_write_type": s.read_write_type,
                    "include_management_events": s.include_management_events,
                    "exclude_management_event_sources": list(s.exclude_management_event_sources),
                    "data_resource_types": list(s.data_resource_types),
                }
                for s in self.classic
            ],
            "advanced_event_selectors": [
                {"name": s.name, "field_selectors": [f.describe() for f in s.field_selectors]} for s in self.advanced
            ],
        }


@dataclass(frozen=True, slots=True)
class Trail:
    """One trail (deduplicated by ARN across regions). `status` is None when GetTrailStatus failed (`status_error`);
    `event_selectors` is None when GetEventSelectors failed (`event_selectors_error`)."""

    name: str
    arn: str
    home_region: str
    multi_region: bool = False
    log_file_validation: bool = False
    s3_bucket: str | None = None
    organization: bool = False
    kms_key_id: str | None = None
    status: TrailStatus | None = None
    status_error: AwsCallError | None = None
    event_selectors: EventSelectors | None = None
    event_selectors_error: AwsCallError | None = None

    @property
    def resource_id(self) -> str:
        return f"trail/{self.home_region}/{self.name}"

    @property
    def is_logging(self) -> bool | None:
        return None if self.status is None else self.status.is_logging

    def covers(self, region: str) -> bool:
        """Whether the trail applies to `region` (logging or not)."""
        return self.multi_region or self.home_region == region

    def describe(self) -> str:
        """Short form for summaries: 'audit multi-region, logging'."""
        scope = "multi-region" if self.multi_region else "single-region"
        state = {True: "logging", False: "not logging", None: "status unknown"}[self.is_logging]
        return f"{self.name} {scope}, {state}"

    def details(self) -> dict[str, Any]:
        status = self.status
        delivered = status.latest_delivery_time if status else None
        return {
            "trail_name": self.name,
            "home_region": self.home_region,
            "multi_region": self.multi_region,
            "log_file_validation": self.log_file_validation,
            "s3_bucket": self.s3_bucket,
            "organization_trail": self.organization,
            "kms_key_id": self.kms_key_id,
            "is_logging": self.is_logging,
            "latest_delivery_time": delivered.isoformat() if delivered else None,
            "latest_delivery_error": status.latest_delivery_error if status else None,
        }


@dataclass(frozen=True, slots=True)
class RegionFailure:
    """A region whose DescribeTrails failed: the trails there (if any) are unknown."""

    region: str
    error: AwsCallError


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """The most recent event LookupEvents returned."""

    name: str | None = None
    source: str | None = None
    time: datetime | None = None


@dataclass(frozen=True, slots=True)
class RegionActivity:
    """LookupEvents in one region over the 24 hours before the observation: its latest event, none, or an error."""

    region: str
    latest: RecentEvent | None = None
    error: AwsCallError | None = None
    pages: int = 1


@dataclass(frozen=True, slots=True)
class CloudTrailSnapshot:
    regions: tuple[str, ...]
    trails: tuple[Trail, ...] = ()
    describe_failures: tuple[RegionFailure, ...] = ()
    activity: tuple[RegionActivity, ...] = ()
    now: datetime = field(kw_only=True)

    @property
    def errors(self) -> tuple[AwsCallError, ...]:
        """The failed calls that leave the trail population or its logging state unknown (DescribeTrails first)."""
        return tuple(f.error for f in self.describe_failures) + tuple(
            t.status_error for t in self.trails if t.status_error is not None
        )

    def describe_failure(self, region: str) -> RegionFailure | None:
        return next((f for f in self.describe_failures if f.region == region), None)

    def covering(self, region: str) -> tuple[Trail, ...]:
        """The logging trails that record `region`: multi-region ones, and single-region ones homed there."""
        return tuple(t for t in self.trails if t.covers(region) and t.is_logging)

    def activity_in(self, region: str) -> RegionActivity:
        for entry in self.activity:
            if entry.region == region:
                return entry
        raise ValueError(f"no LookupEvents result for inspected region {region}")
