"""The CloudTrail collector service: CheckRequested on `kushim.checks.cloudtrail` in, FindingsReported chunks out."""

from __future__ import annotations

from dataclasses import replace

from services.collector_cloudtrail.checks import CHECKS
from services.collector_cloudtrail.collect import collect
from services.collector_cloudtrail.ratelimit import LookupLimiters
from services.collector_cloudtrail.snapshot import CloudTrailSnapshot
from shared.aws import ApiCallCounter, AwsClients
from shared.collector import CollectorSpec, Summary, collector_service
from shared.messages import CheckRequested, Service
from shared.observability import Observability
from shared.service import ServiceApp
from shared.settings import Settings

NAME = "collector-cloudtrail"


def summarize(snapshot: CloudTrailSnapshot) -> Summary:
    """Trails seen and regions inspected; how many trails log and validate, how many regions a logging trail covers."""
    logging = sum(1 for trail in snapshot.trails if trail.is_logging)
    validated = sum(1 for trail in snapshot.trails if trail.log_file_validation)
    covered = sum(1 for region in snapshot.regions if snapshot.covering(region))
    return Summary(
        population={"trails": len(snapshot.trails), "regions": len(snapshot.regions)},
        metrics={
            "logging_trails": float(logging),
            "validated_trails": float(validated),
            "covered_regions": float(covered),
        },
        regions=list(snapshot.regions),
    )


SPEC: CollectorSpec[CloudTrailSnapshot] = CollectorSpec(
    service=Service.CLOUDTRAIL, checks=CHECKS, collect=collect, summarize=summarize
)


def spec_with_limiters(limiters: LookupLimiters) -> CollectorSpec[CloudTrailSnapshot]:
    """SPEC whose scans share `limiters`: LookupEvents stays within the rate per account and region across the
    scans of this process, not only within one scan."""

    async def collect_limited(
        aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings
    ) -> CloudTrailSnapshot:
        return await collect(aws, request, counter, settings, limiters=limiters)

    return replace(SPEC, collect=collect_limited)


def create_service(
    settings: Settings, *, url: str, aws: AwsClients | None = None, observability: Observability | None = None
) -> ServiceApp:
    """Build the service: its broker, the durable consumer wiring and the AWS clients (nothing connects yet)."""
    spec = spec_with_limiters(LookupLimiters(settings.lookup_events_rate))
    return collector_service(NAME, spec, settings, url=url, aws=aws, observability=observability)
