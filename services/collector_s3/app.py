"""The S3 collector service: CheckRequested on `kushim.checks.s3` in, FindingsReported chunks out."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from services.collector_s3.checks import CHECKS
from services.collector_s3.collect import collect
from services.collector_s3.snapshot import Bucket, S3Snapshot
from shared.aws import AwsCallError, AwsClients
from shared.collector import CollectorSpec, Summary, collector_service
from shared.messages import Service
from shared.observability import Observability
from shared.service import ServiceApp
from shared.settings import Settings

NAME = "collector-s3"


CallError = Callable[[Bucket], AwsCallError | None]
Good = Callable[[Bucket], bool]


def _percent(buckets: Sequence[Bucket], error: CallError, good: Good) -> float | None:
    """Share of `good` buckets among those whose answer could be read (no `error`); None when there are none."""
    known = [bucket for bucket in buckets if bucket.failure(error(bucket)) is None]
    if not known:
        return None
    return round(100.0 * sum(1 for bucket in known if good(bucket)) / len(known), 1)


# metric -> the error of the call it needs, and what a good bucket has
METRICS: tuple[tuple[str, CallError, Good], ...] = (
    ("encrypted_percent", lambda b: b.encryption_error, lambda b: b.encryption is not None),
    ("kms_percent", lambda b: b.encryption_error, lambda b: b.encryption is not None and b.encryption.uses_kms),
    ("versioning_percent", lambda b: b.versioning_error, lambda b: b.versioning.enabled),
    ("logging_percent", lambda b: b.logging_error, lambda b: b.logging is not None),
    (
        "public_access_blocked_percent",
        lambda b: b.public_access_block_error,
        lambda b: b.public_access_block is not None and not b.public_access_block.missing,
    ),
)


def summarize(snapshot: S3Snapshot) -> Summary:
    """Bucket count, bucket regions, and per setting the share of buckets that have it, among the buckets whose
    answer could be read (a metric is left out when no bucket's answer could be)."""
    if snapshot.list_error is not None:
        return Summary(population={}, metrics={}, regions=[])
    buckets = snapshot.buckets
    metrics: dict[str, float] = {}
    for key, error, good in METRICS:
        percent = _percent(buckets, error, good)
        if percent is not None:
            metrics[key] = percent
    regions = sorted({bucket.region for bucket in buckets if bucket.region})
    return Summary(population={"buckets": len(buckets)}, metrics=metrics, regions=regions)


SPEC: CollectorSpec[S3Snapshot] = CollectorSpec(service=Service.S3, checks=CHECKS, collect=collect, summarize=summarize)


def create_service(
    settings: Settings, *, url: str, aws: AwsClients | None = None, observability: Observability | None = None
) -> ServiceApp:
    """Build the service: its broker, the durable consumer wiring and the AWS clients (nothing connects yet)."""
    return collector_service(NAME, SPEC, settings, url=url, aws=aws, observability=observability)
