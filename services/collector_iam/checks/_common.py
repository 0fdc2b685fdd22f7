"""Helpers the IAM checks share: the outcome fields of users, keys and the root user. Pure."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta
from typing import Any

from services.collector_iam.snapshot import (
    ACCESS_KEY_TYPE,
    ACCOUNT_RESOURCE,
    ACCOUNT_TYPE,
    GLOBAL,
    ROOT_RESOURCE,
    ROOT_TYPE,
    USER_TYPE,
    AccessKey,
    IamSnapshot,
    IamUser,
    RootUser,
)
from shared.aws import AwsCallError
from shared.checks import Outcome
from shared.permissions import iam_action

REPORT_ACTIONS = (iam_action("iam", "GenerateCredentialReport"), iam_action("iam", "GetCredentialReport"))


def account_error(err: AwsCallError) -> Outcome:
    """The user population is unknown: one account-level ERROR, never a smaller PASS."""
    return Outcome.error(ACCOUNT_RESOURCE, ACCOUNT_TYPE, err, region=GLOBAL)


def user_fields(snapshot: IamSnapshot, user: IamUser) -> dict[str, Any]:
    return {"resource_arn": user.arn, "region": GLOBAL, "details": {**user.details(), "source": snapshot.source}}


def user_error(snapshot: IamSnapshot, user: IamUser, err: AwsCallError) -> Outcome:
    return Outcome.error(user.resource_id, USER_TYPE, err, **user_fields(snapshot, user))


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def days(delta: timedelta) -> int:
    """Whole days (a negative delta, from clock skew, counts as 0)."""
    return max(delta.days, 0)


def key_fields(snapshot: IamSnapshot, user: IamUser, key: AccessKey) -> dict[str, Any]:
    """Fields of a key's outcome: keys have no ARN of their own, so the owner's ARN is given."""
    details = {
        "user_name": user.name,
        "key": key.number,
        "created": iso(key.created),
        "age_days": days(snapshot.now - key.created),
        "last_used": iso(key.last_used),
        "max_age_days": snapshot.key_max_age_days,
        "source": snapshot.source,
    }
    return {"resource_arn": user.arn, "region": GLOBAL, "details": details}


def key_error(snapshot: IamSnapshot, user: IamUser, key: AccessKey, err: AwsCallError) -> Outcome:
    return Outcome.error(user.key_resource_id(key), ACCESS_KEY_TYPE, err, **key_fields(snapshot, user, key))


def root_fields(root: RootUser) -> dict[str, Any]:
    return {"resource_arn": root.arn, "region": GLOBAL}


def root_error(snapshot: IamSnapshot, root: RootUser, err: AwsCallError) -> Outcome:
    """Root could not be read. When the credential report was unavailable too, its actions are named as the other
    way to grant (either source answers the root checks)."""
    details: dict[str, Any] = {}
    if snapshot.report_error is not None:
        details["alternative_permissions"] = list(REPORT_ACTIONS)
        details["credential_report_error"] = snapshot.report_error.describe()
    elif snapshot.source == "credential_report":
        details["note"] = "the credential report has no <root_account> row"
    outcome = Outcome.error(ROOT_RESOURCE, ROOT_TYPE, err, details=details, **root_fields(root))
    if snapshot.report_error is None:
        return outcome
    summary = f"{outcome.summary} (or grant {' and '.join(REPORT_ACTIONS)} to read the credential report)"
    return dataclasses.replace(outcome, summary=summary)
