"""`kushim accounts`: the registry round trip on a temporary file, ExternalIds and trust policies, and AWS
Organizations discovery against moto's server (with its IAM enforcement for a denial)."""

from __future__ import annotations

import json
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from typer.testing import CliRunner, Result

from services.cli.accounts_cmd import MANAGEMENT, NEW, REGISTERED, discovery_plan
from services.cli.main import app as cli
from shared.accounts import load_registry, trust_policy
from shared.organizations import Organization, OrganizationAccount, explain
from tests.conftest import MOTO_ACCOUNT, boto3_client

PRODUCTION = "111111111111"
STAGING = "222222222222"
PRINCIPAL = "arn:aws:iam::999999999999:root"


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    return tmp_path / "registry" / "accounts.toml"


def kushim(path: Path, *args: str, endpoint: str | None = None, **env: str) -> Result:
    values = {"KUSHIM_ACCOUNTS_FILE": str(path), **env}
    if endpoint is not None:
        values["AWS_ENDPOINT_URL"] = endpoint
    return CliRunner().invoke(cli, ["accounts", *args], env=values)


def raw(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def external_ids(path: Path) -> dict[str, str]:
    return {a["id"]: a["access"]["external_id"] for a in raw(path)["accounts"] if "external_id" in a.get("access", {})}


def policy_in(stdout: str) -> Any:
    """The trust policy JSON that ends the output."""
    return json.loads(stdout[stdout.index("{") :] if stdout.startswith("{") else stdout[stdout.index("\n{") + 1 :])


def assert_trust_policy(document: Any, principal: str, external_id: str) -> None:
    assert document == trust_policy(principal, external_id)
    statement = document["Statement"][0]
    assert statement["Principal"] == {"AWS": principal}
    assert statement["Action"] == "sts:AssumeRole"
    assert statement["Condition"] == {"StringEquals": {"sts:ExternalId": external_id}}


# --- add / list / external-id / remove --------------------------------------------------------


def test_add_list_external_id_and_remove_round_trip(registry_file: Path) -> None:
    added = kushim(
        registry_file,
        "add",
        PRODUCTION,
        "--name",
        "production",
        "--role-name",
        "KushimAudit",
        "--regions",
        "us-east-1,eu-west-1",
        "--schedule",
        "0 3 * * *",
        "--timezone",
        "Europe/Berlin",
        "--principal",
        PRINCIPAL,
    )
    assert added.exit_code == 0, added.output
    [account] = raw(registry_file)["accounts"]
    assert account["access"]["role_arn"] == f"arn:aws:iam::{PRODUCTION}:role/KushimAudit"
    assert (account["regions"], account["schedule"], account["timezone"]) == (
        ["us-east-1", "eu-west-1"],
        "0 3 * * *",
        "Europe/Berlin",
    )
    external_id = account["access"]["external_id"]
    assert external_id.startswith("kushim-")
    assert len(external_id) > 30
    assert_trust_policy(policy_in(added.stdout), PRINCIPAL, external_id)
    assert "kushim policy" in added.stdout  # the next steps

    # external-id: the ExternalId on stderr, the trust policy alone on stdout
    shown = kushim(registry_file, "external-id", PRODUCTION, "--principal", PRINCIPAL)
    assert shown.exit_code == 0, shown.output
    assert_trust_policy(json.loads(shown.stdout), PRINCIPAL, external_id)
    assert external_id in shown.stderr

    # a second account by default credentials, one by Secrets Manager
    assert kushim(registry_file, "add", STAGING, "--name", "staging").exit_code == 0
    secret = kushim(registry_file, "add", "333333333333", "--name", "dev", "--secret-id", "kushim/dev")
    assert secret.exit_code == 0, secret.output
    registry = load_registry(registry_file)
    assert registry is not None
    assert [a.access.kind for a in registry.accounts] == ["assume_role", "default", "secrets_manager"]

    # --replace keeps the ExternalId (the customer's trust policy stays valid)
    again = kushim(
        registry_file, "add", PRODUCTION, "--name", "prod", "--role-name", "KushimAudit", "--principal", PRINCIPAL
    )
    assert again.exit_code == 2
    assert "--replace" in again.stderr
    replaced = kushim(
        registry_file,
        "add",
        PRODUCTION,
        "--name",
        "prod",
        "--role-name",
        "KushimAudit",
        "--replace",
        "--principal",
        PRINCIPAL,
    )
    assert replaced.exit_code == 0, replaced.output
    assert external_ids(registry_file)[PRODUCTION] == external_id
    assert "unchanged" in replaced.stdout
    assert raw(registry_file)["accounts"][0]["name"] == "prod"

    # --new-external-id rotates it and says the trust policy must change
    rotated = kushim(
        registry_file,
        "add",
        PRODUCTION,
        "--name",
        "prod",
        "--role-name",
        "KushimAudit",
        "--replace",
        "--new-external-id",
        "--principal",
        PRINCIPAL,
    )
    assert rotated.exit_code == 0, rotated.output
    new_id = external_ids(registry_file)[PRODUCTION]
    assert new_id != external_id
    assert "trust policy" in rotated.stderr
    assert_trust_policy(policy_in(rotated.stdout), PRINCIPAL, new_id)

    # list: every account, never an ExternalId
    assert kushim(registry_file, "tenant", "add", "billing", "--account", PRODUCTION).exit_code == 0
    table = kushim(registry_file, "list")
    assert table.exit_code == 0, table.output
    for expected in (PRODUCTION, STAGING, "333333333333", "assume_role", "secrets_manager", "billing"):
        assert expected in table.stdout
    listed = kushim(registry_file, "list", "--json")
    assert listed.exit_code == 0, listed.output
    document = json.loads(listed.stdout)
    assert [a["id"] for a in document["accounts"]] == [PRODUCTION, STAGING, "333333333333"]
    assert document["accounts"][0]["access"]["role_arn"] == f"arn:aws:iam::{PRODUCTION}:role/KushimAudit"
    assert document["accounts"][0]["tenants"] == ["billing"]
    assert document["accounts"][0]["regions"] == []  # --replace rewrote the entry from its options
    for output in (table.output.replace(str(registry_file), ""), listed.output.replace(str(registry_file), "")):
        assert new_id not in output
        assert "external_id" not in output
        assert "kushim-" not in output

    # remove: the tenant that lost its only account goes too
    removed = kushim(registry_file, "remove", PRODUCTION)
    assert removed.exit_code == 0, removed.output
    assert "billing" in removed.stdout
    registry = load_registry(registry_file)
    assert registry is not None
    assert registry.ids == {STAGING, "333333333333"}
    assert registry.tenants == []
    missing = kushim(registry_file, "remove", PRODUCTION)
    assert missing.exit_code == 2
    assert "not registered" in missing.stderr


def test_external_id_trusts_the_account_of_kushims_credentials_by_default(
    registry_file: Path, moto_endpoint: str
) -> None:
    added = kushim(
        registry_file,
        "add",
        PRODUCTION,
        "--name",
        "p",
        "--role-arn",
        f"arn:aws:iam::{PRODUCTION}:role/audit/Kushim",
        endpoint=moto_endpoint,
    )
    assert added.exit_code == 0, added.output
    external_id = external_ids(registry_file)[PRODUCTION]
    assert_trust_policy(policy_in(added.stdout), f"arn:aws:iam::{MOTO_ACCOUNT}:root", external_id)
    shown = kushim(registry_file, "external-id", PRODUCTION, endpoint=moto_endpoint)
    assert shown.exit_code == 0, shown.output
    assert_trust_policy(json.loads(shown.stdout), f"arn:aws:iam::{MOTO_ACCOUNT}:root", external_id)
    assert "--role-name Kushim " in shown.stderr  # the role's name, without its path


def test_a_role_of_another_account_is_refused(registry_file: Path) -> None:
    refused = kushim(
        registry_file, "add", PRODUCTION, "--name", "p", "--role-arn", f"arn:aws:iam::{STAGING}:role/KushimAudit"
    )
    assert refused.exit_code == 2
    assert f"belongs to account {STAGING}, not {PRODUCTION}" in refused.stderr
    assert not registry_file.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "1234", "--name", "x"], "exactly 12 digits"),
        (["add", PRODUCTION, "--name", "x", "--role-name", "R", "--role-arn", "arn:aws:iam::1:role/R"], "not both"),
        (["add", PRODUCTION, "--name", "x", "--role-name", "R", "--secret-id", "s"], "not both"),
        (["add", PRODUCTION, "--name", "x", "--session-name", "s"], "applies to a role"),
        (["add", PRODUCTION, "--name", "x", "--role-arn", "not-an-arn"], "not an IAM role ARN"),
        (["add", PRODUCTION, "--name", "x", "--schedule", "every day"], "schedule"),
        (["add", PRODUCTION, "--name", "x", "--timezone", "Mars/Olympus"], "IANA time zone"),
        (["add", PRODUCTION, "--name", "x", "--regions", "us-east-1,all"], "all"),
        (["add", PRODUCTION, "--name", "x", "--role-name", "R", "--principal", "someone"], "principal"),
        (["external-id", PRODUCTION], "no account registry"),
        (["discover", "--add"], "--role-name"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(registry_file: Path, args: list[str], message: str) -> None:
    result = kushim(registry_file, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert not registry_file.exists()


def test_an_invalid_registry_file_is_named(registry_file: Path) -> None:
    registry_file.parent.mkdir(parents=True)
    registry_file.write_text('[[accounts]]\nid = "12"\nname = "short"\n')
    for args in (["list"], ["add", PRODUCTION, "--name", "x"], ["external-id", PRODUCTION], ["remove", PRODUCTION]):
        result = kushim(registry_file, *args)
        assert result.exit_code == 2, result.output
        assert str(registry_file) in result.stderr.replace("\n", "")
        assert "Traceback" not in result.output
    registry_file.write_text("not = [toml")
    result = kushim(registry_file, "list")
    assert result.exit_code == 2
    assert "not valid TOML" in result.stderr


def test_external_id_needs_an_assume_role_account(registry_file: Path) -> None:
    assert kushim(registry_file, "add", PRODUCTION, "--name", "p").exit_code == 0
    result = kushim(registry_file, "external-id", PRODUCTION, "--principal", PRINCIPAL)
    assert result.exit_code == 2
    assert "no ExternalId" in result.stderr
    unknown = kushim(registry_file, "external-id", STAGING, "--principal", PRINCIPAL)
    assert unknown.exit_code == 2
    assert "not registered" in unknown.stderr


def test_list_without_a_registry_explains_single_account_mode(registry_file: Path) -> None:
    result = kushim(registry_file, "list")
    assert result.exit_code == 0
    assert "account its credentials belong to" in result.stderr
    assert "kushim accounts add" in result.stderr
    assert json.loads(kushim(registry_file, "list", "--json").stdout)["accounts"] == []


def test_tenants(registry_file: Path) -> None:
    assert kushim(registry_file, "add", PRODUCTION, "--name", "p").exit_code == 0
    assert kushim(registry_file, "add", STAGING, "--name", "s").exit_code == 0
    unknown = kushim(registry_file, "tenant", "add", "billing", "-a", "333333333333")
    assert unknown.exit_code == 2
    assert "333333333333" in unknown.stderr
    bad_name = kushim(registry_file, "tenant", "add", "Billing!", "-a", PRODUCTION)
    assert bad_name.exit_code == 2
    assert "not a tenant name" in bad_name.stderr

    created = kushim(registry_file, "tenant", "add", "billing", "-a", PRODUCTION)
    assert created.exit_code == 0, created.output
    assert "kushim.runs.requested.billing" in created.stdout
    assert "user: billing" in created.stdout
    extended = kushim(registry_file, "tenant", "add", "billing", "-a", STAGING, "-a", PRODUCTION)
    assert extended.exit_code == 0, extended.output
    registry = load_registry(registry_file)
    assert registry is not None
    tenant = registry.tenant("billing")
    assert tenant is not None
    assert tenant.accounts == [PRODUCTION, STAGING]

    removed = kushim(registry_file, "remove", PRODUCTION)
    assert "Tenant billing may no longer request runs for it" in removed.stdout
    assert kushim(registry_file, "tenant", "remove", "billing").exit_code == 0
    assert kushim(registry_file, "tenant", "remove", "billing").exit_code == 2
    registry = load_registry(registry_file)
    assert registry is not None
    assert registry.tenants == []


# --- AWS Organizations discovery --------------------------------------------------------------


def organization(endpoint: str, members: int) -> dict[str, str]:
    """An organization whose management account is moto's default account; returns member id -> name."""
    org = boto3_client(endpoint, "organizations")
    org.create_organization(FeatureSet="ALL")
    created = {}
    for index in range(members):
        status = org.create_account(Email=f"member{index}@example.com", AccountName=f"member-{index}")
        created[status["CreateAccountStatus"]["AccountId"]] = f"member-{index}"
    return created


def test_discover_lists_and_adds_the_member_accounts(registry_file: Path, moto_endpoint: str) -> None:
    members = organization(moto_endpoint, 3)
    listed = kushim(registry_file, "discover", endpoint=moto_endpoint)
    assert listed.exit_code == 0, listed.output
    for account_id, name in members.items():
        assert account_id in listed.stdout
        assert name in listed.stdout
    assert MOTO_ACCOUNT in listed.stdout
    assert "--include-management" in listed.stdout
    assert "3 not registered" in listed.stdout
    assert not registry_file.exists()

    added = kushim(registry_file, "discover", "--role-name", "KushimAudit", "--add", endpoint=moto_endpoint)
    assert added.exit_code == 0, added.output
    registry = load_registry(registry_file)
    assert registry is not None
    assert registry.ids == set(members)
    for account in registry.accounts:
        assert account.name == members[account.id]
        assert account.access.kind == "assume_role"
        assert account.access.role_arn == f"arn:aws:iam::{account.id}:role/KushimAudit"
        assert f"kushim accounts external-id {account.id}" in added.stdout
    ids = external_ids(registry_file)
    assert len(set(ids.values())) == 3
    assert not any(value in added.output for value in ids.values())

    again = kushim(registry_file, "discover", "--role-name", "KushimAudit", "--add", endpoint=moto_endpoint)
    assert again.exit_code == 0, again.output
    assert external_ids(registry_file) == ids
    assert "3 already registered" in again.stdout
    assert "added" not in again.stdout

    management = kushim(
        registry_file,
        "discover",
        "--role-name",
        "KushimAudit",
        "--add",
        "--include-management",
        endpoint=moto_endpoint,
    )
    assert management.exit_code == 0, management.output
    registry = load_registry(registry_file)
    assert registry is not None
    assert registry.ids == {*members, MOTO_ACCOUNT}


def test_discover_outside_an_organization_says_so(registry_file: Path, moto_endpoint: str) -> None:
    result = kushim(registry_file, "discover", "--role-name", "KushimAudit", "--add", endpoint=moto_endpoint)
    assert result.exit_code == 4
    assert "AWSOrganizationsNotInUseException" in result.stderr
    assert "organizations:ListAccounts" in result.stderr
    assert "Traceback" not in result.output
    assert not registry_file.exists()


def _reset_auth(endpoint: str, count: str) -> None:
    """moto enforces IAM after `count` unauthenticated requests ("inf" turns enforcement off again)."""
    req = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth", data=count.encode(), method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


@pytest.fixture
def member_credentials(moto_endpoint: str) -> Iterator[dict[str, str]]:
    """Credentials allowed organizations:DescribeOrganization but not ListAccounts, with moto enforcing IAM."""
    organization(moto_endpoint, 1)
    iam = boto3_client(moto_endpoint, "iam")
    iam.create_user(UserName="kushim-discovery")
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": ["organizations:DescribeOrganization"], "Resource": "*"}],
    }
    iam.put_user_policy(UserName="kushim-discovery", PolicyName="partial", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName="kushim-discovery")["AccessKey"]
    _reset_auth(moto_endpoint, "0")
    try:
        yield {
            "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
            "AWS_SESSION_TOKEN": "",
        }
    finally:
        _reset_auth(moto_endpoint, "inf")


def test_discover_names_the_denied_permission(
    registry_file: Path, moto_endpoint: str, member_credentials: dict[str, str]
) -> None:
    result = kushim(registry_file, "discover", endpoint=moto_endpoint, **member_credentials)
    assert result.exit_code == 4, result.output
    assert "organizations:ListAccounts was denied" in result.stderr
    assert "management account" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("code", "status", "expected", "names_permissions"),
    [
        ("AccessDeniedException", 400, "organizations:ListAccounts was denied (AccessDeniedException)", True),
        ("AWSOrganizationsNotInUseException", 400, "not in an AWS Organization", True),
        ("InvalidClientTokenId", 403, "organizations:ListAccounts failed (InvalidClientTokenId): bad token", False),
        ("TooManyRequestsException", 400, "organizations:ListAccounts failed (TooManyRequestsException)", False),
    ],
)
def test_organizations_errors_are_explained(code: str, status: int, expected: str, names_permissions: bool) -> None:
    response: Any = {"Error": {"Code": code, "Message": "bad token"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    error = ClientError(response, "ListAccounts")
    explained = explain("ListAccounts", error)
    assert expected in str(explained)
    assert explained.code == code
    needs = "organizations:DescribeOrganization and organizations:ListAccounts"
    assert (needs in str(explained)) is names_permissions


def test_discovery_plan_skips_inactive_accounts_and_the_management_account() -> None:
    org = Organization(
        id="o-example",
        partition="aws",
        management_account_id=MOTO_ACCOUNT,
        accounts=(
            OrganizationAccount(MOTO_ACCOUNT, "management", "m@example.com", "ACTIVE"),
            OrganizationAccount(PRODUCTION, "production", "p@example.com", "ACTIVE"),
            OrganizationAccount(STAGING, "staging", "s@example.com", "ACTIVE"),
            OrganizationAccount("333333333333", "closed", "c@example.com", "SUSPENDED"),
        ),
    )
    plan = discovery_plan(org, frozenset({STAGING}), include_management=False)
    assert [(e.account_id, e.status) for e in plan] == [
        (MOTO_ACCOUNT, MANAGEMENT),
        (PRODUCTION, NEW),
        (STAGING, REGISTERED),
    ]
    with_management = discovery_plan(org, frozenset(), include_management=True)
    assert [e.status for e in with_management] == [NEW, NEW, NEW]
    assert with_management[0].management
