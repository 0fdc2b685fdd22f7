"""`kushim connect` and the connection-test request/reply, against moto (with its IAM enforcement for denials)."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from services.cli.client import KushimClient
from services.scheduler.app import create_service as create_scheduler
from shared.accounts import Account, AssumeRoleAccess, SecretsManagerAccess, add_account, new_external_id
from shared.aws import AwsClients
from shared.connect import check_connection
from shared.embedded import EmbeddedNats
from shared.messages import ConnectionTestResult
from shared.service import ServiceApp
from shared.settings import Settings
from tests.conftest import boto3_client

BUCKET = "kushim-evidence-storage-connect"


def by_service(result: ConnectionTestResult) -> dict[str, tuple[bool, str | None]]:
    return {s.service: (s.connected, s.code) for s in result.services}


async def test_everything_connects_on_a_reachable_account(
    make_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    boto3_client(moto_endpoint, "s3").create_bucket(Bucket=BUCKET)
    settings = make_settings(aws_endpoint_url=moto_endpoint, evidence_bucket=BUCKET)
    result = await check_connection(settings, AwsClients(settings), "r1")
    assert result.ok
    assert result.account_id == "123456789012"
    assert result.request_id == "r1"
    assert by_service(result) == {
        "sts": (True, None),
        "iam": (True, None),
        "s3": (True, None),
        "cloudtrail": (True, None),
        "evidence-bucket": (True, None),
    }


async def test_a_missing_evidence_bucket_is_named_with_its_fix(
    make_settings: Callable[..., Settings], moto_endpoint: str
) -> None:
    settings = make_settings(aws_endpoint_url=moto_endpoint, evidence_bucket="kushim-evidence-storage-absent")
    result = await check_connection(settings, AwsClients(settings), None)
    assert not result.ok
    bucket = next(s for s in result.services if s.service == "evidence-bucket")
    assert not bucket.connected
    assert bucket.fix is not None
    assert "does not exist" in bucket.fix


def _reset_auth(endpoint: str, count: str) -> None:
    """moto enforces IAM after `count` unauthenticated requests ("inf" turns enforcement off again)."""
    body = count.encode()
    req = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


@pytest.fixture
def enforcing_moto(moto_endpoint: str) -> Iterator[tuple[str, str, str]]:
    """A user whose policy lacks iam:ListUsers, and moto enforcing IAM from now on."""
    iam = boto3_client(moto_endpoint, "iam")
    iam.create_user(UserName="kushim-integration")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": ["sts:GetCallerIdentity", "s3:ListAllMyBuckets", "cloudtrail:DescribeTrails"],
                "Resource": "*",
            }
        ],
    }
    iam.put_user_policy(UserName="kushim-integration", PolicyName="partial", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="kushim-integration")["AccessKey"]
    _reset_auth(moto_endpoint, "0")
    try:
        yield moto_endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        _reset_auth(moto_endpoint, "inf")


async def test_a_denied_service_names_the_missing_action(
    make_settings: Callable[..., Settings], enforcing_moto: tuple[str, str, str]
) -> None:
    endpoint, key_id, secret = enforcing_moto
    settings = make_settings(
        aws_endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key=secret, aws_session_token=None
    )
    result = await check_connection(settings, AwsClients(settings), None)
    assert not result.ok
    states = by_service(result)
    assert states["sts"] == (True, None)
    assert states["cloudtrail"] == (True, None)
    assert states["iam"][0] is False
    iam = next(s for s in result.services if s.service == "iam")
    assert iam.fix is not None
    assert "iam:ListUsers" in iam.fix


async def test_bad_secret_is_explained(
    make_settings: Callable[..., Settings], enforcing_moto: tuple[str, str, str]
) -> None:
    endpoint, key_id, _ = enforcing_moto
    settings = make_settings(
        aws_endpoint_url=endpoint, aws_access_key_id=key_id, aws_secret_access_key="wrong", aws_session_token=None
    )
    result = await check_connection(settings, AwsClients(settings), None)
    sts = next(s for s in result.services if s.service == "sts")
    assert not sts.connected
    assert sts.code == "SignatureDoesNotMatch"
    assert sts.fix is not None
    assert "AWS_SECRET_ACCESS_KEY" in sts.fix


async def test_other_systems_can_test_the_connection_over_nats(
    scheduler: ServiceApp, nats_server: EmbeddedNats
) -> None:
    client = await KushimClient.connect(nats_server.url)
    try:
        result = await client.connection_test(request_id="from-ci")
        assert result.ok
        assert result.request_id == "from-ci"
        assert {s.service for s in result.services} == {"sts", "iam", "s3", "cloudtrail"}
        reply = await client._nc.request("kushim.api.connection-test", b'{"unexpected": 1}', timeout=10)
        rejected = ConnectionTestResult.model_validate_json(reply.data)
        assert not rejected.ok
        assert rejected.error is not None
        assert "unexpected" in rejected.error
    finally:
        await client.close()


async def test_a_registered_account_is_tested_with_its_own_access(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str, tmp_path: Path
) -> None:
    registry = tmp_path / "accounts.toml"
    role = AssumeRoleAccess(
        kind="assume_role", role_arn="arn:aws:iam::111111111111:role/KushimAudit", external_id=new_external_id()
    )
    add_account(registry, Account(id="111111111111", name="member", access=role))
    missing = SecretsManagerAccess(kind="secrets_manager", secret_id="kushim/absent")
    add_account(registry, Account(id="222222222222", name="by-secret", access=missing))
    add_account(registry, Account(id="444444444444", name="misfiled"))  # default credentials: moto's account
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, accounts_file=registry)
    app = create_scheduler(settings, url=nats_server.url)
    await app.start()
    client = await KushimClient.connect(nats_server.url)
    try:
        member = await client.connection_test(request_id="member", account_id="111111111111")
        assert member.ok
        assert member.account_id == "111111111111"  # the assumed role's account, from sts:GetCallerIdentity
        assert {s.service for s in member.services} == {"sts", "iam", "s3", "cloudtrail"}

        broken = await client.connection_test(request_id="secret", account_id="222222222222")
        assert not broken.ok
        assert [s.service for s in broken.services] == ["credentials"]
        assert broken.services[0].api_call == "secretsmanager:GetSecretValue"
        assert broken.services[0].code == "ResourceNotFoundException"
        assert "kushim/absent" in (broken.services[0].message or "")
        assert "secretsmanager:GetSecretValue" in (broken.services[0].fix or "")

        misfiled = await client.connection_test(request_id="misfiled", account_id="444444444444")
        assert not misfiled.ok
        sts = next(p for p in misfiled.services if p.service == "sts")
        assert sts.code == "WrongAccount"
        assert "belong to account 123456789012" in (sts.message or "")

        unknown = await client.connection_test(request_id="unknown", account_id="333333333333")
        assert not unknown.ok
        assert unknown.error == "account 333333333333 is not in the account registry"
    finally:
        await client.close()
        await app.stop()
