"""s3.bucket_versioning: every bucket keeps object versions (versioning Enabled)."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_s3.snapshot import ACCOUNT_RESOURCE, ACCOUNT_TYPE, BUCKET_TYPE, GLOBAL, S3Snapshot
from shared.checks import Outcome, check


@check("s3.bucket_versioning")
def bucket_versioning(snapshot: S3Snapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, snapshot.list_error, region=GLOBAL)
        return
    for bucket in snapshot.buckets:
        error = bucket.failure(bucket.versioning_error)
        if error is not None:
            yield Outcome.error(bucket.resource_id, BUCKET_TYPE, error, **bucket.fields(bucket.error_details()))
            continue
        fields = bucket.fields(bucket.versioning_details())
        versioning = bucket.versioning
        mfa_delete = f" (MFA delete {versioning.mfa_delete.lower()})" if versioning.mfa_delete else ""
        if versioning.enabled:
            yield Outcome.ok(bucket.resource_id, BUCKET_TYPE, f"versioning enabled{mfa_delete}", **fields)
        elif versioning.status == "Suspended":
            summary = f"versioning suspended: new object versions are not kept{mfa_delete}"
            yield Outcome.fail(bucket.resource_id, BUCKET_TYPE, summary, **fields)
        elif versioning.status is None:
            yield Outcome.fail(bucket.resource_id, BUCKET_TYPE, f"versioning never enabled{mfa_delete}", **fields)
        else:
            summary = f"versioning status {versioning.status!r}, not Enabled{mfa_delete}"
            yield Outcome.fail(bucket.resource_id, BUCKET_TYPE, summary, **fields)
