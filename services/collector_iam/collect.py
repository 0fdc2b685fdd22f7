"""The IAM collector's only AWS I/O. Two data paths build the same `IamSnapshot`:

1. The credential report (preferred: a handful of calls for any number of users): GenerateCredentialReport, polled
   with bounded attempts and short sleeps while it is STARTED / INPROGRESS (or GetCredentialReport answers
   ReportInProgress), then GetCredentialReport: one CSV with every user and the `<root_account>` row.
2. Per user, when the report is denied (or fails, or cannot be parsed): ListUsers (paginated), then per user with
   bounded concurrency ListMFADevices, GetLoginProfile, ListAccessKeys and GetAccessKeyLastUsed per active key; the
   root user from GetAccountSummary (also used when a report lacks the `<root_account>` row, as moto's does).

A non-transient failure (AccessDenied, ...) is recorded in the snapshot so that the checks report ERROR naming the
call and the missing permission; a transient one (throttling after botocore's retries, 5xx, connection) raises
`TransientAwsError` so the runtime redelivers the request later.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import structlog
from botocore.exceptions import BotoCoreError, ClientError

from services.collector_iam.report import CredentialReport, ReportFormatError, parse_credential_report
from services.collector_iam.snapshot import DEFAULT_KEY_MAX_AGE_DAYS, AccessKey, IamSnapshot, IamUser, RootUser
from shared.aws import (
    ApiCallCounter,
    AwsCallError,
    AwsClients,
    TransientAwsError,
    error_code,
    recorded_error,
)
from shared.concurrency import bounded
from shared.messages import CheckRequested
from shared.permissions import iam_action
from shared.settings import Settings

if TYPE_CHECKING:
    from types_aiobotocore_iam import IAMClient
    from types_aiobotocore_iam.type_defs import AccessKeyMetadataTypeDef, UserTypeDef

log = structlog.get_logger(__name__)

SERVICE = "iam"
AWS_ERRORS = (BotoCoreError, ClientError, asyncio.TimeoutError)

# Sleeps between GenerateCredentialReport polls: at most len + 1 polls, about 20 s in all (well within ack_wait,
# and the runtime keeps the message alive anyway). A report still not ready after that is a transient failure.
REPORT_POLL_DELAYS: tuple[float, ...] = (0.2, 0.5, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0)
# GetCredentialReport answers: not ready yet, never generated, older than four hours. Each means "generate, wait".
REPORT_RETRY_CODES = frozenset({"ReportInProgress", "ReportNotPresent", "ReportExpired"})
READY = "COMPLETE"

T = TypeVar("T")
R = TypeVar("R")


async def collect(aws: AwsClients, request: CheckRequested, counter: ApiCallCounter, settings: Settings) -> IamSnapshot:
    """Read the account's IAM users and root user (IAM is global: one client in the configured region)."""
    async with aws.client("iam", aws.default_region, counter) as iam:
        return await scan(
            iam,
            account_id=request.account_id,
            concurrency=settings.aws_concurrency,
            key_max_age_days=settings.access_key_max_age_days,
        )


async def scan(
    iam: IAMClient,
    *,
    account_id: str,
    concurrency: int,
    key_max_age_days: int = DEFAULT_KEY_MAX_AGE_DAYS,
    now: datetime | None = None,
    poll_delays: Sequence[float] = REPORT_POLL_DELAYS,
) -> IamSnapshot:
    """The collection itself, driven by any IAM client (tests pass a stubbed one). `now` is the observation time
    the key ages are measured at (default: when the scan starts)."""
    observed = now or datetime.now(UTC)
    root_arn = f"arn:{iam.meta.partition}:iam::{account_id}:root"
    try:
        report = await _credential_report(iam, poll_delays)
    except _ReportUnavailable as unavailable:
        report_error = unavailable.error
    else:
        # AWS's report always has the <root_account> row; moto's never does.
        root = report.root or await _root_from_summary(iam, root_arn)
        log.debug("iam_credential_report_read", users=len(report.users), root_row=report.root is not None)
        return IamSnapshot(
            users=report.users,
            root=root,
            source="credential_report",
            key_max_age_days=key_max_age_days,
            now=observed,
        )

    log.info("iam_per_user_path", reason=report_error.describe())
    root = await _root_from_summary(iam, root_arn)
    users: tuple[IamUser, ...] = ()
    list_error: AwsCallError | None = None
    try:
        listed = await _list_users(iam)
    except AWS_ERRORS as exc:
        list_error = recorded_error(SERVICE, "ListUsers", exc)
    else:
        log.debug("iam_users_listed", users=len(listed))
        read = await bounded(concurrency, listed, lambda user: _read_user(iam, user))
        users = tuple(sorted(read, key=lambda user: user.name))
    return IamSnapshot(
        users=users,
        list_error=list_error,
        root=root,
        source="per_user",
        report_error=report_error,
        key_max_age_days=key_max_age_days,
        now=observed,
    )


# --- the credential report ------------------------------------------------------------------------


class _ReportUnavailable(Exception):
    """The credential report cannot be used (denied, failed, malformed): take the per-user path."""

    def __init__(self, error: AwsCallError) -> None:
        super().__init__(error.describe())
        self.error = error


async def _credential_report(iam: IAMClient, poll_delays: Sequence[float]) -> CredentialReport:
    delays = iter(poll_delays)
    polls = 0
    while True:
        polls += 1
        state: str
        try:
            state = (await iam.generate_credential_report())["State"]
        except AWS_ERRORS as exc:
            if error_code(exc) not in REPORT_RETRY_CODES:
                raise _ReportUnavailable(recorded_error(SERVICE, "GenerateCredentialReport", exc)) from exc
            state = "INPROGRESS"
        if state == READY:
            try:
                response = await iam.get_credential_report()
            except AWS_ERRORS as exc:
                if error_code(exc) not in REPORT_RETRY_CODES:
                    raise _ReportUnavailable(recorded_error(SERVICE, "GetCredentialReport", exc)) from exc
                state = f"GetCredentialReport: {error_code(exc)}"
            else:
                # AWS serves a report up to four hours old: users created since then are not in it yet.
                log.debug("iam_credential_report_downloaded", generated=str(response.get("GeneratedTime")), polls=polls)
                return _parsed(response["Content"], response.get("ReportFormat", "text/csv"))
        delay = next(delays, None)
        if delay is None:
            log.warning("iam_credential_report_not_ready", polls=polls, state=state)
            raise TransientAwsError(f"iam:GenerateCredentialReport: the report was not ready after {polls} polls")
        log.debug("iam_credential_report_waiting", state=state, delay=delay)
        await asyncio.sleep(delay)


def _parsed(content: bytes, report_format: str) -> CredentialReport:
    try:
        if report_format != "text/csv":
            raise ReportFormatError(f"report format {report_format!r}, expected text/csv")
        return parse_credential_report(content)
    except ReportFormatError as exc:
        operation = "GetCredentialReport"
        err = AwsCallError(SERVICE, operation, "InvalidReport", str(exc)[:500], iam_action(SERVICE, operation), False)
        log.warning("aws_call_failed", api_call=f"{SERVICE}:{operation}", code=err.code, reason=err.message)
        raise _ReportUnavailable(err) from exc


# --- the root user ----------------------------------------------------------------------------------


async def _root_from_summary(iam: IAMClient, arn: str) -> RootUser:
    operation = "GetAccountSummary"
    try:
        summary = (await iam.get_account_summary())["SummaryMap"]
    except AWS_ERRORS as exc:
        return RootUser(arn=arn, error=recorded_error(SERVICE, operation, exc))
    mfa, keys = summary.get("AccountMFAEnabled"), summary.get("AccountAccessKeysPresent")
    if mfa is None or keys is None:
        message = "the SummaryMap lacks AccountMFAEnabled or AccountAccessKeysPresent"
        err = AwsCallError(SERVICE, operation, "IncompleteAnswer", message, iam_action(SERVICE, operation), False)
        return RootUser(arn=arn, error=err)
    return RootUser(arn=arn, source="account_summary", mfa_active=mfa > 0, access_keys_present=keys > 0)


# --- per user ---------------------------------------------------------------------------------------


async def _list_users(iam: IAMClient) -> list[UserTypeDef]:
    users: list[UserTypeDef] = []
    async for page in iam.get_paginator("list_users").paginate():
        users.extend(page.get("Users", []))
    return users


async def _read_user(iam: IAMClient, listed: UserTypeDef) -> IamUser:
    name = listed["UserName"]
    mfa_active = False
    mfa_error: AwsCallError | None = None
    try:
        mfa_active = await _has_mfa_device(iam, name)
    except AWS_ERRORS as exc:
        mfa_error = recorded_error(SERVICE, "ListMFADevices", exc, user=name)
    console_password: bool | None = None
    login_profile_error: AwsCallError | None = None
    try:
        await iam.get_login_profile(UserName=name)
        console_password = True
    except AWS_ERRORS as exc:
        if error_code(exc) == "NoSuchEntity":
            console_password = False
        else:
            login_profile_error = recorded_error(SERVICE, "GetLoginProfile", exc, user=name)
    keys: tuple[AccessKey, ...] = ()
    keys_error: AwsCallError | None = None
    try:
        metadata = await _access_key_metadata(iam, name)
    except AWS_ERRORS as exc:
        keys_error = recorded_error(SERVICE, "ListAccessKeys", exc, user=name)
    else:
        keys, keys_error = await _access_keys(iam, name, metadata)
    created = listed.get("CreateDate")
    return IamUser(
        name=name,
        arn=listed["Arn"],
        created=_to_second(created) if created is not None else None,
        mfa_active=mfa_active,
        mfa_error=mfa_error,
        console_password=console_password,
        login_profile_error=login_profile_error,
        access_keys=keys,
        access_keys_error=keys_error,
    )


async def _has_mfa_device(iam: IAMClient, name: str) -> bool:
    """Whether a device is assigned to this user; unassigned virtual devices never appear here."""
    assigned = False
    async for page in iam.get_paginator("list_mfa_devices").paginate(UserName=name):
        assigned = assigned or bool(page.get("MFADevices"))
    return assigned


async def _access_key_metadata(iam: IAMClient, name: str) -> list[AccessKeyMetadataTypeDef]:
    keys: list[AccessKeyMetadataTypeDef] = []
    async for page in iam.get_paginator("list_access_keys").paginate(UserName=name):
        keys.extend(page.get("AccessKeyMetadata", []))
    return keys


async def _access_keys(
    iam: IAMClient, name: str, metadata: list[AccessKeyMetadataTypeDef]
) -> tuple[tuple[AccessKey, ...], AwsCallError | None]:
    """The user's keys numbered 1, 2, ... in CreateDate order (the credential report's numbering), each active one
    with its last use (GetAccessKeyLastUsed)."""
    if any("CreateDate" not in key or "AccessKeyId" not in key for key in metadata):
        message = f"an access key of {name} has no AccessKeyId or CreateDate"
        operation = "ListAccessKeys"
        return (), AwsCallError(SERVICE, operation, "IncompleteAnswer", message, iam_action(SERVICE, operation), False)
    ordered = sorted(metadata, key=lambda key: (key["CreateDate"], key["AccessKeyId"]))
    keys: list[AccessKey] = []
    for number, key in enumerate(ordered, start=1):
        active = key.get("Status") == "Active"
        last_used: datetime | None = None
        last_used_error: AwsCallError | None = None
        if active:  # inactive keys are never judged: no call for them
            try:
                answer = await iam.get_access_key_last_used(AccessKeyId=key["AccessKeyId"])
            except AWS_ERRORS as exc:
                last_used_error = recorded_error(SERVICE, "GetAccessKeyLastUsed", exc, user=name)
            else:
                used = answer.get("AccessKeyLastUsed", {}).get("LastUsedDate")
                last_used = _to_second(used) if used is not None else None
        keys.append(
            AccessKey(
                number=number,
                active=active,
                created=_to_second(key["CreateDate"]),
                last_used=last_used,
                last_used_error=last_used_error,
            )
        )
    return tuple(keys), None


def _to_second(moment: datetime) -> datetime:
    """UTC, whole seconds: the credential report's precision, so both paths give the same snapshot."""
    return moment.astimezone(UTC).replace(microsecond=0)


# --- shared helpers ---------------------------------------------------------------------------------
