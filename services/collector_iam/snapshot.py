"""The typed state of one account's IAM users and root user, as `collect` read it.

Both data paths (the credential report, or the per-user calls when the report is denied) build this same snapshot;
`source` says which one did. Failed calls travel as `AwsCallError`s. The checks are pure: everything they need to
judge, including the observation time `now` and the key age limit, is in here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from shared.aws import AwsCallError

USER_TYPE = "AWS::IAM::User"
ROOT_TYPE = "AWS::IAM::Root"
ACCESS_KEY_TYPE = "AWS::IAM::AccessKey"
ACCOUNT_TYPE = "AWS::::Account"
ACCOUNT_RESOURCE = "account"
ROOT_RESOURCE = "root"
GLOBAL = "global"

# The default of `Settings.access_key_max_age_days`; collect() always passes the configured value.
DEFAULT_KEY_MAX_AGE_DAYS = 90

Source = Literal["credential_report", "per_user"]
RootSource = Literal["credential_report", "account_summary"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class AccessKey:
    """One access key of an IAM user.

    `number` is the credential report's numbering (1 or 2); on the per-user path the user's keys are numbered in
    CreateDate order, which is the same. `created` is CreateDate (the report's `access_key_<n>_last_rotated`), in
    whole seconds like the report. `last_used` is None when the key was never used (or when
    GetAccessKeyLastUsed failed: then `last_used_error` says why). Only active keys are judged.
    """

    number: int
    active: bool
    created: datetime
    last_used: datetime | None = None
    last_used_error: AwsCallError | None = None


@dataclass(frozen=True, slots=True)
class IamUser:
    """One IAM user (never the root user).

    `mfa_active` counts only MFA devices assigned to this user (the report's `mfa_active`, or ListMFADevices with
    UserName): an unassigned virtual device counts for nobody. It is meaningless when `mfa_error` is set.
    `console_password` is None when GetLoginProfile failed (then `login_profile_error` says why). `access_keys` is
    meaningless when `access_keys_error` is set (ListAccessKeys failed).
    """

    name: str
    arn: str
    created: datetime | None = None
    mfa_active: bool = False
    mfa_error: AwsCallError | None = None
    console_password: bool | None = False
    login_profile_error: AwsCallError | None = None
    access_keys: tuple[AccessKey, ...] = ()
    access_keys_error: AwsCallError | None = None

    @property
    def resource_id(self) -> str:
        return f"user/{self.name}"

    def key_resource_id(self, key: AccessKey) -> str:
        return f"user/{self.name}#key{key.number}"

    @property
    def has_mfa(self) -> bool | None:
        """Whether an MFA device is assigned; None when ListMFADevices failed."""
        return None if self.mfa_error is not None else self.mfa_active

    @property
    def active_keys(self) -> tuple[AccessKey, ...]:
        return tuple(key for key in self.access_keys if key.active)

    def details(self) -> dict[str, Any]:
        return {
            "user_name": self.name,
            "console_password": self.console_password,
            "mfa_active": self.has_mfa,
        }


@dataclass(frozen=True, slots=True)
class RootUser:
    """The account's root user: from the report's `<root_account>` row, or from GetAccountSummary.

    `active_access_keys` is the number of active root keys (credential report); GetAccountSummary only says whether
    root has access keys at all (`access_keys_present`), so there it is None. `error` is set when neither source
    could be read; then every other field is meaningless.
    """

    arn: str
    source: RootSource | None = None
    mfa_active: bool = False
    access_keys_present: bool = False
    active_access_keys: int | None = None
    error: AwsCallError | None = None


@dataclass(frozen=True, slots=True)
class IamSnapshot:
    """Every IAM user of the account, or `list_error` when the population is unknown (ListUsers, any page of it,
    failed); and the root user, when it was read (`root` is None only in hand-built snapshots with no root).

    `report_error` records why the credential report could not be used (the per-user path was taken instead).
    """

    users: tuple[IamUser, ...] = ()
    list_error: AwsCallError | None = None
    root: RootUser | None = None
    source: Source | None = None
    report_error: AwsCallError | None = None
    key_max_age_days: int = DEFAULT_KEY_MAX_AGE_DAYS
    now: datetime = field(default_factory=_utcnow)
