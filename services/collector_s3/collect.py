"""The S3 collector's only AWS I/O: ListBuckets, each bucket's region, then GetBucketEncryption in that region.

ListBuckets is paginated with a page size, which also makes AWS return each bucket's `BucketRegion`; where it is
missing (moto never sends it) GetBucketLocation answers. `ServerSideEncryptionConfigurationNotFoundError` is a real
answer (no default encryption); any other non-transient failure is recorded so the bucket's finding is ERROR, never
"unencrypted". Transient failures raise `TransientAwsError` so the runtime redelivers the request later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from services.collector_s3.snapshot import Bucket, DefaultEncryption, S3Snapshot
from shared.aws import ApiCallCounter, AwsCallError, AwsClients, TransientAwsError, classify_error, error_code
from shared.messages import CheckRequested
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import BucketTypeDef, GetBucketEncryptionOutputTypeDef

log = structlog.get_logger(__name__)

SERVICE = "s3"
AWS_ERRORS = (BotoCoreError, ClientError, asyncio.TimeoutError)
NO_DEFAULT_ENCRYPTION = "ServerSideEncryptionConfigurationNotFoundError"
LIST_PAGE_SIZE = 1000  # sent as MaxBuckets, which makes AWS include BucketRegion

ClientFor = Callable[[str], AbstractAsyncContextManager["S3Client"]]

T = TypeVar("T")
R = TypeVar("R")


async def collect(aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings) -> S3Snapshot:
    """Read every bucket of the account and its default encryption, through a client for the bucket's region."""

    @asynccontextmanager
    async def client_for(region: str) -> AsyncIterator[S3Client]:
        async with aws.client("s3", region, counter) as s3:
            yield s3

    return await scan(client_for, home_region=aws.default_region, concurrency=settings.aws_concurrency)


async def scan(client_for: ClientFor, *, home_region: str, concurrency: int) -> S3Snapshot:
    """The collection itself; `client_for(region)` opens an S3 client for a region (tests pass stubbed ones)."""
    async with AsyncExitStack() as stack:
        home = await stack.enter_async_context(client_for(home_region))
        try:
            listed = await _list_buckets(home)
        except AWS_ERRORS as exc:
            return S3Snapshot(list_error=_recorded("ListBuckets", exc))
        log.debug("s3_buckets_listed", buckets=len(listed))
        located = await _bounded(concurrency, listed, lambda entry: _locate(home, entry))
        clients = {home_region: home}
        for region in sorted({bucket.region for bucket in located if bucket.region} - clients.keys()):
            clients[region] = await stack.enter_async_context(client_for(region))
        buckets = await _bounded(concurrency, located, lambda bucket: _read_encryption(clients, bucket))
    return S3Snapshot(buckets=tuple(buckets))


async def _list_buckets(s3: S3Client) -> list[BucketTypeDef]:
    buckets: list[BucketTypeDef] = []
    async for page in s3.get_paginator("list_buckets").paginate(PaginationConfig={"PageSize": LIST_PAGE_SIZE}):
        buckets.extend(entry for entry in page.get("Buckets", []) if entry.get("Name"))
    return buckets


async def _locate(s3: S3Client, entry: BucketTypeDef) -> Bucket:
    name, created = entry["Name"], entry.get("CreationDate")
    region = entry.get("BucketRegion")
    if region:
        return Bucket(name=name, region=region, created=created)
    try:
        location = await s3.get_bucket_location(Bucket=name)
    except AWS_ERRORS as exc:
        return Bucket(name=name, region=None, created=created, error=_recorded("GetBucketLocation", exc, bucket=name))
    return Bucket(name=name, region=location_region(location.get("LocationConstraint")), created=created)


def location_region(constraint: str | None) -> str:
    """GetBucketLocation's LocationConstraint as a region: empty means us-east-1, the legacy `EU` eu-west-1."""
    if not constraint:
        return "us-east-1"
    if constraint == "EU":
        return "eu-west-1"
    return constraint


async def _read_encryption(clients: dict[str, S3Client], bucket: Bucket) -> Bucket:
    if bucket.error is not None or bucket.region is None:
        return bucket
    try:
        response = await clients[bucket.region].get_bucket_encryption(Bucket=bucket.name)
    except AWS_ERRORS as exc:
        if error_code(exc) == NO_DEFAULT_ENCRYPTION:
            return bucket  # a real answer: no default encryption
        return replace(bucket, error=_recorded("GetBucketEncryption", exc, bucket=bucket.name))
    return replace(bucket, encryption=default_rule(response))


def default_rule(response: GetBucketEncryptionOutputTypeDef) -> DefaultEncryption | None:
    """The first rule that sets a default algorithm; None when no rule does."""
    for rule in response.get("ServerSideEncryptionConfiguration", {}).get("Rules", []):
        default = rule.get("ApplyServerSideEncryptionByDefault")
        if default:
            return DefaultEncryption(
                algorithm=default["SSEAlgorithm"],
                kms_key_id=default.get("KMSMasterKeyID") or None,
                bucket_key_enabled=bool(rule.get("BucketKeyEnabled", False)),
            )
    return None


def _recorded(operation: str, exc: BaseException, **context: str) -> AwsCallError:
    """The error to record in the snapshot; raises TransientAwsError when retrying later may succeed."""
    err = classify_error(SERVICE, operation, exc)
    if err.transient:
        log.warning("aws_call_transient", api_call=f"{SERVICE}:{operation}", code=err.code, **context)
        raise TransientAwsError(f"{SERVICE}:{operation} failed ({err.code}): {err.message}") from exc
    log.warning("aws_call_failed", api_call=f"{SERVICE}:{operation}", code=err.code, **context)
    return err


async def _bounded(concurrency: int, items: Iterable[T], fn: Callable[[T], Awaitable[R]]) -> list[R]:
    """`fn` over every item, at most `concurrency` at a time, results in input order.

    The first failure cancels the rest and is raised as itself (not as an ExceptionGroup).
    """
    semaphore = asyncio.Semaphore(concurrency)

    async def one(item: T) -> R:
        async with semaphore:
            return await fn(item)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
    else:
        return [task.result() for task in tasks]
    raise first  # outside the handler: keeps its own cause (the botocore error), not the group
