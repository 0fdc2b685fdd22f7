"""The IAM collector's only AWS I/O: ListUsers, then per user ListMFADevices and GetLoginProfile.

Every listing is paginated. A non-transient failure (AccessDenied, ...) is recorded in the snapshot so that the
checks report ERROR naming the call and the missing permission; a transient one (throttling after botocore's
retries, 5xx, connection) raises `TransientAwsError` so the runtime redelivers the request later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from services.collector_iam.snapshot import IamSnapshot, IamUser
from shared.aws import ApiCallCounter, AwsCallError, AwsClients, TransientAwsError, classify_error, error_code
from shared.messages import CheckRequested
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_iam import IAMClient
    from types_aiobotocore_iam.type_defs import UserTypeDef

log = structlog.get_logger(__name__)

SERVICE = "iam"
AWS_ERRORS = (BotoCoreError, ClientError, asyncio.TimeoutError)

T = TypeVar("T")
R = TypeVar("R")


async def collect(aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings) -> IamSnapshot:
    """Read every IAM user of the account (IAM is global: one client in the configured region)."""
    async with aws.client("iam", aws.default_region, counter) as iam:
        return await scan(iam, concurrency=settings.aws_concurrency)


async def scan(iam: IAMClient, *, concurrency: int) -> IamSnapshot:
    """The collection itself, driven by any IAM client (tests pass a stubbed one)."""
    try:
        listed = await _list_users(iam)
    except AWS_ERRORS as exc:
        return IamSnapshot(list_error=_recorded("ListUsers", exc))
    log.debug("iam_users_listed", users=len(listed))
    users = await _bounded(concurrency, listed, lambda user: _read_user(iam, user))
    return IamSnapshot(users=tuple(users))


async def _list_users(iam: IAMClient) -> list[UserTypeDef]:
    users: list[UserTypeDef] = []
    async for page in iam.get_paginator("list_users").paginate():
        users.extend(page.get("Users", []))
    return users


async def _read_user(iam: IAMClient, listed: UserTypeDef) -> IamUser:
    name = listed["UserName"]
    devices: tuple[str, ...] = ()
    mfa_error: AwsCallError | None = None
    try:
        devices = await _mfa_devices(iam, name)
    except AWS_ERRORS as exc:
        mfa_error = _recorded("ListMFADevices", exc, user=name)
    console_password: bool | None = None
    login_profile_error: AwsCallError | None = None
    try:
        await iam.get_login_profile(UserName=name)
        console_password = True
    except AWS_ERRORS as exc:
        if error_code(exc) == "NoSuchEntity":
            console_password = False
        else:
            login_profile_error = _recorded("GetLoginProfile", exc, user=name)
    return IamUser(
        name=name,
        arn=listed["Arn"],
        user_id=listed["UserId"],
        created=listed.get("CreateDate"),
        mfa_devices=devices,
        mfa_error=mfa_error,
        console_password=console_password,
        login_profile_error=login_profile_error,
    )


async def _mfa_devices(iam: IAMClient, name: str) -> tuple[str, ...]:
    """Serial numbers of the devices assigned to this user; unassigned virtual devices never appear here."""
    serials: list[str] = []
    async for page in iam.get_paginator("list_mfa_devices").paginate(UserName=name):
        serials.extend(device["SerialNumber"] for device in page.get("MFADevices", []))
    return tuple(serials)


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
