"""AWS Organizations discovery for `kushim accounts discover`: the organization's accounts, as typed records.

Needs the credentials of the organization's management account or of a delegated administrator, allowed
`organizations:DescribeOrganization` and `organizations:ListAccounts` (neither is part of `kushim policy`: the
checks never call Organizations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from shared.aws import AwsClients, classify_error

if TYPE_CHECKING:
    from types_aiobotocore_organizations.type_defs import AccountTypeDef

DISCOVERY_ACTIONS = ("organizations:DescribeOrganization", "organizations:ListAccounts")
ACTIVE = "ACTIVE"
_DENIED = frozenset({"AccessDenied", "AccessDeniedException"})


@dataclass(frozen=True, slots=True)
class OrganizationAccount:
    id: str
    name: str
    email: str
    state: str
    """ACTIVE, SUSPENDED, PENDING_CLOSURE or CLOSED (the older `Status` field when `State` is absent)."""

    @property
    def active(self) -> bool:
        return self.state == ACTIVE


@dataclass(frozen=True, slots=True)
class Organization:
    id: str
    partition: str
    """`aws`, `aws-cn`, `aws-us-gov`: the partition of the role ARNs Kushim assumes in member accounts."""
    management_account_id: str
    accounts: tuple[OrganizationAccount, ...]

    @property
    def active_accounts(self) -> list[OrganizationAccount]:
        return [a for a in self.accounts if a.active]


class DiscoveryError(Exception):
    """The organization could not be read; the message says why and what to grant (never a traceback)."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


def explain(operation: str, exc: BaseException) -> DiscoveryError:
    """A DiscoveryError naming the refused action and the permissions discovery needs."""
    action = f"organizations:{operation}"
    needs = " and ".join(DISCOVERY_ACTIONS)
    if isinstance(exc, NoCredentialsError):
        return DiscoveryError(
            "no AWS credentials found: run discover with the credentials of the organization's management account "
            "or of a delegated administrator",
            "NoCredentials",
        )
    failure = classify_error("organizations", operation, exc)
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(exc, ClientError) else None
    if failure.code in _DENIED or (status == 403 and failure.code == "403"):  # a 403 body botocore cannot parse
        code = failure.code if failure.code in _DENIED else "HTTP 403"
        return DiscoveryError(
            f"{action} was denied ({code}): discovery needs {needs}, with the credentials of the "
            "organization's management account or of a delegated administrator",
            code,
        )
    if failure.code == "AWSOrganizationsNotInUseException":
        return DiscoveryError(
            "the account of these credentials is not in an AWS Organization (AWSOrganizationsNotInUseException): "
            f"run discover with the management account's credentials (needs {needs})",
            failure.code,
        )
    return DiscoveryError(f"{action} failed ({failure.code}): {failure.message}", failure.code)


def _account(raw: AccountTypeDef) -> OrganizationAccount:
    account_id = raw.get("Id", "")
    return OrganizationAccount(
        id=account_id,
        name=raw.get("Name") or account_id,
        email=raw.get("Email", ""),
        state=raw.get("State") or raw.get("Status") or "UNKNOWN",
    )


async def describe_organization(aws: AwsClients) -> Organization:
    """The organization and every account in it (organizations:ListAccounts, all pages), whatever its state."""
    operation = "DescribeOrganization"
    try:
        async with aws.client("organizations") as client:
            organization = (await client.describe_organization())["Organization"]
            operation = "ListAccounts"
            accounts: list[OrganizationAccount] = []
            async for page in client.get_paginator("list_accounts").paginate():
                accounts.extend(_account(raw) for raw in page.get("Accounts", []))
    except (ClientError, BotoCoreError) as exc:
        raise explain(operation, exc) from None
    arn = str(organization.get("Arn", "arn:aws:organizations"))
    return Organization(
        id=str(organization.get("Id", "")),
        partition=arn.split(":")[1] if arn.count(":") >= 2 else "aws",
        management_account_id=str(organization.get("MasterAccountId", "")),
        accounts=tuple(sorted(accounts, key=lambda a: a.id)),
    )
