"""iam.user_mfa: every IAM user has an MFA device assigned."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_iam.snapshot import ACCOUNT_RESOURCE, ACCOUNT_TYPE, GLOBAL, USER_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.user_mfa")
def user_mfa(snapshot: IamSnapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, snapshot.list_error, region=GLOBAL)
        return
    for user in snapshot.users:
        fields = {"resource_arn": user.arn, "region": GLOBAL, "details": user.details()}
        if user.mfa_error is not None:
            yield Outcome.error(user.resource_id, USER_TYPE, user.mfa_error, **fields)
            continue
        console = {True: "yes", False: "no", None: "unknown"}[user.console_password]
        if user.mfa_devices:
            count = len(user.mfa_devices)
            summary = f"{user.name} has {count} MFA device{'s' if count > 1 else ''} (console password: {console})"
            yield Outcome.ok(user.resource_id, USER_TYPE, summary, **fields)
        else:
            summary = f"{user.name} has no MFA device (console password: {console})"
            yield Outcome.fail(user.resource_id, USER_TYPE, summary, **fields)
