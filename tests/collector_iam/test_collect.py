"""collect() against moto (a realistic account), and error paths moto cannot produce through AioStubber."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest
from aiobotocore.stub import AioStubber

from services.collector_iam.app import summarize
from services.collector_iam.checks import CHECKS
from services.collector_iam.collect import _bounded, collect, scan
from shared.aws import ApiCallCounter, AwsClients, TransientAwsError
from shared.checks import RunContext, evaluate
from shared.messages import CheckRequested, Finding, Service, Status
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT, boto3_client

if TYPE_CHECKING:
    from types_aiobotocore_iam import IAMClient

RUN_ID = "run-" + "1" * 32
CTX = RunContext(RUN_ID, MOTO_ACCOUNT, datetime(2025, 1, 1, tzinfo=UTC), "test")


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
    return {(f.check_id, f.resource_id): f.status for f in findings}


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


async def test_collect_realistic_account(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    seed_account(moto_endpoint)
    settings = make_settings(aws_endpoint_url=moto_endpoint, aws_concurrency=2)
    counter = ApiCallCounter()

    snapshot = await collect(AwsClients(settings), request(), counter, settings)

    findings = evaluate(CHECKS, snapshot, CTX)
    assert statuses(findings) == {
        ("iam.console_user_mfa", "user/alice"): Status.PASS,
        ("iam.console_user_mfa", "user/bob"): Status.FAIL,
        ("iam.user_mfa", "user/alice"): Status.PASS,
        ("iam.user_mfa", "user/bob"): Status.FAIL,
        ("iam.user_mfa", "user/carol"): Status.PASS,
        ("iam.user_mfa", "user/dave"): Status.FAIL,
    }
    bob = next(f for f in findings if f.check_id == "iam.user_mfa" and f.resource_id == "user/bob")
    assert bob.summary == "bob has no MFA device (console password: yes)"
    assert bob.resource_arn == f"arn:aws:iam::{MOTO_ACCOUNT}:user/bob"
    assert bob.details == {"user_name": "bob", "console_password": True, "mfa_devices": 0}
    summary = summarize(snapshot)
    assert summary.population == {"users": 4, "console_users": 2}
    assert summary.metrics == {"mfa_percent": 50.0, "console_mfa_percent": 50.0}
    assert counter.snapshot() == {"iam:GetLoginProfile": 4, "iam:ListMFADevices": 4, "iam:ListUsers": 1}


async def test_collect_empty_account(moto_endpoint: str, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(aws_endpoint_url=moto_endpoint)
    snapshot = await collect(AwsClients(settings), request(), ApiCallCounter(), settings)
    assert snapshot.users == ()
    assert snapshot.list_error is None
    assert evaluate(CHECKS, snapshot, CTX) == []


# --- stubbed errors ---------------------------------------------------------------------------------


@pytest.fixture
async def iam(make_settings: Callable[..., Settings]) -> AsyncIterator[IAMClient]:
    """A real aiobotocore IAM client from AwsClients, to be stubbed (no endpoint is ever reached)."""
    async with AwsClients(make_settings()).client("iam") as client:
        yield client


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


async def test_list_users_access_denied_is_an_error_naming_the_permission(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        stub.add_client_error("list_users", "AccessDenied", "User is not authorized to perform iam:ListUsers", 403)
        snapshot = await scan(iam, concurrency=4)
        stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    assert statuses(findings) == {
        ("iam.console_user_mfa", "account"): Status.ERROR,
        ("iam.user_mfa", "account"): Status.ERROR,
    }
    for finding in findings:
        assert finding.details["required_permission"] == "iam:ListUsers"
        assert finding.summary == "ListUsers was denied (AccessDenied): grant iam:ListUsers"


async def test_failing_second_page_of_users_is_an_error_never_a_smaller_pass(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": True, "Marker": "page-2"}, {})
        stub.add_client_error("list_users", "AccessDenied", "denied", 403, expected_params={"Marker": "page-2"})
        snapshot = await scan(iam, concurrency=4)
        stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    assert {f.status for f in findings} == {Status.ERROR}
    assert {f.resource_id for f in findings} == {"account"}
    assert summarize(snapshot).population == {}


async def test_second_page_server_error_is_transient(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": True, "Marker": "page-2"}, {})
        stub.add_client_error(
            "list_users", "ServiceUnavailable", "try later", 503, expected_params={"Marker": "page-2"}
        )
        with pytest.raises(TransientAwsError, match="iam:ListUsers"):
            await scan(iam, concurrency=4)


async def test_throttled_user_call_raises_transient(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": False}, {})
        stub.add_client_error("list_mfa_devices", "Throttling", "Rate exceeded", 400, {"UserName": "alice"})
        with pytest.raises(TransientAwsError, match="iam:ListMFADevices"):
            await scan(iam, concurrency=1)


async def test_paginated_devices_and_per_user_errors(iam: IAMClient) -> None:
    with AioStubber(iam) as stub:
        stub.add_response("list_users", {"Users": [listed_user("alice")], "IsTruncated": True, "Marker": "m2"}, {})
        stub.add_response("list_users", {"Users": [listed_user("bob")], "IsTruncated": False}, {"Marker": "m2"})
        # alice: her only device is on the second page of ListMFADevices; her login profile cannot be read.
        stub.add_response(
            "list_mfa_devices", {"MFADevices": [], "IsTruncated": True, "Marker": "d2"}, {"UserName": "alice"}
        )
        stub.add_response(
            "list_mfa_devices",
            {"MFADevices": [device("alice")], "IsTruncated": False},
            {"UserName": "alice", "Marker": "d2"},
        )
        stub.add_client_error("get_login_profile", "AccessDenied", "denied", 403, expected_params={"UserName": "alice"})
        # bob: his devices cannot be listed; he has no login profile.
        stub.add_client_error("list_mfa_devices", "AccessDenied", "denied", 403, expected_params={"UserName": "bob"})
        stub.add_client_error(
            "get_login_profile", "NoSuchEntity", "no profile", 404, expected_params={"UserName": "bob"}
        )
        snapshot = await scan(iam, concurrency=1)
        stub.assert_no_pending_responses()

    findings = evaluate(CHECKS, snapshot, CTX)
    assert statuses(findings) == {
        ("iam.console_user_mfa", "user/alice"): Status.ERROR,
        ("iam.user_mfa", "user/alice"): Status.PASS,
        ("iam.user_mfa", "user/bob"): Status.ERROR,
    }
    by_id = {(f.check_id, f.resource_id): f for f in findings}
    assert by_id[("iam.console_user_mfa", "user/alice")].details["required_permission"] == "iam:GetLoginProfile"
    assert by_id[("iam.user_mfa", "user/bob")].details["required_permission"] == "iam:ListMFADevices"
    assert by_id[("iam.user_mfa", "user/alice")].details["mfa_devices"] == 1


# --- bounded concurrency --------------------------------------------------------------------------


async def test_bounded_limits_concurrency_and_keeps_order() -> None:
    in_flight = peak = 0

    async def work(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002 * (5 - i % 5))
        in_flight -= 1
        return i * 2

    assert await _bounded(3, range(12), work) == [i * 2 for i in range(12)]
    assert peak == 3


async def test_bounded_raises_the_first_failure_itself_and_cancels_the_rest() -> None:
    async def work(i: int) -> int:
        if i == 1:
            raise TransientAwsError("throttled")
        await asyncio.sleep(5)
        return i

    started = time.monotonic()
    with pytest.raises(TransientAwsError, match="throttled"):
        await _bounded(4, range(4), work)
    assert time.monotonic() - started < 2
