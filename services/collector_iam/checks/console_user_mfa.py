"""iam.console_user_mfa: every IAM user who can sign in to the console has MFA."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_iam.checks._common import account_error, user_error, user_fields
from services.collector_iam.snapshot import USER_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.console_user_mfa")
def console_user_mfa(snapshot: IamSnapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield account_error(snapshot.list_error)
        return
    for user in snapshot.users:
        if user.login_profile_error is not None:
            # Unknown whether the user can sign in: in scope until proven otherwise.
            yield user_error(snapshot, user, user.login_profile_error)
        elif not user.console_password:
            continue
        elif user.mfa_error is not None:
            yield user_error(snapshot, user, user.mfa_error)
        elif user.mfa_active:
            summary = f"{user.name} has a console password and an MFA device"
            yield Outcome.ok(user.resource_id, USER_TYPE, summary, **user_fields(snapshot, user))
        else:
            summary = f"{user.name} has a console password and no MFA device"
            yield Outcome.fail(user.resource_id, USER_TYPE, summary, **user_fields(snapshot, user))
