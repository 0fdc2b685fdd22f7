"""The IAM checks and summary on hand-built snapshots: no AWS, no NATS."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from services.collector_iam.app import summarize
from services.collector_iam.checks import (
    CHECKS,
    access_key_rotated,
    access_key_unused,
    console_user_mfa,
    root_access_keys,
    root_mfa,
    user_mfa,
    user_two_active_keys,
)
from services.collector_iam.snapshot import AccessKey, IamSnapshot, IamUser, RootUser, Source
from shared.aws import AwsCallError
from shared.checks import Outcome, RunContext, evaluate
from shared.controls import check_info
from shared.messages import Status

ARN = "arn:aws:iam::123456789012:user/"
ROOT_ARN = "arn:aws:iam::123456789012:root"
NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SECOND = timedelta(seconds=1)


def denied(operation: str) -> AwsCallError:
    return AwsCallError("iam", operation, "AccessDenied", "not authorized", f"iam:{operation}", False)


DENIED_MFA = denied("ListMFADevices")
DENIED_LOGIN = denied("GetLoginProfile")
DENIED_LIST = denied("ListUsers")
DENIED_KEYS = denied("ListAccessKeys")
DENIED_LAST_USED = denied("GetAccessKeyLastUsed")
DENIED_SUMMARY = denied("GetAccountSummary")
DENIED_REPORT = denied("GenerateCredentialReport")

USER_CHECKS = (user_mfa, console_user_mfa, access_key_rotated, access_key_unused, user_two_active_keys)
ROOT_CHECKS = (root_mfa, root_access_keys)


def user(
    name: str,
    *,
    console: bool | None,
    mfa: bool = False,
    mfa_error: AwsCallError | None = None,
    login_profile_error: AwsCallError | None = None,
    keys: tuple[AccessKey, ...] = (),
    keys_error: AwsCallError | None = None,
) -> IamUser:
    return IamUser(
        name=name,
        arn=ARN + name,
        mfa_active=mfa,
        mfa_error=mfa_error,
        console_password=console,
        login_profile_error=login_profile_error,
        access_keys=keys,
        access_keys_error=keys_error,
    )


def key(
    number: int,
    *,
    age: timedelta,
    used: timedelta | None = None,
    active: bool = True,
    last_used_error: AwsCallError | None = None,
) -> AccessKey:
    """A key created `age` before NOW, last used `used` before NOW (None: never used)."""
    return AccessKey(
        number=number,
        active=active,
        created=NOW - age,
        last_used=None if used is None else NOW - used,
        last_used_error=last_used_error,
    )


def keyed(*users: IamUser, max_age: int = 90, root: RootUser | None = None) -> IamSnapshot:
    return IamSnapshot(users=users, root=root, source="per_user", key_max_age_days=max_age, now=NOW)


def by_resource(outcomes: list[Outcome]) -> dict[str, Outcome]:
    result = {o.resource_id: o for o in outcomes}
    assert len(result) == len(outcomes), "one outcome per resource"
    return result


def states(outcomes: list[Outcome]) -> dict[str, Status]:
    return {k: o.status for k, o in by_resource(outcomes).items()}


ACCOUNT = IamSnapshot(
    users=(
        user("alice", console=True, mfa=True),
        user("bob", console=True),
        user("carol", console=False, mfa=True),
        user("dave", console=False),
    ),
    source="per_user",
)


# --- MFA of IAM users ---------------------------------------------------------------------------------


def test_user_mfa_pass_and_fail() -> None:
    out = by_resource(list(user_mfa(ACCOUNT)))
    assert {k: o.status for k, o in out.items()} == {
        "user/alice": Status.PASS,
        "user/bob": Status.FAIL,
        "user/carol": Status.PASS,
        "user/dave": Status.FAIL,
    }
    bob = out["user/bob"]
    assert bob.summary == "bob has no MFA device (console password: yes)"
    assert out["user/dave"].summary == "dave has no MFA device (console password: no)"
    assert out["user/carol"].summary == "carol has an MFA device (console password: no)"
    assert bob.resource_type == "AWS::IAM::User"
    assert bob.resource_arn == ARN + "bob"
    assert bob.region == "global"
    assert bob.details == {"user_name": "bob", "console_password": True, "mfa_active": False, "source": "per_user"}
    assert out["user/carol"].details["mfa_active"] is True


def test_console_user_mfa_judges_only_console_users() -> None:
    out = by_resource(list(console_user_mfa(ACCOUNT)))
    assert {k: o.status for k, o in out.items()} == {"user/alice": Status.PASS, "user/bob": Status.FAIL}
    assert out["user/bob"].summary == "bob has a console password and no MFA device"
    assert out["user/alice"].summary == "alice has a console password and an MFA device"
    assert out["user/alice"].details == {
        "user_name": "alice",
        "console_password": True,
        "mfa_active": True,
        "source": "per_user",
    }


def test_unassigned_virtual_mfa_device_counts_for_nobody() -> None:
    # An unassigned virtual device is never "assigned" to a user (ListMFADevices per user excludes it, the report's
    # mfa_active ignores it), so a snapshot with such a device in the account still has erin without MFA: she fails.
    snapshot = IamSnapshot(users=(user("erin", console=True),))
    assert [o.status for o in user_mfa(snapshot)] == [Status.FAIL]
    assert [o.status for o in console_user_mfa(snapshot)] == [Status.FAIL]


def test_list_users_failure_is_one_account_error_per_user_check_and_root_is_still_judged() -> None:
    root = RootUser(arn=ROOT_ARN, source="account_summary", mfa_active=True)
    snapshot = IamSnapshot(list_error=DENIED_LIST, root=root, now=NOW)
    for chk in USER_CHECKS:
        outcomes = list(chk(snapshot))
        assert len(outcomes) == 1, chk.id
        (o,) = outcomes
        assert (o.status, o.resource_id, o.region) == (Status.ERROR, "account", "global")
        assert "iam:ListUsers" in o.summary
        assert o.details["required_permission"] == "iam:ListUsers"
        assert o.details["api_call"] == "iam:ListUsers"
    assert [o.status for chk in ROOT_CHECKS for o in chk(snapshot)] == [Status.PASS, Status.PASS]
    assert {chk.id for chk in (*USER_CHECKS, *ROOT_CHECKS)} == {chk.id for chk in CHECKS}


def test_mfa_call_failure_is_error_for_that_user_only() -> None:
    snapshot = IamSnapshot(users=(user("frank", console=True, mfa_error=DENIED_MFA), user("gina", console=True)))
    mfa = by_resource(list(user_mfa(snapshot)))
    assert mfa["user/frank"].status is Status.ERROR
    assert mfa["user/frank"].details["required_permission"] == "iam:ListMFADevices"
    assert mfa["user/frank"].details["mfa_active"] is None
    assert mfa["user/gina"].status is Status.FAIL
    console = by_resource(list(console_user_mfa(snapshot)))
    assert console["user/frank"].status is Status.ERROR
    assert console["user/gina"].status is Status.FAIL


def test_login_profile_failure_errors_the_console_check_but_not_the_mfa_check() -> None:
    snapshot = IamSnapshot(
        users=(
            user("hank", console=None, login_profile_error=DENIED_LOGIN),
            user("ivy", console=None, mfa=True, login_profile_error=DENIED_LOGIN),
        )
    )
    mfa = by_resource(list(user_mfa(snapshot)))
    assert mfa["user/hank"].status is Status.FAIL
    assert mfa["user/hank"].summary == "hank has no MFA device (console password: unknown)"
    assert mfa["user/ivy"].status is Status.PASS
    console = by_resource(list(console_user_mfa(snapshot)))
    # Whether they can sign in is unknown: ERROR, never silently out of scope.
    assert {k: o.status for k, o in console.items()} == {"user/hank": Status.ERROR, "user/ivy": Status.ERROR}
    assert console["user/hank"].details["required_permission"] == "iam:GetLoginProfile"


def test_no_users_and_no_root_no_findings() -> None:
    assert [list(chk(IamSnapshot())) for chk in CHECKS] == [[] for _ in CHECKS]


# --- the root user -----------------------------------------------------------------------------------


def root_snapshot(
    root: RootUser, source: Source | None = None, report_error: AwsCallError | None = None
) -> IamSnapshot:
    return IamSnapshot(root=root, now=NOW, source=source, report_error=report_error)


def test_root_mfa_pass_and_fail() -> None:
    (ok,) = root_mfa(root_snapshot(RootUser(arn=ROOT_ARN, source="credential_report", mfa_active=True)))
    assert (ok.status, ok.resource_id, ok.resource_arn, ok.resource_type) == (
        Status.PASS,
        "root",
        ROOT_ARN,
        "AWS::IAM::Root",
    )
    assert ok.region == "global"
    assert ok.details == {"mfa_active": True, "source": "credential_report"}
    (bad,) = root_mfa(root_snapshot(RootUser(arn=ROOT_ARN, source="account_summary", mfa_active=False)))
    assert (bad.status, bad.summary) == (Status.FAIL, "the root user has no MFA device")
    assert bad.details["source"] == "account_summary"


@pytest.mark.parametrize(
    ("root", "status", "summary"),
    [
        (
            RootUser(arn=ROOT_ARN, source="credential_report", access_keys_present=True, active_access_keys=2),
            Status.FAIL,
            "the root user has 2 active access keys",
        ),
        (
            RootUser(arn=ROOT_ARN, source="credential_report", access_keys_present=True, active_access_keys=1),
            Status.FAIL,
            "the root user has 1 active access key",
        ),
        (
            RootUser(arn=ROOT_ARN, source="credential_report", access_keys_present=True, active_access_keys=0),
            Status.PASS,
            "the root user has no active access key (an inactive one remains)",
        ),
        (
            RootUser(arn=ROOT_ARN, source="credential_report", access_keys_present=False, active_access_keys=0),
            Status.PASS,
            "the root user has no access keys",
        ),
        (
            RootUser(arn=ROOT_ARN, source="account_summary", access_keys_present=True),
            Status.FAIL,
            "the root user has access keys (GetAccountSummary does not say whether they are active)",
        ),
        (
            RootUser(arn=ROOT_ARN, source="account_summary", access_keys_present=False),
            Status.PASS,
            "the root user has no access keys",
        ),
    ],
)
def test_root_access_keys(root: RootUser, status: Status, summary: str) -> None:
    (o,) = root_access_keys(root_snapshot(root))
    assert (o.status, o.summary, o.resource_id, o.resource_arn) == (status, summary, "root", ROOT_ARN)
    assert o.details == {
        "access_keys_present": root.access_keys_present,
        "active_access_keys": root.active_access_keys,
        "source": root.source,
    }


def test_root_unreadable_is_error_naming_get_account_summary_and_the_report_actions() -> None:
    root = RootUser(arn=ROOT_ARN, error=DENIED_SUMMARY)
    snapshot = root_snapshot(root, source="per_user", report_error=DENIED_REPORT)
    for chk in ROOT_CHECKS:
        (o,) = chk(snapshot)
        assert (o.status, o.resource_id, o.resource_arn) == (Status.ERROR, "root", ROOT_ARN)
        assert o.summary == (
            "GetAccountSummary was denied (AccessDenied): grant iam:GetAccountSummary "
            "(or grant iam:GenerateCredentialReport and iam:GetCredentialReport to read the credential report)"
        )
        assert o.details["required_permission"] == "iam:GetAccountSummary"
        assert o.details["api_call"] == "iam:GetAccountSummary"
        assert o.details["alternative_permissions"] == ["iam:GenerateCredentialReport", "iam:GetCredentialReport"]
        assert o.details["credential_report_error"] == (
            "GenerateCredentialReport was denied (AccessDenied): grant iam:GenerateCredentialReport"
        )


def test_root_missing_from_a_readable_report_and_summary_denied_is_error_without_report_advice() -> None:
    snapshot = root_snapshot(RootUser(arn=ROOT_ARN, error=DENIED_SUMMARY), source="credential_report")
    for chk in ROOT_CHECKS:
        (o,) = chk(snapshot)
        assert o.status is Status.ERROR
        assert o.summary == "GetAccountSummary was denied (AccessDenied): grant iam:GetAccountSummary"
        assert o.details["note"] == "the credential report has no <root_account> row"
        assert "alternative_permissions" not in o.details


def test_root_is_never_judged_as_a_user() -> None:
    root = RootUser(arn=ROOT_ARN, source="credential_report", mfa_active=True, access_keys_present=True)
    snapshot = keyed(user("zoe", console=True), root=root)
    findings = evaluate(CHECKS, snapshot, RunContext("run-" + "0" * 32, "123456789012", NOW, "test"))
    assert {(f.check_id, f.resource_id) for f in findings} == {
        ("iam.user_mfa", "user/zoe"),
        ("iam.console_user_mfa", "user/zoe"),
        ("iam.root_mfa", "root"),
        ("iam.root_access_keys", "root"),
    }
    summary = summarize(snapshot)
    assert summary.metrics == {"root_mfa": 1.0, "mfa_percent": 0.0, "console_mfa_percent": 0.0}
    assert summary.population == {"users": 1, "console_users": 1, "active_access_keys": 0}


# --- access keys ---------------------------------------------------------------------------------------


def test_access_key_rotated_boundary_at_exactly_the_limit() -> None:
    snapshot = keyed(
        user("old", console=False, keys=(key(1, age=90 * DAY + SECOND), key(2, age=90 * DAY))),
        user("new", console=False, keys=(key(1, age=3 * DAY),)),
    )
    out = by_resource(list(access_key_rotated(snapshot)))
    assert {k: o.status for k, o in out.items()} == {
        "user/old#key1": Status.FAIL,
        "user/old#key2": Status.PASS,  # exactly 90 days: not older than 90 days
        "user/new#key1": Status.PASS,
    }
    fail = out["user/old#key1"]
    assert fail.summary == "old's access key 1 was created 90 days ago (2025-03-03): older than 90 days"
    assert fail.resource_type == "AWS::IAM::AccessKey"
    assert fail.resource_arn == ARN + "old"
    assert fail.details == {
        "user_name": "old",
        "key": 1,
        "created": "2025-03-03T11:59:59+00:00",
        "age_days": 90,
        "last_used": None,
        "max_age_days": 90,
        "source": "per_user",
    }
    assert out["user/old#key2"].summary == "old's access key 2 was created 90 days ago (2025-03-03): within 90 days"


def test_access_key_rotated_uses_the_limit_carried_by_the_snapshot() -> None:
    keys = (key(1, age=31 * DAY),)
    assert states(list(access_key_rotated(keyed(user("u", console=False, keys=keys), max_age=30)))) == {
        "user/u#key1": Status.FAIL
    }
    assert states(list(access_key_rotated(keyed(user("u", console=False, keys=keys), max_age=90)))) == {
        "user/u#key1": Status.PASS
    }


def test_inactive_keys_are_ignored_by_every_key_check() -> None:
    ancient = key(1, age=900 * DAY, active=False)
    snapshot = keyed(user("ina", console=False, keys=(ancient,)))
    for chk in (access_key_rotated, access_key_unused, user_two_active_keys):
        assert list(chk(snapshot)) == [], chk.id
    assert summarize(snapshot).population["active_access_keys"] == 0


def test_access_key_unused_last_use_boundary() -> None:
    snapshot = keyed(
        user(
            "ursula",
            console=False,
            keys=(key(1, age=400 * DAY, used=90 * DAY), key(2, age=400 * DAY, used=90 * DAY + SECOND)),
        ),
        user("busy", console=False, keys=(key(1, age=400 * DAY, used=DAY),)),
    )
    out = by_resource(list(access_key_unused(snapshot)))
    assert {k: o.status for k, o in out.items()} == {
        "user/ursula#key1": Status.PASS,  # last used exactly 90 days ago
        "user/ursula#key2": Status.FAIL,
        "user/busy#key1": Status.PASS,
    }
    assert out["user/ursula#key2"].summary == (
        "ursula's access key 2 was last used 90 days ago (2025-03-03): unused for more than 90 days"
    )
    assert out["user/busy#key1"].summary == "busy's access key 1 was last used 1 days ago (2025-05-31): within 90 days"
    assert out["user/busy#key1"].details["days_since_use"] == 1
    assert out["user/busy#key1"].details["last_used"] == "2025-05-31T12:00:00+00:00"
    # An old key in daily use is unused-PASS but rotation-FAIL: the two checks judge different things.
    assert states(list(access_key_rotated(snapshot)))["user/busy#key1"] is Status.FAIL


def test_access_key_never_used_fails_only_once_older_than_the_limit() -> None:
    snapshot = keyed(
        user(
            "nev",
            console=False,
            keys=(key(1, age=90 * DAY + SECOND), key(2, age=90 * DAY)),
        ),
        user("fresh", console=False, keys=(key(1, age=2 * DAY),)),
    )
    out = by_resource(list(access_key_unused(snapshot)))
    assert {k: o.status for k, o in out.items()} == {
        "user/nev#key1": Status.FAIL,
        "user/nev#key2": Status.PASS,
        "user/fresh#key1": Status.PASS,
    }
    assert out["user/nev#key1"].summary == (
        "nev's access key 1 was never used; it was created 90 days ago (2025-03-03): unused for more than 90 days"
    )
    assert out["user/fresh#key1"].summary == (
        "fresh's access key 1 was never used; it was created 2 days ago (2025-05-30): within 90 days"
    )
    assert out["user/fresh#key1"].details["days_since_use"] is None
    assert out["user/fresh#key1"].details["last_used"] is None


def test_key_call_failures_are_errors_for_what_they_affect() -> None:
    snapshot = keyed(
        user("nokeys", console=False, keys_error=DENIED_KEYS),
        user(
            "lastused",
            console=False,
            keys=(key(1, age=DAY, last_used_error=DENIED_LAST_USED), key(2, age=DAY, used=DAY)),
        ),
    )
    rotated = by_resource(list(access_key_rotated(snapshot)))
    assert {k: o.status for k, o in rotated.items()} == {
        "user/nokeys": Status.ERROR,
        "user/lastused#key1": Status.PASS,  # its age is known; only its last use is not
        "user/lastused#key2": Status.PASS,
    }
    assert rotated["user/nokeys"].details["required_permission"] == "iam:ListAccessKeys"
    unused = by_resource(list(access_key_unused(snapshot)))
    assert {k: o.status for k, o in unused.items()} == {
        "user/nokeys": Status.ERROR,
        "user/lastused#key1": Status.ERROR,
        "user/lastused#key2": Status.PASS,
    }
    assert unused["user/lastused#key1"].details["required_permission"] == "iam:GetAccessKeyLastUsed"
    assert unused["user/lastused#key1"].resource_type == "AWS::IAM::AccessKey"
    two = states(list(user_two_active_keys(snapshot)))
    assert two == {"user/nokeys": Status.ERROR, "user/lastused": Status.FAIL}
    # The user's other checks are unaffected by the key failures.
    assert states(list(user_mfa(snapshot))) == {"user/nokeys": Status.FAIL, "user/lastused": Status.FAIL}
    # Active keys cannot be counted while one user's keys are unknown.
    assert "active_access_keys" not in summarize(snapshot).population


def test_user_two_active_keys() -> None:
    snapshot = keyed(
        user("one", console=False, keys=(key(1, age=DAY),)),
        user("two", console=False, keys=(key(1, age=DAY), key(2, age=DAY))),
        user("rotated", console=False, keys=(key(1, age=DAY, active=False), key(2, age=DAY))),
        user("none", console=False),
        user("idle", console=False, keys=(key(1, age=DAY, active=False),)),
    )
    out = by_resource(list(user_two_active_keys(snapshot)))
    assert {k: o.status for k, o in out.items()} == {
        "user/one": Status.PASS,
        "user/two": Status.FAIL,
        "user/rotated": Status.PASS,
    }
    assert out["user/two"].summary == "two has 2 active access keys"
    assert out["user/one"].summary == "one has 1 active access key"
    assert out["user/two"].resource_type == "AWS::IAM::User"
    assert out["user/two"].details == {
        "user_name": "two",
        "console_password": False,
        "mfa_active": False,
        "source": "per_user",
        "active_access_keys": 2,
    }
    assert summarize(snapshot).population["active_access_keys"] == 4


def test_key_resource_ids_are_unique_per_key() -> None:
    snapshot = keyed(user("dup", console=False, keys=(key(1, age=DAY), key(2, age=DAY))))
    ctx = RunContext("run-" + "0" * 32, "123456789012", NOW, "test")
    findings = [f for f in evaluate(CHECKS, snapshot, ctx) if f.check_id == "iam.access_key_rotated"]
    assert [f.resource_id for f in findings] == ["user/dup#key1", "user/dup#key2"]
    assert len({f.finding_id for f in findings}) == 2


# --- findings and summary ---------------------------------------------------------------------------


def test_evaluate_builds_findings_with_catalogue_fields() -> None:
    ctx = RunContext("run-" + "0" * 32, "123456789012", datetime(2025, 1, 1, tzinfo=UTC), "test")
    findings = evaluate(CHECKS, ACCOUNT, ctx)
    assert len(findings) == 6
    bob = next(f for f in findings if f.check_id == "iam.console_user_mfa" and f.resource_id == "user/bob")
    assert bob.control.value == "CC6.1"
    assert bob.severity.value == "critical"
    assert bob.remediation
    assert len({f.finding_id for f in findings}) == 6


def test_remediation_comes_from_the_catalogue_and_only_for_non_pass() -> None:
    root = RootUser(arn=ROOT_ARN, source="credential_report", active_access_keys=1, access_keys_present=True)
    snapshot = keyed(
        user("k", console=True, keys=(key(1, age=400 * DAY), key(2, age=DAY, used=DAY))),
        root=root,
    )
    findings = evaluate(CHECKS, snapshot, RunContext("run-" + "0" * 32, "123456789012", NOW, "test"))
    assert findings
    for f in findings:
        expected = check_info(f.check_id).remediation if f.status is not Status.PASS else ""
        assert f.remediation == expected, (f.check_id, f.resource_id)
    assert {f.check_id for f in findings} == {chk.id for chk in CHECKS}


def test_summarize_counts_and_percentages() -> None:
    summary = summarize(ACCOUNT)
    assert summary.population == {"users": 4, "console_users": 2, "active_access_keys": 0}
    assert summary.metrics == {"mfa_percent": 50.0, "console_mfa_percent": 50.0}
    assert summary.regions == ["global"]
    thirds = IamSnapshot(
        users=(user("a1", console=False, mfa=True), user("a2", console=False), user("a3", console=False))
    )
    assert summarize(thirds).metrics == {"mfa_percent": 33.3}


def test_summarize_omits_what_is_unknown() -> None:
    assert summarize(IamSnapshot()).metrics == {}
    assert summarize(IamSnapshot()).population == {"users": 0, "console_users": 0, "active_access_keys": 0}
    assert summarize(IamSnapshot(list_error=DENIED_LIST)).population == {}
    unreadable_root = IamSnapshot(root=RootUser(arn=ROOT_ARN, error=DENIED_SUMMARY))
    assert "root_mfa" not in summarize(unreadable_root).metrics
    no_root_mfa = IamSnapshot(list_error=DENIED_LIST, root=RootUser(arn=ROOT_ARN, source="account_summary"))
    assert summarize(no_root_mfa).metrics == {"root_mfa": 0.0}
    assert summarize(no_root_mfa).population == {}
