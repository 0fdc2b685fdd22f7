"""s3.bucket_public_access_block: every bucket turns on all four bucket-level Block Public Access settings."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_s3.snapshot import ACCOUNT_RESOURCE, ACCOUNT_TYPE, BUCKET_TYPE, GLOBAL, S3Snapshot
from shared.checks import Outcome, check


@check("s3.bucket_public_access_block")
def bucket_public_access_block(snapshot: S3Snapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, snapshot.list_error, region=GLOBAL)
        return
    for bucket in snapshot.buckets:
        error = bucket.failure(bucket.public_access_block_error)
        if error is not None:
            yield Outcome.error(bucket.resource_id, BUCKET_TYPE, error, **bucket.fields(bucket.error_details()))
            continue
        fields = bucket.fields(bucket.public_access_block_details())
        pab = bucket.public_access_block
        if pab is None:
            yield Outcome.fail(bucket.resource_id, BUCKET_TYPE, "no public access block configured", **fields)
        elif pab.missing:
            summary = f"public access block lacks {', '.join(pab.missing)}"
            yield Outcome.fail(bucket.resource_id, BUCKET_TYPE, summary, **fields)
        else:
            yield Outcome.ok(bucket.resource_id, BUCKET_TYPE, "all four public access block settings on", **fields)
