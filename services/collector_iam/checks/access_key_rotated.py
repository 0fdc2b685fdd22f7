"""iam.access_key_rotated: every active access key of an IAM user is at most `key_max_age_days` old."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

from services.collector_iam.checks._common import account_error, days, key_fields, user_error
from services.collector_iam.snapshot import ACCESS_KEY_TYPE, IamSnapshot
from shared.checks import Outcome, check


@check("iam.access_key_rotated")
def access_key_rotated(snapshot: IamSnapshot) -> Iterator[Outcome]:
    if snapshot.list_error is not None:
        yield account_error(snapshot.list_error)
        return
    limit = snapshot.key_max_age_days
    for user in snapshot.users:
        if user.access_keys_error is not None:
            yield user_error(snapshot, user, user.access_keys_error)
            continue
        for key in user.active_keys:
            age = snapshot.now - key.created
            created = f"{user.name}'s access key {key.number} was created {days(age)} days ago ({key.created:%Y-%m-%d})"
            resource_id, fields = user.key_resource_id(key), key_fields(snapshot, user, key)
            if age > timedelta(days=limit):
                yield Outcome.fail(resource_id, ACCESS_KEY_TYPE, f"{created}: older than {limit} days", **fields)
            else:
                yield Outcome.ok(resource_id, ACCESS_KEY_TYPE, f"{created}: within {limit} days", **fields)
