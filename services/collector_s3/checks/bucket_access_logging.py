"""s3.bucket_access_logging: every bucket logs server access."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_s3.snapshot import ACCOUNT_RESOURCE, ACCOUNT_TYPE, BUCKET_TYPE, GLOBAL, S3Snapshot
from shared.checks import Outcome, check


@check("s3.bucket_access_logging")
def bucket_access_logging(snapshot: S3Snapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, snapshot.list_error, region=GLOBAL)
        return
    for bucket in snapshot.buckets:
        error = bucket.failure(bucket.logging_error)
        if error is not None:
            yield Outcome.error(bucket.resource_id, BUCKET_TYPE, error, **bucket.fields(bucket.error_details()))
            continue
        fields = bucket.fields(bucket.logging_details())
        if bucket.logging is None:
            yield Outcome.fail(bucket.resource_id, BUCKET_TYPE, "server access logging disabled", **fields)
        else:
            target = f"s3://{bucket.logging.target_bucket}/{bucket.logging.target_prefix}"
            yield Outcome.ok(bucket.resource_id, BUCKET_TYPE, f"server access logs delivered to {target}", **fields)
