"""iam.user_mfa: every IAM user has an MFA device assigned (the root user is judged by iam.root_mfa)."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_iam.checks._common import account_error, user_error, user_fields
from services.collector_iam.snapshot import USER_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.user_mfa")
def user_mfa(snapshot: IamSnapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield account_error(snapshot.list_error)
        return
    for user in snapshot.users:
        if user.mfa_error is not None:
            yield user_error(snapshot, user, user.mfa_error)
            continue
        fields = user_fields(snapshot, user)
        console = {True: "yes", False: "no", None: "unknown"}[user.console_password]
        if user.mfa_active:
            summary = f"{user.name} has an MFA device (console password: {console})"
            yield Outcome.ok(user.resource_id, USER_TYPE, summary, **fields)
        else:
            summary = f"{user.name} has no MFA device (console password: {console})"
            yield Outcome.fail(user.resource_id, USER_TYPE, summary, **fields)
