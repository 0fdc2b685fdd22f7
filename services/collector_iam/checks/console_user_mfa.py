"""iam.console_user_mfa: every IAM user who can sign in to the console has MFA."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_iam.snapshot import ACCOUNT_RESOURCE, ACCOUNT_TYPE, GLOBAL, USER_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.console_user_mfa")
def console_user_mfa(snapshot: IamSnapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, snapshot.list_error, region=GLOBAL)
        return
    for user in snapshot.users:
        fields = {"resource_arn": user.arn, "region": GLOBAL, "details": user.details()}
        if user.login_profile_error is not None:
            # Unknown whether the user can sign in: in scope until proven otherwise.
            yield Outcome.error(user.resource_id, USER_TYPE, user.login_profile_error, **fields)
        elif not user.console_password:
            continue
        elif user.mfa_error is not None:
            yield Outcome.error(user.resource_id, USER_TYPE, user.mfa_error, **fields)
        elif user.mfa_devices:
            summary = f"{user.name} has a console password and {len(user.mfa_devices)} MFA device(s)"
            yield Outcome.ok(user.resource_id, USER_TYPE, summary, **fields)
        else:
            summary = f"{user.name} has a console password and no MFA device"
            yield Outcome.fail(user.resource_id, USER_TYPE, summary, **fields)
