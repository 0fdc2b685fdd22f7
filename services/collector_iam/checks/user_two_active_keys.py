"""iam.user_two_active_keys: an IAM user with an active access key has only one (two only while rotating)."""

from __future__ import annotations

from collections.abc import Iterator

from services.collector_iam.checks._common import account_error, user_error, user_fields
from services.collector_iam.snapshot import USER_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.user_two_active_keys")
def user_two_active_keys(snapshot: IamSnapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield account_error(snapshot.list_error)
        return
    for user in snapshot.users:
        if user.access_keys_error is not None:
            # Unknown whether the user has keys: in scope until proven otherwise.
            yield user_error(snapshot, user, user.access_keys_error)
            continue
        active = len(user.active_keys)
        if not active:
            continue  # inactive keys are never judged (the credential report may not even show them)
        fields = user_fields(snapshot, user)
        fields["details"]["active_access_keys"] = active
        summary = f"{user.name} has {active} active access key{'s' if active > 1 else ''}"
        if active > 1:
            yield Outcome.fail(user.resource_id, USER_TYPE, summary, **fields)
        else:
            yield Outcome.ok(user.resource_id, USER_TYPE, summary, **fields)
