"""s3.bucket_sse_kms: every bucket encrypts by default with a KMS key (SSE-KMS or DSSE-KMS)."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_s3.snapshot import ACCOUNT_RESOURCE, ACCOUNT_TYPE, BUCKET_TYPE, GLOBAL, S3Snapshot
from shared.checks import Outcome, check


@check("s3.bucket_sse_kms")
def bucket_sse_kms(snapshot: S3Snapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, snapshot.list_error, region=GLOBAL)
        return
    for bucket in snapshot.buckets:
        error = bucket.failure(bucket.encryption_error)
        if error is not None:
            yield Outcome.error(bucket.resource_id, BUCKET_TYPE, error, **bucket.fields(bucket.error_details()))
            continue
        fields = bucket.fields(bucket.encryption_details())
        encryption = bucket.encryption
        if encryption is None:
            yield Outcome.fail(bucket.resource_id, BUCKET_TYPE, "no default server-side encryption", **fields)
        elif encryption.uses_kms:
            summary = f"default encryption {encryption.describe()}"
            yield Outcome.ok(bucket.resource_id, BUCKET_TYPE, summary, **fields)
        else:
            summary = f"default encryption {encryption.describe()}, not a KMS key"
            yield Outcome.fail(bucket.resource_id, BUCKET_TYPE, summary, **fields)
