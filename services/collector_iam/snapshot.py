"""The typed state of one account's IAM users, as `collect` read it. Failed calls travel as `AwsCallError`s."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.aws import AwsCallError

USER_TYPE = "AWS::IAM::User"
ACCOUNT_TYPE = "AWS::::Account"
ACCOUNT_RESOURCE = "account"
GLOBAL = "global"


@dataclass(frozen=True, slots=True)
class IamUser:
    """One IAM user. `mfa_devices` holds only devices assigned to this user (ListMFADevices with UserName).

    `console_password` is None when GetLoginProfile failed (then `login_profile_error` says why); `mfa_devices` is
    meaningless when `mfa_error` is set.
    """

    name: str
    arn: str
    user_id: str
    created: datetime | None = None
    mfa_devices: tuple[str, ...] = ()
    mfa_error: AwsCallError | None = None
    console_password: bool | None = False
    login_profile_error: AwsCallError | None = None

    @property
    def resource_id(self) -> str:
        return f"user/{self.name}"

    @property
    def has_mfa(self) -> bool | None:
        """Whether an MFA device is assigned; None when ListMFADevices failed."""
        return None if self.mfa_error is not None else bool(self.mfa_devices)

    def details(self) -> dict[str, Any]:
        return {
            "user_name": self.name,
            "console_password": self.console_password,
            "mfa_devices": None if self.mfa_error is not None else len(self.mfa_devices),
        }


@dataclass(frozen=True, slots=True)
class IamSnapshot:
    """Every IAM user of the account, or `list_error` when ListUsers (any page) failed and the population is unknown."""

    users: tuple[IamUser, ...] = ()
    list_error: AwsCallError | None = None
