"""Many accounts through the account registry, on real parts (nats-server, moto's server, SQLite).

Two member accounts are reached by sts:AssumeRole from the default (hub) credentials: each sees only its own
resources, and the ExternalId sent on the wire (recorded by a proxy in front of moto, since moto accepts any) is
the one stored in the registry. Credentials kept in Secrets Manager reach their own account. A misconfigured access
gives ERROR findings naming it, never silence and never PASS.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest

from services.cli.client import RunRejectedError, run_check
from services.cli.stack import running_stack
from shared.accounts import Account, AssumeRoleAccess, SecretsManagerAccess, add_account, new_external_id
from shared.aws import AwsClients
from shared.credentials import CredentialSourceError, default_clients, refreshing_session, secret_fetcher
from shared.messages import RunState, Service, Status
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT, boto3_client
from tests.proxy import TcpProxy

ALPHA, BETA = "111111111111", "222222222222"
ROLE = "KushimAudit"


def member_client(endpoint: str, account: str, service: str) -> Any:
    """A boto3 client inside a member account of moto (an assumed role there), for seeding."""
    creds = boto3_client(endpoint, "sts").assume_role(
        RoleArn=f"arn:aws:iam::{account}:role/{ROLE}", RoleSessionName="seed"
    )["Credentials"]
    return boto3.client(
        service,
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def seed_member(endpoint: str, account: str, bucket: str, user: str) -> None:
    member_client(endpoint, account, "s3").create_bucket(Bucket=bucket)
    member_client(endpoint, account, "iam").create_user(UserName=user)


def role_account(account: str, name: str) -> Account:
    access = AssumeRoleAccess(
        kind="assume_role", role_arn=f"arn:aws:iam::{account}:role/{ROLE}", external_id=new_external_id()
    )
    return Account(id=account, name=name, access=access)


async def test_two_member_accounts_by_assume_role_each_see_only_their_own_resources(
    e2e_settings: Callable[..., Settings], moto_endpoint: str, tmp_path: Path, debug_log: io.StringIO
) -> None:
    seed_member(moto_endpoint, ALPHA, "alpha-data", "alice-alpha")
    seed_member(moto_endpoint, BETA, "beta-logs", "bob-beta")
    boto3_client(moto_endpoint, "s3").create_bucket(Bucket="hub-only-bucket")  # the hub's own: never reported
    registry = tmp_path / "accounts.toml"
    alpha, beta = role_account(ALPHA, "alpha"), role_account(BETA, "beta")
    add_account(registry, alpha)
    add_account(registry, beta)
    external_ids = {ALPHA: alpha.access.external_id, BETA: beta.access.external_id}  # type: ignore[union-attr]

    moto = urlsplit(moto_endpoint)
    async with TcpProxy(moto.hostname or "127.0.0.1", moto.port or 80, record=True) as proxy:
        settings = e2e_settings(aws_endpoint_url=proxy.url, accounts_file=registry)
        async with running_stack(settings, migrate=True) as stack:
            report = await run_check(
                stack.url, timeout=60, request_id="two-members", services=[Service.IAM, Service.S3]
            )
            with pytest.raises(RunRejectedError, match="333333333333 are not registered"):
                await run_check(stack.url, timeout=30, request_id="outsider", accounts=["333333333333"])
        assert proxy.sent is not None
        wire = bytes(proxy.sent).decode("latin-1")

    assert report.run.state is RunState.COMPLETE
    assert report.account_names == {ALPHA: "alpha", BETA: "beta"}  # the registry's names, mirrored for reports
    seen: dict[str, set[str]] = {}
    for finding in report.findings:
        seen.setdefault(finding.account_id, set()).add(finding.resource_id)
        if finding.resource_arn and ":iam::" in finding.resource_arn:
            assert f":iam::{finding.account_id}:" in finding.resource_arn
    assert set(seen) == {ALPHA, BETA}
    assert {r for r in seen[ALPHA] if r.startswith(("bucket/", "user/"))} == {"bucket/alpha-data", "user/alice-alpha"}
    assert {r for r in seen[BETA] if r.startswith(("bucket/", "user/"))} == {"bucket/beta-logs", "user/bob-beta"}
    assert not [f for f in report.findings if f.status is Status.ERROR]

    # The ExternalIds on the wire are exactly the stored ones, each sent with its own account's role.
    calls = re.findall(r"Action=AssumeRole&[^\r\n]*", wire)
    assert calls, "no AssumeRole request went through the proxy"
    sent: dict[str, str] = {}
    for call in calls:
        arn = re.search(r"RoleArn=arn%3Aaws%3Aiam%3A%3A([0-9]{12})%3A", call)
        external_id = re.search(r"ExternalId=([^&]+)", call)
        assert arn is not None, call
        assert external_id is not None, call
        sent[arn.group(1)] = external_id.group(1)
    assert sent == external_ids
    # An assumed role's credentials belong to the role's account (the registry refuses a role of another): the
    # collectors do not ask sts:GetCallerIdentity for them.
    assert "Action=GetCallerIdentity" not in wire
    # ExternalIds are kept out of logs (every logger at DEBUG, botocore's included).
    log_text = debug_log.getvalue()
    assert "role_assumed" in log_text
    for external_id in external_ids.values():
        assert external_id not in log_text


async def test_credentials_from_secrets_manager_reach_their_account(
    e2e_settings: Callable[..., Settings], moto_endpoint: str, tmp_path: Path
) -> None:
    seed_member(moto_endpoint, BETA, "beta-logs", "bob-beta")
    creds = boto3_client(moto_endpoint, "sts").assume_role(
        RoleArn=f"arn:aws:iam::{BETA}:role/{ROLE}", RoleSessionName="stored"
    )["Credentials"]
    secret = {
        "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
        "AWS_SESSION_TOKEN": creds["SessionToken"],
    }
    boto3_client(moto_endpoint, "secretsmanager").create_secret(Name="kushim/beta", SecretString=json.dumps(secret))
    registry = tmp_path / "accounts.toml"
    access = SecretsManagerAccess(kind="secrets_manager", secret_id="kushim/beta")
    add_account(registry, Account(id=BETA, name="beta", access=access))
    settings = e2e_settings(accounts_file=registry)
    async with running_stack(settings, migrate=True) as stack:
        report = await run_check(stack.url, timeout=60, request_id="from-secret", services=[Service.S3])
    assert report.run.state is RunState.COMPLETE
    assert {f.resource_id for f in report.findings} == {"bucket/beta-logs"}
    assert {f.account_id for f in report.findings} == {BETA}


async def test_credentials_of_another_account_give_error_findings_naming_it(
    e2e_settings: Callable[..., Settings], moto_endpoint: str, tmp_path: Path
) -> None:
    registry = tmp_path / "accounts.toml"
    add_account(registry, Account(id="999999999999", name="misfiled"))  # the default credentials are moto's account
    settings = e2e_settings(accounts_file=registry)
    async with running_stack(settings, migrate=True) as stack:
        report = await run_check(stack.url, timeout=60, request_id="misfiled", services=[Service.S3])
    assert report.run.state is RunState.COMPLETE
    assert report.findings
    assert {f.status for f in report.findings} == {Status.ERROR}
    assert all(f"belong to account {MOTO_ACCOUNT}" in f.summary for f in report.findings)
    assert report.run.controls[next(iter(report.run.controls))].status is Status.ERROR


async def test_default_credentials_from_a_secret_follow_its_rotation(moto_endpoint: str, tmp_path: Path) -> None:
    """KUSHIM_AWS_SECRET_ID: the default credentials come from Secrets Manager; the secret is read once per
    `refresh_seconds`, not per call, and a rotated secret is picked up at the next read."""
    secrets = boto3_client(moto_endpoint, "secretsmanager")

    def stored_for(account: str) -> str:
        creds = boto3_client(moto_endpoint, "sts").assume_role(
            RoleArn=f"arn:aws:iam::{account}:role/{ROLE}", RoleSessionName="stored"
        )["Credentials"]
        return json.dumps(
            {
                "aws_access_key_id": creds["AccessKeyId"],
                "aws_secret_access_key": creds["SecretAccessKey"],
                "aws_session_token": creds["SessionToken"],
            }
        )

    secrets.create_secret(Name="kushim/default", SecretString=stored_for(ALPHA))
    settings = Settings(_env_file=None, home=tmp_path, aws_endpoint_url=moto_endpoint, aws_secret_id="kushim/default")
    fresh = default_clients(settings)
    assert await fresh.caller_account() == ALPHA

    # A source whose reads are stamped 3 minutes early with a 1-minute refresh time: every use is past the refresh
    # time (but not expired), so every use reads the secret again.
    base = AwsClients(settings)
    access = SecretsManagerAccess(kind="secrets_manager", secret_id="kushim/default", refresh_seconds=60)
    past = datetime.now(UTC) - timedelta(minutes=3)
    stale = AwsClients(settings, refreshing_session(secret_fetcher(base, access, clock=lambda: past), "test"))
    assert await stale.caller_account() == ALPHA

    secrets.put_secret_value(SecretId="kushim/default", SecretString=stored_for(BETA))  # rotated
    assert await fresh.caller_account() == ALPHA  # within its refresh time: the keys read at first use
    assert await stale.caller_account() == BETA  # due: the rotated secret


async def test_a_secret_without_keys_is_a_clear_error(moto_endpoint: str, tmp_path: Path) -> None:
    boto3_client(moto_endpoint, "secretsmanager").create_secret(Name="kushim/bad", SecretString='{"user": "x"}')
    settings = Settings(_env_file=None, home=tmp_path, aws_endpoint_url=moto_endpoint, aws_secret_id="kushim/bad")
    with pytest.raises(CredentialSourceError, match="lacks AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") as caught:
        await default_clients(settings).caller_account()
    assert "x" not in str(caught.value).replace("kushim/bad", "")
