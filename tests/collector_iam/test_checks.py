"""The IAM checks and summary on hand-built snapshots: no AWS, no NATS."""

from __future__ import annotations

from datetime import UTC, datetime

from services.collector_iam.app import summarize
from services.collector_iam.checks import CHECKS, console_user_mfa, user_mfa
from services.collector_iam.snapshot import IamSnapshot, IamUser
from shared.aws import AwsCallError
from shared.checks import Outcome, RunContext, evaluate
from shared.messages import Status

ARN = "arn:aws:iam::123456789012:user/"
DENIED_MFA = AwsCallError("iam", "ListMFADevices", "AccessDenied", "not authorized", "iam:ListMFADevices", False)
DENIED_LOGIN = AwsCallError("iam", "GetLoginProfile", "AccessDenied", "not authorized", "iam:GetLoginProfile", False)
DENIED_LIST = AwsCallError("iam", "ListUsers", "AccessDenied", "not authorized", "iam:ListUsers", False)


def user(
    name: str,
    *,
    console: bool | None,
    mfa: tuple[str, ...] = (),
    mfa_error: AwsCallError | None = None,
    login_profile_error: AwsCallError | None = None,
) -> IamUser:
    return IamUser(
        name=name,
        arn=ARN + name,
        user_id=f"AIDA{name.upper():0>16}",
        mfa_devices=mfa,
        mfa_error=mfa_error,
        console_password=console,
        login_profile_error=login_profile_error,
    )


def by_resource(outcomes: list[Outcome]) -> dict[str, Outcome]:
    result = {o.resource_id: o for o in outcomes}
    assert len(result) == len(outcomes), "one outcome per resource"
    return result


ACCOUNT = IamSnapshot(
    users=(
        user("alice", console=True, mfa=("arn:aws:iam::123456789012:mfa/alice",)),
        user("bob", console=True),
        user("carol", console=False, mfa=("arn:aws:iam::123456789012:mfa/carol", "arn:aws:iam::123456789012:u2f/c")),
        user("dave", console=False),
    )
)


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
    assert out["user/carol"].summary == "carol has 2 MFA devices (console password: no)"
    assert bob.resource_type == "AWS::IAM::User"
    assert bob.resource_arn == ARN + "bob"
    assert bob.region == "global"
    assert bob.details == {"user_name": "bob", "console_password": True, "mfa_devices": 0}
    assert out["user/carol"].details["mfa_devices"] == 2


def test_console_user_mfa_judges_only_console_users() -> None:
    out = by_resource(list(console_user_mfa(ACCOUNT)))
    assert {k: o.status for k, o in out.items()} == {"user/alice": Status.PASS, "user/bob": Status.FAIL}
    assert "no MFA" in out["user/bob"].summary
    assert out["user/alice"].details == {"user_name": "alice", "console_password": True, "mfa_devices": 1}


def test_unassigned_virtual_mfa_device_counts_for_nobody() -> None:
    # An unassigned virtual device never appears in a user's devices (ListMFADevices per user excludes it), so a
    # snapshot with such a device in the account still has erin without MFA: she fails.
    snapshot = IamSnapshot(users=(user("erin", console=True),))
    assert [o.status for o in user_mfa(snapshot)] == [Status.FAIL]
    assert [o.status for o in console_user_mfa(snapshot)] == [Status.FAIL]


def test_list_users_failure_is_one_account_error_per_check() -> None:
    snapshot = IamSnapshot(list_error=DENIED_LIST)
    for chk in CHECKS:
        outcomes = list(chk(snapshot))
        assert len(outcomes) == 1
        (o,) = outcomes
        assert (o.status, o.resource_id, o.region) == (Status.ERROR, "account", "global")
        assert "iam:ListUsers" in o.summary
        assert o.details["required_permission"] == "iam:ListUsers"
        assert o.details["api_call"] == "iam:ListUsers"


def test_mfa_call_failure_is_error_for_that_user_only() -> None:
    snapshot = IamSnapshot(users=(user("frank", console=True, mfa_error=DENIED_MFA), user("gina", console=True)))
    mfa = by_resource(list(user_mfa(snapshot)))
    assert mfa["user/frank"].status is Status.ERROR
    assert mfa["user/frank"].details["required_permission"] == "iam:ListMFADevices"
    assert mfa["user/frank"].details["mfa_devices"] is None
    assert mfa["user/gina"].status is Status.FAIL
    console = by_resource(list(console_user_mfa(snapshot)))
    assert console["user/frank"].status is Status.ERROR
    assert console["user/gina"].status is Status.FAIL


def test_login_profile_failure_errors_the_console_check_but_not_the_mfa_check() -> None:
    snapshot = IamSnapshot(
        users=(
            user("hank", console=None, login_profile_error=DENIED_LOGIN),
            user("ivy", console=None, mfa=("arn:aws:iam::123456789012:mfa/ivy",), login_profile_error=DENIED_LOGIN),
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


def test_no_users_no_findings() -> None:
    assert [list(chk(IamSnapshot())) for chk in CHECKS] == [[], []]


def test_evaluate_builds_findings_with_catalogue_fields() -> None:
    ctx = RunContext("run-" + "0" * 32, "123456789012", datetime(2025, 1, 1, tzinfo=UTC), "test")
    findings = evaluate(CHECKS, ACCOUNT, ctx)
    assert len(findings) == 6
    bob = next(f for f in findings if f.check_id == "iam.console_user_mfa" and f.resource_id == "user/bob")
    assert bob.control.value == "CC6.1"
    assert bob.severity.value == "critical"
    assert bob.remediation
    assert len({f.finding_id for f in findings}) == 6


def test_summarize_counts_and_percentages() -> None:
    summary = summarize(ACCOUNT)
    assert summary.population == {"users": 4, "console_users": 2}
    assert summary.metrics == {"mfa_percent": 50.0, "console_mfa_percent": 50.0}
    assert summary.regions == ["global"]
    thirds = IamSnapshot(
        users=(user("a1", console=False, mfa=("m",)), user("a2", console=False), user("a3", console=False))
    )
    assert summarize(thirds).metrics == {"mfa_percent": 33.3}


def test_summarize_omits_percentages_without_population() -> None:
    assert summarize(IamSnapshot()).metrics == {}
    assert summarize(IamSnapshot()).population == {"users": 0, "console_users": 0}
    assert summarize(IamSnapshot(list_error=DENIED_LIST)).population == {}
