"""The S3 collector service: CheckRequested on `kushim.checks.s3` in, FindingsReported chunks out."""

from __future__ import annotations

from services.collector_s3.checks import CHECKS
from services.collector_s3.collect import collect
from services.collector_s3.snapshot import S3Snapshot
from shared.aws import AwsClients
from shared.collector import CollectorSpec, Summary, register_collector
from shared.messages import Service
from shared.nats import make_broker
from shared.service import ServiceApp
from shared.settings import Settings

NAME = "collector-s3"


def summarize(snapshot: S3Snapshot) -> Summary:
    """Bucket count, the share encrypted by default (of buckets whose answer could be read), bucket regions."""
    if snapshot.list_error is not None:
        return Summary(population={}, metrics={}, regions=[])
    buckets = snapshot.buckets
    known = [bucket for bucket in buckets if bucket.error is None]
    metrics: dict[str, float] = {}
    if known:
        encrypted = sum(1 for bucket in known if bucket.encryption is not None)
        metrics["encrypted_percent"] = round(100.0 * encrypted / len(known), 1)
    regions = sorted({bucket.region for bucket in buckets if bucket.region})
    return Summary(population={"buckets": len(buckets)}, metrics=metrics, regions=regions)


SPEC: CollectorSpec[S3Snapshot] = CollectorSpec(service=Service.S3, checks=CHECKS, collect=collect, summarize=summarize)


def create_service(settings: Settings, *, url: str, aws: AwsClients | None = None) -> ServiceApp:
    """Build the service: its broker, the durable consumer wiring and the AWS clients (nothing connects yet)."""
    broker = make_broker(url, name=NAME, settings=settings)
    register_collector(broker, SPEC, aws=aws or AwsClients(settings), settings=settings)
    return ServiceApp(name=NAME, broker=broker, url=url, settings=settings)
