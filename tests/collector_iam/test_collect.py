"""collect()/scan() against moto (a realistic account, both data paths), and through AioStubber the answers moto
cannot give: denials, ReportInProgress, failing pages, AWS's own credential report with its root row."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.awsrequest import AioAWSResponse
from aiobotocore.stub import AioStubber
from botocore.awsrequest import HTTPHeaders

from services.collector_iam.app import summarize
from services.collector_iam.checks import CHECKS
from services.collector_iam.collect import collect, scan
from services.collector_iam.snapshot import AccessKey, IamSnapshot, RootUser
from shared.aws import ApiCallCounter, AwsClients, TransientAwsError
from shared.checks import RunContext, evaluate
from shared.messages import CheckRequested, Finding, Service, Status
from shared.settings import Settings
from tests.collector_iam.test_report import ROOT_ROW, ROWS, report
from tests.conftest import MOTO_ACCOUNT, boto3_client

if TYPE_CHECKING:
    from types_aiobotocore_iam import IAMClient

RUN_ID = "run-" + "1" * 32
CTX = RunContext(RUN_ID, MOTO_ACCOUNT, datetime(2025, 1, 1, tzinfo=UTC), "test")
ROOT_ARN = f"arn:aws:iam::{MOTO_ACCOUNT}:root"
NO_WAIT = (0.0, 0.0, 0.0, 0.0)


def request() -> CheckRequested:
    return CheckRequested(
        run_id=RUN_ID,
        request_id="req-iam",
        account_id=MOTO_ACCOUNT,
        service=Service.IAM,
        regions=["us-east-1"],
        requested_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def statuses(findings: list[Finding]) -> dict[tuple[str, str], Status]:
    result = {(f.check_id, f.resource_id): f.status for f in findings}
    assert len(result) == len(findings), "one finding per (check, resource)"
    return result


def without_source(findings: list[Finding]) -> list[dict[str, Any]]:
    """Findings as dicts, minus the one thing the two data paths may differ in: where the user data came from."""
    out = []
    for finding in findings:
        data = finding.model_dump(mode="json")
        data["details"].pop("source", None)
        out.append(data)
    return out


# --- moto ---------------------------------------------------------------------------------------


def seed_account(endpoint: str) -> None:
    iam = boto3_client(endpoint, "iam")
    for name in ("alice", "bob", "carol", "dave"):
        iam.create_user(UserName=name)
    for name in ("alice", "bob"):
        iam.create_login_profile(UserName=name, Password="Not-a-real-pw-1!")
    for name in ("alice", "carol"):
        serial = iam.create_virtual_mfa_device(VirtualMFADeviceName=f"{name}-phone")["VirtualMFADevice"]["SerialNumber"]
        iam.enable_mfa_device(
            UserName=name, SerialNumber=serial, AuthenticationCode1="123456", AuthenticationCode2="654321"
        )
    # Created, never assigned: it must count for nobody (dave and bob stay without MFA).
    iam.create_virtual_mfa_device(VirtualMFADeviceName="spare-device")
    # bob: two active keys, the second one used; carol: an inactive key, then an active one; dave: one, never used.
    iam.create_access_key(UserName="bob")
    used = iam.create_access_key(UserName="bob")["AccessKey"]
    old = iam.create_access_key(UserName="carol")["AccessKey"]
    iam.update_access_key(UserName="carol", AccessKeyId=old["AccessKeyId"], Status="Inactive")
    iam.create_access_key(UserName="carol")
    iam.create_access_key(UserName="dave")
    # moto records a key's last use when a request is signed with it.
    import boto3

    boto3.client(
        "sts",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=used["AccessKeyId"],
        aws_secret_access_key=used["SecretAccessKey"],
    ).get_caller_identity()


SEEDED_TRUTH = {
    ("iam.console_user_mfa", "user/alice"): Status.PASS,
    ("iam.console_user_mfa", "user/bob"): Status.FAIL,
    ("iam.user_mfa", "user/alice"): Status.PASS,
    ("iam.user_mfa", "user/bob"): Status.FAIL,
    ("iam.user_mfa", "user/carol"): Status.PASS,
    ("iam.user_mfa", "user/dave"): Status.FAIL,
    # moto: root never has MFA (AccountMFAEnabled is always 0) and no access keys.
    ("iam.root_mfa", "root"): Status.FAIL,
    ("iam.root_access_keys", "root"): Status.PASS,
    # Keys created seconds ago: young and within the grace period.
    ("iam.access_key_rotated", "user/bob#key1"): Status.PASS,
    ("iam.access_key_rotated", "user/bob#key2"): Status.PASS,
    ("iam.access_key_rotated", "user/carol#key2"): Status.PASS,
    ("iam.access_key_rotated", "user/dave#key1"): Status.PASS,
    ("iam.access_key_unused", "user/bob#key1"): Status.PASS,
    ("iam.access_key_unused", "user/bob#key2"): Status.PASS,
    ("iam.access_key_unused", "user/carol#key2"): Status.PASS,
    ("iam.access_key_unused", "user/dave#key1"): Status.PASS,
    ("iam.user_two_active_keys", "user/bob"): Status.FAIL,
    ("iam.user_two_active_keys", "user/carol"): Status.PASS,
    ("iam.user_two_active_keys", "user/dave"): Status.PASS,
}


def deny(client: IAMClient, operation: str) -> None:
    """Answer every `operation` call of this client with AccessDenied before it is sent (the rest goes to moto).

    A `before-call` handler that returns (http response, parsed response) replaces the request, as AioStubber's does.
    """

    def denied(**_: Any) -> tuple[AioAWSResponse, dict[str, Any]]:
        error = {"Code": "AccessDenied", "Message": f"User is not authorized to perform: iam:{operation}"}
        http = AioAWSResponse("https://iam.amazonaws.com/", 403, HTTPHeaders(), None)
        return http, {"Error": error, "ResponseMetadata": {"HTTPStatusCode": 403}}

    handler: Any = denied  # the event hooks are typed for handlers returning None
    client.meta.events.register(f"before-call.iam.{operation}", handler)


@asynccontextmanager
async def moto_iam(settings: Settings, counter: ApiCallCounter) -> AsyncIterator[IAMClient]:
    """The production client (AwsClients) against moto, with the production call counter."""
    async with AwsClients(settings).client("iam", counter=counter) as client:
        yield client


async def test_collect_realistic_account_uses_the_credential_report(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    seed_account(moto_endpoint)
    settings = make_settings(aws_endpoint_url=moto_endpoint, aws_concurrency=2)
    counter = ApiCallCounter()

    snapshot = await collect(AwsClients(settings), request(), counter, settings)

    assert snapshot.source == "credential_report"
    assert snapshot.key_max_age_days == 90
    findings = evaluate(CHECKS, snapshot, CTX)
    assert statuses(findings) == SEEDED_TRUTH
    bob = next(f for f in findings if f.check_id == "iam.user_mfa" and f.resource_id == "user/bob")
    assert bob.summary == "bob has no MFA device (console password: yes)"
    assert bob.resource_arn == f"arn:aws:iam::{MOTO_ACCOUNT}:user/bob"
    assert bob.details == {
        "user_name": "bob",
        "console_password": True,
        "mfa_active": False,
        "source": "credential_report",
    }
    used = next(f for f in findings if f.check_id == "iam.access_key_unused" and f.resource_id == "user/bob#key2")
    assert used.details["last_used"] is not None
    assert used.details["days_since_use"] == 0
    root = next(f for f in findings if f.check_id == "iam.root_mfa")
    assert (root.resource_arn, root.resource_type) == (ROOT_ARN, "AWS::IAM::Root")
    assert root.details["source"] == "account_summary"  # moto's report has no <root_account> row
    summary = summarize(snapshot)
    assert summary.population == {"users": 4, "console_users": 2, "active_access_keys": 4}
    assert summary.metrics == {"root_mfa": 0.0, "mfa_percent": 50.0, "console_mfa_percent": 50.0}
    # moto answers STARTED, then COMPLETE: two polls, one download, and GetAccountSummary for the missing root row.
    assert counter.snapshot() == {
        "iam:GenerateCredentialReport": 2,
        "iam:GetAccountSummary": 1,
        "iam:GetCredentialReport": 1,
    }


async def test_collect_passes_the_configured_key_age(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(aws_endpoint_url=moto_endpoint, access_key_max_age_days=7)
    snapshot = await collect(AwsClients(settings), request(), ApiCallCounter(), settings)
    assert snapshot.key_max_age_days == 7
    assert abs(snapshot.now - datetime.now(UTC)) < timedelta(minutes=1)


@pytest.mark.parametrize("days_later", [0, 100])
async def test_both_data_paths_give_the_same_snapshot_and_findings(
    moto_endpoint: str, make_settings: Callable[..., Settings], days_later: int
) -> None:
    seed_account(moto_endpoint)
    settings = make_settings(aws_endpoint_url=moto_endpoint, aws_concurrency=3)
    now = datetime.now(UTC) + timedelta(days=days_later)

    report_counter, per_user_counter = ApiCallCounter(), ApiCallCounter()
    async with moto_iam(settings, report_counter) as iam:
        by_report = await scan(iam, account_id=MOTO_ACCOUNT, concurrency=3, now=now)
    async with moto_iam(settings, per_user_counter) as iam:
        deny(iam, "GenerateCredentialReport")
        per_user = await scan(iam, account_id=MOTO_ACCOUNT, concurrency=3, now=now)

    assert (by_report.source, per_user.source) == ("credential_report", "per_user")
    assert by_report.report_error is None
    assert per_user.report_error is not None
    assert per_user.report_error.permission == "iam:GenerateCredentialReport"
    assert dataclasses.replace(by_report, source=None) == dataclasses.replace(per_user, source=None, report_error=None)
    report_findings, per_user_findings = evaluate(CHECKS, by_report, CTX), evaluate(CHECKS, per_user, CTX)
    assert without_source(report_findings) == without_source(per_user_findings)
    assert {f.details.get("source") for f in per_user_findings if f.resource_id.startswith("user/")} == {"per_user"}

    expected = dict(SEEDED_TRUTH)
    if days_later:  # a hundred days on, every active key is too old and unused for too long
        for check_id, resource_id in expected:
            if check_id in {"iam.access_key_rotated", "iam.access_key_unused"}:
                expected[(check_id, resource_id)] = Status.FAIL
    assert statuses(report_findings) == expected
    # Per user: 3 calls per user, GetAccessKeyLastUsed per active key (never for carol's inactive one); the denied
    # GenerateCredentialReport is answered before it is sent, so it is not counted here (on AWS it is 1 more call).
    assert per_user_counter.snapshot() == {
        "iam:GetAccessKeyLastUsed": 4,
        "iam:GetAccountSummary": 1,
        "iam:GetLoginProfile": 4,
        "iam:ListAccessKeys": 4,
        "iam:ListMFADevices": 4,
        "iam:ListUsers": 1,
    }


async def test_denied_download_also_falls_back_to_the_per_user_path(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    seed_account(moto_endpoint)
    settings = make_settings(aws_endpoint_url=moto_endpoint)
    counter = ApiCallCounter()
    async with moto_iam(settings, counter) as iam:
        deny(iam, "GetCredentialReport")
        snapshot = await scan(iam, account_id=MOTO_ACCOUNT, concurrency=4)
    assert snapshot.source == "per_user"
    assert snapshot.report_error is not None
    assert snapshot.report_error.describe() == (
        "GetCredentialReport was denied (AccessDenied): grant iam:GetCredentialReport"
    )
    assert statuses(evaluate(CHECKS, snapshot, CTX)) == SEEDED_TRUTH
    assert counter.counts["iam:GenerateCredentialReport"] == 2


async def test_collect_empty_account_has_only_root_findings(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(aws_endpoint_url=moto_endpoint)
    snapshot = await collect(AwsClients(settings), request(), ApiCallCounter(), settings)
    assert snapshot.users == ()
    assert snapshot.list_error is None
    assert statuses(evaluate(CHECKS, snapshot, CTX)) == {
        ("iam.root_mfa", "root"): Status.FAIL,
        ("iam.root_access_keys", "root"): Status.PASS,
    }


def seed_users(endpoint: str, count: int) -> None:
    """user-0000 ...: every 4th has a console password, every 10th an access key."""
    iam = boto3_client(endpoint, "iam")
    for i in range(count):
        name = f"user-{i:04d}"
        iam.create_user(UserName=name)
        if i % 4 == 0:
            iam.create_login_profile(UserName=name, Password="Not-a-real-pw-1!")
        if i % 10 == 0:
            iam.create_access_key(UserName=name)


async def test_credential_report_call_budget_for_1000_users(
    moto_endpoint: str, make_settings: Callable[..., Settings]
) -> None:
    seed_users(moto_endpoint, 1000)
    settings = make_settings(aws_endpoint_url=moto_endpoint)
    counter = ApiCallCounter()

    started = time.monotonic()
    snapshot = await collect(AwsClients(settings), request(), counter, settings)
    elapsed = time.monotonic() - started

    calls = sum(counter.counts.values())
    assert calls < 10, counter.snapshot()
    assert counter.snapshot() == {
        "iam:GenerateCredentialReport": 2,
        "iam:GetAccountSummary": 1,
        "iam:GetCredentialReport": 1,
    }
    assert elapsed < 5, elapsed
    assert summarize(snapshot).population == {"users": 1000, "console_users": 250, "active_access_keys": 100}
    tally: dict[tuple[str, Status], int] = {}
    for f in evaluate(CHECKS, snapshot, CTX):
        tally[(f.check_id, f.status)] = tally.get((f.check_id, f.status), 0) + 1
    assert tally == {
        ("iam.user_mfa", Status.FAIL): 1000,
        ("iam.console_user_mfa", Status.FAIL): 250,
        ("iam.root_mfa", Status.FAIL): 1,
        ("iam.root_access_keys", Status.PASS): 1,
        ("iam.access_key_rotated", Status.PASS): 100,
        ("iam.access_key_unused", Status.PASS): 100,
        ("iam.user_two_active_keys", Status.PASS): 100,
    }


# --- stubbed answers ----------------------------------------------------------------------------------


@pytest.fixture
async def iam(make_settings: Callable[..., Settings]) -> AsyncIterator[IAMClient]:
    """A real aiobotocore IAM client from AwsClients, to be stubbed (no endpoint is ever reached)."""
    async with AwsClients(make_settings()).client("iam") as client:
        yield client


NOW = datetime(2025, 6, 1, 12, 0, 0, tzinfo=UTC)


async def stubbed_scan(iam: IAMClient, stub: AioStubber, concurrency: int = 1) -> IamSnapshot:
    snapshot = await scan(iam, account_id=MOTO_ACCOUNT, concurrency=concurrency, now=NOW, poll_delays=NO_WAIT)
    stub.assert_no_pending_responses()
    return snapshot


def listed_user(name: str) -> dict[str, Any]:
    return {
        "Path": "/",
        "UserName": name,
        "UserId": f"AIDA{name.upper():0>16}",
        "Arn": f"arn:aws:iam::{MOTO_ACCOUNT}:user/{name}",
        "CreateDate": datetime(2024, 1, 1, tzinfo=UTC),
    }


def device(name: str) -> dict[str, Any]:
    return {
        "UserName": name,
        "SerialNumber": f"arn:aws:iam::{MOTO_ACCOUNT}:mfa/{name}",
        "EnableDate": datetime(2024, 1, 1, tzinfo=UTC),
    }


def key_metadata(name: str, key_id: str, status: str, created: datetime) -> dict[str, Any]:
    return {"UserName": name, "AccessKeyId": key_id, "Status": status, "CreateDate": created}


def deny_report(stub: AioStubber) -> None:
    stub.add_client_error(
        "generate_credential_report", "AccessDenied", "not authorized to perform iam:GenerateCredentialReport", 403
    )


def account_summary(stub: AioStubber, *, mfa: int = 0, keys: int = 0) -> None:
    summary = {"AccountMFAEnabled": mfa, "AccountAccessKeysPresent": keys, "Users": 1}
    stub.add_response("get_account_summary", {"SummaryMap": summary}, {})


def no_keys(stub: AioStubber, name: str) -> None:
    stub.add_response("list_access_keys", {"AccessKeyMetadata": [], "IsTruncated": False}, {"UserName": name})


def plain_user(stub: AioStubber, name: str) -> None:
    """The per-user calls of a user without MFA, console password or keys."""
    stub.add_response("list_mfa_devices", {"MFADevices": [], "IsTruncated": False}, {"UserName": name})
    stub.add_client_error("get_login_profile", "NoSuchEntity", "no profile", 404, expected_params={"UserName": name})
    no_keys(stub, name)


def generated(stub: AioStubber, state: str) -> None:
    stub.add_response("generate_credential_report", {"State": state, "Description": "..."}, {})


def downloaded(stub: AioStubber, content: bytes) -> None:
    stub.add_response(
        "get_credential_report",
        {"Content": content, "ReportFormat": "text/csv", "GeneratedTime": NOW - timedelta(minutes=5)},
        {},
    )


async def test_access_denied_on_generate_falls_back_to_the_per_user_path(iam: IAMClient) -> None:
    old, new = datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 5, 1, 8, 30, 15, 654321, tzinfo=UTC)
    with AioStubber(iam) as stub:
        deny_report(stub)
        account_summary(stub, mfa=1, keys=1)
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": False}, {})
        stub.add_response(
            "list_mfa_devices", {"MFADevices": [device("alice")], "IsTruncated": False}, {"UserName": "alice"}
        )
        stub.add_response(
            "get_login_profile", {"LoginProfile": {"UserName": "alice", "CreateDate": old}}, {"UserName": "alice"}
        )
        # Listed newest first: numbering follows CreateDate, as in the credential report.
        stub.add_response(
            "list_access_keys",
            {
                "AccessKeyMetadata": [
                    key_metadata("alice", "AKIAAAAAAAAAAAAANEW1", "Active", new),
                    key_metadata("alice", "AKIAAAAAAAAAAAAAOLD1", "Inactive", old),
                ],
                "IsTruncated": False,
            },
            {"UserName": "alice"},
        )
        # Only the active key's last use is asked for.
        stub.add_response(
            "get_access_key_last_used",
            {"UserName": "alice", "AccessKeyLastUsed": {"ServiceName": "N/A", "Region": "N/A"}},
            {"AccessKeyId": "AKIAAAAAAAAAAAAANEW1"},
        )
        snapshot = await stubbed_scan(iam, stub)

    assert snapshot.source == "per_user"
    assert snapshot.report_error is not None
    assert snapshot.report_error.code == "AccessDenied"
    (alice,) = snapshot.users
    assert alice.access_keys == (
        AccessKey(1, active=False, created=old),
        AccessKey(2, active=True, created=new.replace(microsecond=0), last_used=None),
    )
    assert snapshot.root == RootUser(
        arn=ROOT_ARN, source="account_summary", mfa_active=True, access_keys_present=True, active_access_keys=None
    )
    assert statuses(evaluate(CHECKS, snapshot, CTX)) == {
        ("iam.user_mfa", "user/alice"): Status.PASS,
        ("iam.console_user_mfa", "user/alice"): Status.PASS,
        ("iam.root_mfa", "root"): Status.PASS,
        ("iam.root_access_keys", "root"): Status.FAIL,
        ("iam.access_key_rotated", "user/alice#key2"): Status.PASS,
        ("iam.access_key_unused", "user/alice#key2"): Status.PASS,
        ("iam.user_two_active_keys", "user/alice"): Status.PASS,
    }


async def test_report_in_progress_then_success_with_bounded_polling(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        generated(stub, "STARTED")
        generated(stub, "INPROGRESS")
        generated(stub, "COMPLETE")
        stub.add_client_error("get_credential_report", "ReportInProgress", "not ready", 404)
        generated(stub, "COMPLETE")
        downloaded(stub, report(ROWS[0], ROOT_ROW, ROWS[1], ROWS[2], ROWS[3]))
        snapshot = await stubbed_scan(iam, stub)

    # The report's <root_account> row answers root: no GetAccountSummary (the stub would have failed it).
    assert snapshot.source == "credential_report"
    assert snapshot.root is not None
    assert snapshot.root.source == "credential_report"
    assert snapshot.root.arn == ROOT_ARN
    findings = evaluate(CHECKS, snapshot, CTX)
    # The truth of the hand-written report (tests/collector_iam/test_report.py) on 2025-06-01 with a 90-day limit.
    assert statuses(findings) == {
        ("iam.root_mfa", "root"): Status.FAIL,
        ("iam.root_access_keys", "root"): Status.FAIL,
        ("iam.user_mfa", "user/alice"): Status.PASS,
        ("iam.user_mfa", "user/bob"): Status.FAIL,
        ("iam.user_mfa", "user/carol"): Status.FAIL,
        ("iam.user_mfa", "user/dave"): Status.FAIL,
        ("iam.console_user_mfa", "user/alice"): Status.PASS,
        ("iam.console_user_mfa", "user/carol"): Status.FAIL,
        ("iam.access_key_rotated", "user/bob#key1"): Status.FAIL,  # created 2022-01-01
        ("iam.access_key_rotated", "user/bob#key2"): Status.PASS,  # created 2025-05-01
        ("iam.access_key_rotated", "user/carol#key2"): Status.FAIL,  # created 2024-01-01 (key 1 is inactive)
        ("iam.access_key_unused", "user/bob#key1"): Status.PASS,  # used yesterday
        ("iam.access_key_unused", "user/bob#key2"): Status.PASS,  # never used, 31 days old
        ("iam.access_key_unused", "user/carol#key2"): Status.FAIL,  # never used, 517 days old
        ("iam.user_two_active_keys", "user/bob"): Status.FAIL,
        ("iam.user_two_active_keys", "user/carol"): Status.PASS,
    }
    root_keys = next(f for f in findings if f.check_id == "iam.root_access_keys")
    assert root_keys.summary == "the root user has 2 active access keys"
    assert summarize(snapshot).metrics["root_mfa"] == 0.0


async def test_report_never_ready_is_transient_after_bounded_polls(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        for _ in range(4):  # one poll, then one more after each of the three sleeps: no fifth call
            generated(stub, "INPROGRESS")
        started = time.monotonic()
        with pytest.raises(TransientAwsError, match="not ready after 4 polls"):
            await scan(iam, account_id=MOTO_ACCOUNT, concurrency=1, poll_delays=(0.05, 0.05, 0.05))
        elapsed = time.monotonic() - started
        stub.assert_no_pending_responses()
    assert 0.15 <= elapsed < 1


async def test_throttled_report_is_transient(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        stub.add_client_error("generate_credential_report", "Throttling", "Rate exceeded", 400)
        with pytest.raises(TransientAwsError, match="iam:GenerateCredentialReport"):
            await scan(iam, account_id=MOTO_ACCOUNT, concurrency=1)


async def test_malformed_report_falls_back_to_the_per_user_path(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        generated(stub, "COMPLETE")
        downloaded(stub, b"user,arn\nalice,arn:aws:iam::123456789012:user/alice\n")
        account_summary(stub)
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": False}, {})
        plain_user(stub, "alice")
        snapshot = await stubbed_scan(iam, stub)

    assert snapshot.source == "per_user"
    assert snapshot.report_error is not None
    assert snapshot.report_error.code == "InvalidReport"
    assert "lacks the column" in snapshot.report_error.message
    assert statuses(evaluate(CHECKS, snapshot, CTX))[("iam.user_mfa", "user/alice")] is Status.FAIL


async def test_access_denied_on_get_account_summary_is_a_root_error_naming_the_actions(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        deny_report(stub)
        stub.add_client_error("get_account_summary", "AccessDenied", "not authorized", 403)
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": False}, {})
        plain_user(stub, "alice")
        snapshot = await stubbed_scan(iam, stub)

    findings = evaluate(CHECKS, snapshot, CTX)
    assert statuses(findings) == {
        ("iam.root_mfa", "root"): Status.ERROR,
        ("iam.root_access_keys", "root"): Status.ERROR,
        ("iam.user_mfa", "user/alice"): Status.FAIL,
    }
    for finding in (f for f in findings if f.resource_id == "root"):
        assert finding.resource_arn == ROOT_ARN
        assert finding.details["required_permission"] == "iam:GetAccountSummary"
        assert finding.details["alternative_permissions"] == ["iam:GenerateCredentialReport", "iam:GetCredentialReport"]
        assert "iam:GetAccountSummary" in finding.summary
        assert "iam:GenerateCredentialReport and iam:GetCredentialReport" in finding.summary
        assert finding.remediation
    assert "root_mfa" not in summarize(snapshot).metrics


async def test_list_users_access_denied_is_an_error_naming_the_permission(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        deny_report(stub)
        account_summary(stub)
        stub.add_client_error("list_users", "AccessDenied", "User is not authorized to perform iam:ListUsers", 403)
        snapshot = await stubbed_scan(iam, stub, concurrency=4)

    findings = evaluate(CHECKS, snapshot, CTX)
    user_checks = [f for f in findings if f.resource_id != "root"]
    assert {(f.check_id, f.resource_id, f.status) for f in user_checks} == {
        (chk.id, "account", Status.ERROR) for chk in CHECKS if not chk.id.startswith("iam.root")
    }
    for finding in user_checks:
        assert finding.details["required_permission"] == "iam:ListUsers"
        assert finding.summary == "ListUsers was denied (AccessDenied): grant iam:ListUsers"
    # Root is read on its own and still judged.
    assert statuses([f for f in findings if f.resource_id == "root"]) == {
        ("iam.root_mfa", "root"): Status.FAIL,
        ("iam.root_access_keys", "root"): Status.PASS,
    }


async def test_failing_middle_page_of_users_is_an_error_never_a_smaller_pass(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        deny_report(stub)
        account_summary(stub)
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": True, "Marker": "page-2"}, {})
        stub.add_client_error("list_users", "AccessDenied", "denied", 403, expected_params={"Marker": "page-2"})
        # A third page exists but is never reached: the population is already known to be incomplete.
        snapshot = await stubbed_scan(iam, stub, concurrency=4)

    findings = evaluate(CHECKS, snapshot, CTX)
    assert {f.status for f in findings if f.resource_id != "root"} == {Status.ERROR}
    assert {f.resource_id for f in findings} == {"account", "root"}
    assert not any(f.resource_id.startswith("user/") for f in findings)
    assert summarize(snapshot).population == {}


async def test_second_page_server_error_is_transient(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        deny_report(stub)
        account_summary(stub)
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": True, "Marker": "page-2"}, {})
        stub.add_client_error(
            "list_users", "ServiceUnavailable", "try later", 503, expected_params={"Marker": "page-2"}
        )
        with pytest.raises(TransientAwsError, match="iam:ListUsers"):
            await scan(iam, account_id=MOTO_ACCOUNT, concurrency=4)


async def test_throttled_user_call_raises_transient(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        deny_report(stub)
        account_summary(stub)
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": False}, {})
        stub.add_client_error("list_mfa_devices", "Throttling", "Rate exceeded", 400, {"UserName": "alice"})
        with pytest.raises(TransientAwsError, match="iam:ListMFADevices"):
            await scan(iam, account_id=MOTO_ACCOUNT, concurrency=1)


async def test_paginated_devices_and_per_user_errors(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        deny_report(stub)
        account_summary(stub)
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": True, "Marker": "m2"}, {})
        stub.add_response("list_users", {"Users": [listed_user("bob")], "IsTruncated": False}, {"Marker": "m2"})
        # alice: her only device is on the second page of ListMFADevices; her login profile cannot be read; her key's
        # last use cannot be read.
        stub.add_response(
            "list_mfa_devices", {"MFADevices": [], "IsTruncated": True, "Marker": "d2"}, {"UserName": "alice"}
        )
        stub.add_response(
            "list_mfa_devices",
            {"MFADevices": [device("alice")], "IsTruncated": False},
            {"UserName": "alice", "Marker": "d2"},
        )
        stub.add_client_error("get_login_profile", "AccessDenied", "denied", 403, expected_params={"UserName": "alice"})
        stub.add_response(
            "list_access_keys",
            {"AccessKeyMetadata": [key_metadata("alice", "AKIAAAAAAAAAAAAAKEY1", "Active", NOW)], "IsTruncated": False},
            {"UserName": "alice"},
        )
        stub.add_client_error(
            "get_access_key_last_used",
            "AccessDenied",
            "denied",
            403,
            expected_params={"AccessKeyId": "AKIAAAAAAAAAAAAAKEY1"},
        )
        # bob: his devices cannot be listed; he has no login profile; his keys cannot be listed.
        stub.add_client_error("list_mfa_devices", "AccessDenied", "denied", 403, expected_params={"UserName": "bob"})
        stub.add_client_error(
            "get_login_profile", "NoSuchEntity", "no profile", 404, expected_params={"UserName": "bob"}
        )
        stub.add_client_error("list_access_keys", "AccessDenied", "denied", 403, expected_params={"UserName": "bob"})
        snapshot = await stubbed_scan(iam, stub)

    findings = evaluate(CHECKS, snapshot, CTX)
    assert statuses(findings) == {
        ("iam.console_user_mfa", "user/alice"): Status.ERROR,
        ("iam.user_mfa", "user/alice"): Status.PASS,
        ("iam.user_mfa", "user/bob"): Status.ERROR,
        ("iam.access_key_rotated", "user/alice#key1"): Status.PASS,
        ("iam.access_key_unused", "user/alice#key1"): Status.ERROR,
        ("iam.user_two_active_keys", "user/alice"): Status.PASS,
        ("iam.access_key_rotated", "user/bob"): Status.ERROR,
        ("iam.access_key_unused", "user/bob"): Status.ERROR,
        ("iam.user_two_active_keys", "user/bob"): Status.ERROR,
        ("iam.root_mfa", "root"): Status.FAIL,
        ("iam.root_access_keys", "root"): Status.PASS,
    }
    by_id = {(f.check_id, f.resource_id): f for f in findings}
    assert by_id[("iam.console_user_mfa", "user/alice")].details["required_permission"] == "iam:GetLoginProfile"
    assert by_id[("iam.user_mfa", "user/bob")].details["required_permission"] == "iam:ListMFADevices"
    assert by_id[("iam.user_mfa", "user/alice")].details["mfa_active"] is True
    assert by_id[("iam.access_key_unused", "user/alice#key1")].details["required_permission"] == (
        "iam:GetAccessKeyLastUsed"
    )
    assert by_id[("iam.user_two_active_keys", "user/bob")].details["required_permission"] == "iam:ListAccessKeys"
    assert "active_access_keys" not in summarize(snapshot).population


# --- bounded concurrency --------------------------------------------------------------------------
