"""The CloudTrail collector service: CheckRequested on `kushim.checks.cloudtrail` in, FindingsReported chunks out."""

from __future__ import annotations

from services.collector_cloudtrail.checks import CHECKS
from services.collector_cloudtrail.collect import collect
from services.collector_cloudtrail.snapshot import CloudTrailSnapshot
from shared.aws import AwsClients
from shared.collector import CollectorSpec, Summary, register_collector
from shared.messages import Service
from shared.nats import make_broker
from shared.service import ServiceApp
from shared.settings import Settings

NAME = "collector-cloudtrail"


def summarize(snapshot: CloudTrailSnapshot) -> Summary:
    """Trails seen, regions inspected, and how many trails are logging."""
    logging = sum(1 for trail in snapshot.trails if trail.is_logging)
    return Summary(
        population={"trails": len(snapshot.trails), "regions": len(snapshot.regions)},
        metrics={"logging_trails": float(logging)},
        regions=list(snapshot.regions),
    )


SPEC: CollectorSpec[CloudTrailSnapshot] = CollectorSpec(
    service=Service.CLOUDTRAIL, checks=CHECKS, collect=collect, summarize=summarize
)


def create_service(settings: Settings, *, url: str, aws: AwsClients | None = None) -> ServiceApp:
    """Build the service: its broker, the durable consumer wiring and the AWS clients (nothing connects yet)."""
    broker = make_broker(url, name=NAME, settings=settings)
    register_collector(broker, SPEC, aws=aws or AwsClients(settings), settings=settings)
    return ServiceApp(name=NAME, broker=broker, url=url, settings=settings)
