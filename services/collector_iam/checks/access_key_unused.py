"""iam.access_key_unused: every active access key of an IAM user was used within `key_max_age_days` (a key never
used fails once it is older than that)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from services.collector_iam.checks._common import account_error, days, key_error, key_fields, user_error
from services.collector_iam.snapshot import ACCESS_KEY_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.access_key_unused")
def access_key_unused(snapshot: IamSnapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield account_error(snapshot.list_error)
        return
    limit = snapshot.key_max_age_days
    for user in snapshot.users:
        if user.access_keys_error is not None:
            yield user_error(snapshot, user, user.access_keys_error)
            continue
        for key in user.active_keys:
            if key.last_used_error is not None:
                yield key_error(snapshot, user, key, key.last_used_error)
                continue
            resource_id, fields = user.key_resource_id(key), key_fields(snapshot, user, key)
            name = f"{user.name}'s access key {key.number}"
            if key.last_used is not None:
                idle = snapshot.now - key.last_used
                fields["details"]["days_since_use"] = days(idle)
                said = f"{name} was last used {days(idle)} days ago ({key.last_used:%Y-%m-%d})"
            else:
                idle = snapshot.now - key.created
                fields["details"]["days_since_use"] = None
                said = f"{name} was never used; it was created {days(idle)} days ago ({key.created:%Y-%m-%d})"
            if idle > timedelta(days=limit):
                yield Outcome.fail(resource_id, ACCESS_KEY_TYPE, f"{said}: unused for more than {limit} days", **fields)
            else:
                yield Outcome.ok(resource_id, ACCESS_KEY_TYPE, f"{said}: within {limit} days", **fields)
