"""The S3 collector's only AWS I/O: ListBuckets, each bucket's region, then per bucket GetBucketEncryption,
GetBucketVersioning, GetBucketLogging and GetPublicAccessBlock through a client for the bucket's region.

ListBuckets is paginated with a page size, which also makes AWS return each bucket's `BucketRegion`; where it is
missing (moto never sends it) GetBucketLocation answers. One client per region serves the whole scan (opening a
client costs far more than a call). "Not configured" answers are real answers
(`ServerSideEncryptionConfigurationNotFoundError`, `NoSuchPublicAccessBlockConfiguration`); any other non-transient
failure is recorded for that call alone, so only the checks that need it are ERROR, never "off". Transient failures
raise `TransientAwsError` so the runtime redelivers the request later.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from services.collector_s3.snapshot import (
    AccessLogging,
    Bucket,
    DefaultEncryption,
    PublicAccessBlock,
    S3Snapshot,
    Versioning,
)
from shared.aws import (
    ApiCallCounter,
    AwsCallError,
    AwsClients,
    error_code,
    recorded_error,
)
from shared.concurrency import bounded
from shared.messages import CheckRequested
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client
    from types_aiobotocore_s3.type_defs import BucketTypeDef, GetBucketEncryptionOutputTypeDef

log = structlog.get_logger(__name__)

SERVICE = "s3"
AWS_ERRORS = (BotoCoreError, ClientError, asyncio.TimeoutError)
NO_DEFAULT_ENCRYPTION = "ServerSideEncryptionConfigurationNotFoundError"
NO_PUBLIC_ACCESS_BLOCK = "NoSuchPublicAccessBlockConfiguration"

# Sent as MaxBuckets, which makes AWS include BucketRegion (saving a GetBucketLocation per bucket). 10,000 is AWS's
# maximum page and its default bucket quota. moto (5.2.5) cuts the listing at MaxBuckets and never returns a
# ContinuationToken, so a smaller page would silently drop buckets on moto; with the maximum, one page holds every
# bucket of an account at the default quota, and `_list_buckets` double-checks a full page that ends the listing.
LIST_PAGE_SIZE = 10_000

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


async def scan(
    client_for: ClientFor, *, home_region: str, concurrency: int, page_size: int = LIST_PAGE_SIZE
) -> S3Snapshot:
    """The collection itself; `client_for(region)` opens an S3 client for a region (tests pass stubbed ones).

    At most `concurrency` calls are in flight: buckets are read `concurrency` at a time, each one's calls in turn.
    """
    async with AsyncExitStack() as stack:
        home = await stack.enter_async_context(client_for(home_region))
        try:
            listed = await _list_buckets(home, page_size)
        except AWS_ERRORS as exc:
            return S3Snapshot(list_error=recorded_error(SERVICE, "ListBuckets", exc))
        located = await bounded(concurrency, listed, lambda entry: _locate(home, entry))
        clients = {home_region: home}
        for region in sorted({bucket.region for bucket in located if bucket.region} - clients.keys()):
            clients[region] = await stack.enter_async_context(client_for(region))
        log.debug("s3_buckets_listed", buckets=len(located), regions=len(clients))
        buckets = await bounded(concurrency, located, lambda bucket: _read_bucket(clients, bucket))
    return S3Snapshot(buckets=tuple(buckets))


async def _list_buckets(s3: S3Client, page_size: int) -> list[BucketTypeDef]:
    buckets: list[BucketTypeDef] = []
    last_page_full = False
    async for page in s3.get_paginator("list_buckets").paginate(PaginationConfig={"PageSize": page_size}):
        entries = [entry for entry in page.get("Buckets", []) if entry.get("Name")]
        buckets.extend(entries)
        last_page_full = len(entries) >= page_size and not page.get("ContinuationToken")
    if last_page_full:
        # A full last page: either exactly `page_size` buckets, or a server that truncates without a token (moto).
        # One unpaginated listing tells (AWS rejects it above a 10,000-bucket quota: then the population is ERROR).
        log.info("s3_list_full_page_without_token", page_size=page_size)
        seen = {entry["Name"] for entry in buckets}
        everything = await s3.list_buckets()
        buckets.extend(e for e in everything.get("Buckets", []) if e.get("Name") and e["Name"] not in seen)
    return buckets


async def _locate(s3: S3Client, entry: BucketTypeDef) -> Bucket:
    name, created = entry["Name"], entry.get("CreationDate")
    region = entry.get("BucketRegion")
    if region:
        return Bucket(name=name, region=region, created=created)
    try:
        location = await s3.get_bucket_location(Bucket=name)
    except AWS_ERRORS as exc:
        return Bucket(
            name=name,
            region=None,
            created=created,
            error=recorded_error(SERVICE, "GetBucketLocation", exc, bucket=name),
        )
    return Bucket(name=name, region=location_region(location.get("LocationConstraint")), created=created)


def location_region(constraint: str | None) -> str:
    """GetBucketLocation's LocationConstraint as a region: empty means us-east-1, the legacy `EU` eu-west-1."""
    if not constraint:
        return "us-east-1"
    if constraint == "EU":
        return "eu-west-1"
    return constraint


async def _read_bucket(clients: dict[str, S3Client], bucket: Bucket) -> Bucket:
    """The bucket's four configuration answers, each call's failure recorded for that call alone."""
    if bucket.error is not None or bucket.region is None:
        return bucket
    s3, name = clients[bucket.region], bucket.name
    encryption, encryption_error = await _answer(
        "GetBucketEncryption", name, _encryption(s3, name), not_configured=NO_DEFAULT_ENCRYPTION
    )
    versioning, versioning_error = await _answer("GetBucketVersioning", name, _versioning(s3, name))
    access_logging, logging_error = await _answer("GetBucketLogging", name, _logging(s3, name))
    public_access_block, public_access_block_error = await _answer(
        "GetPublicAccessBlock", name, _public_access_block(s3, name), not_configured=NO_PUBLIC_ACCESS_BLOCK
    )
    return replace(
        bucket,
        encryption=encryption,
        encryption_error=encryption_error,
        versioning=versioning or Versioning(),
        versioning_error=versioning_error,
        logging=access_logging,
        logging_error=logging_error,
        public_access_block=public_access_block,
        public_access_block_error=public_access_block_error,
    )


async def _answer(
    operation: str, bucket: str, call: Awaitable[T | None], *, not_configured: str | None = None
) -> tuple[T | None, AwsCallError | None]:
    """A call's answer, or its recorded failure; the `not_configured` error code is the answer None."""
    try:
        return await call, None
    except AWS_ERRORS as exc:
        if not_configured is not None and error_code(exc) == not_configured:
            return None, None
        return None, recorded_error(SERVICE, operation, exc, bucket=bucket)


async def _encryption(s3: S3Client, name: str) -> DefaultEncryption | None:
    return default_rule(await s3.get_bucket_encryption(Bucket=name))


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


async def _versioning(s3: S3Client, name: str) -> Versioning:
    response = await s3.get_bucket_versioning(Bucket=name)
    # No Status key: versioning was never enabled on this bucket.
    return Versioning(status=response.get("Status"), mfa_delete=response.get("MFADelete"))


async def _logging(s3: S3Client, name: str) -> AccessLogging | None:
    enabled = (await s3.get_bucket_logging(Bucket=name)).get("LoggingEnabled")
    if enabled is None:
        return None
    return AccessLogging(target_bucket=enabled["TargetBucket"], target_prefix=enabled.get("TargetPrefix", ""))


async def _public_access_block(s3: S3Client, name: str) -> PublicAccessBlock:
    config = (await s3.get_public_access_block(Bucket=name)).get("PublicAccessBlockConfiguration", {})
    return PublicAccessBlock(
        block_public_acls=bool(config.get("BlockPublicAcls", False)),
        ignore_public_acls=bool(config.get("IgnorePublicAcls", False)),
        block_public_policy=bool(config.get("BlockPublicPolicy", False)),
        restrict_public_buckets=bool(config.get("RestrictPublicBuckets", False)),
    )
