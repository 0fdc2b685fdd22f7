"""The typed state of one account's CloudTrail trails, as `collect` read it. Failed calls travel as `AwsCallError`s."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.aws import AwsCallError

TRAIL_TYPE = "AWS::CloudTrail::Trail"
ACCOUNT_TYPE = "AWS::::Account"
ACCOUNT_RESOURCE = "account"
GLOBAL = "global"


@dataclass(frozen=True, slots=True)
class TrailStatus:
    """GetTrailStatus's answer."""

    is_logging: bool
    latest_delivery_time: datetime | None = None
    latest_delivery_error: str | None = None


@dataclass(frozen=True, slots=True)
class Trail:
    """One trail (deduplicated by ARN across regions). `status` is None when GetTrailStatus failed (`status_error`)."""

    name: str
    arn: str
    home_region: str
    multi_region: bool = False
    log_file_validation: bool = False
    s3_bucket: str | None = None
    organization: bool = False
    status: TrailStatus | None = None
    status_error: AwsCallError | None = None

    @property
    def resource_id(self) -> str:
        return f"trail/{self.home_region}/{self.name}"

    @property
    def is_logging(self) -> bool | None:
        return None if self.status is None else self.status.is_logging

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
class CloudTrailSnapshot:
    regions: tuple[str, ...]
    trails: tuple[Trail, ...] = ()
    describe_failures: tuple[RegionFailure, ...] = ()

    @property
    def errors(self) -> tuple[AwsCallError, ...]:
        """Every failed call, DescribeTrails first: when any exists the trail population may be incomplete."""
        return tuple(f.error for f in self.describe_failures) + tuple(
            t.status_error for t in self.trails if t.status_error is not None
        )
