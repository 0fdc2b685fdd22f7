"""Which credentials reach which account: the default chain, an assumed role, or access keys in Secrets Manager.

`AccountAccess.clients(account_id)` gives the `AwsClients` of one account. Assumed-role and Secrets Manager
credentials are aiobotocore refreshable credentials: fetched on first use and again before they expire (an
assumed role's session lasts `duration_seconds`; a secret is re-read every `refresh_seconds`, so a rotated key is
picked up). The source of both is the default chain (`base`). Nothing here logs a credential or an ExternalId.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aiobotocore.credentials import AioDeferredRefreshableCredentials
from aiobotocore.session import AioSession, get_session

from shared.accounts import (
    Account,
    AssumeRoleAccess,
    DefaultAccess,
    Registry,
    RegistryFile,
    SecretsManagerAccess,
)
from shared.aws import AwsClients
from shared.settings import Settings

log = structlog.get_logger(__name__)

Metadata = dict[str, Any]
REFRESH_AHEAD = 15 * 60
"""botocore's advisory refresh window: refreshable credentials are fetched again this long before they expire."""

_KEY_NAMES = (
    ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"),
    ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"),
    ("AccessKeyId", "SecretAccessKey", "SessionToken"),
)


class CredentialSourceError(Exception):
    """A credential source answered with something unusable (the message never contains the secret)."""


class UnregisteredAccount(Exception):
    """The account is not in the registry (or, without one, not the account of the credentials)."""


def assume_role_fetcher(base: AwsClients, access: AssumeRoleAccess) -> Callable[[], Awaitable[Metadata]]:
    async def fetch() -> Metadata:
        async with base.client("sts") as sts:
            answer = await sts.assume_role(
                RoleArn=access.role_arn,
                RoleSessionName=access.session_name,
                ExternalId=access.external_id,
                DurationSeconds=access.duration_seconds,
            )
        creds = answer["Credentials"]
        log.info("role_assumed", role_arn=access.role_arn, expires_at=creds["Expiration"].isoformat())
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": creds["Expiration"].isoformat(),
        }

    return fetch


def secret_fetcher(
    base: AwsClients, access: SecretsManagerAccess, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> Callable[[], Awaitable[Metadata]]:
    async def fetch() -> Metadata:
        async with base.client("secretsmanager", access.region or _arn_region(access.secret_id)) as sm:
            answer = await sm.get_secret_value(SecretId=access.secret_id)
        text = answer.get("SecretString")
        if not text:
            raise CredentialSourceError(f"secret {access.secret_id} has no SecretString (binary secrets are not read)")
        try:
            data = json.loads(text)
        except ValueError:
            raise CredentialSourceError(f"secret {access.secret_id} is not JSON") from None
        if not isinstance(data, dict):
            raise CredentialSourceError(f"secret {access.secret_id} is not a JSON object")
        for key_id, secret_key, token in _KEY_NAMES:
            if isinstance(data.get(key_id), str) and isinstance(data.get(secret_key), str):
                log.info("credentials_read_from_secret", secret_id=access.secret_id)
                return {
                    "access_key": data[key_id],
                    "secret_key": data[secret_key],
                    "token": data.get(token) if isinstance(data.get(token), str) else None,
                    # botocore refreshes credentials 15 minutes before they expire: stamped this way, the secret
                    # is read again `refresh_seconds` from now (a failed re-read keeps the keys until then + 5 min).
                    "expiry_time": (clock() + timedelta(seconds=access.refresh_seconds + REFRESH_AHEAD)).isoformat(),
                }
        raise CredentialSourceError(
            f"secret {access.secret_id} lacks AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or aws_access_key_id / "
            "aws_secret_access_key, or AccessKeyId / SecretAccessKey)"
        )

    return fetch


def _arn_region(secret_id: str) -> str | None:
    """The region of a secret given by ARN (arn:aws:secretsmanager:<region>:...), read there; None for a name."""
    parts = secret_id.split(":")
    return parts[3] or None if secret_id.startswith("arn:") and len(parts) > 3 else None


def refreshing_session(
    fetch: Callable[[], Awaitable[Metadata]], method: str, like: AwsClients | None = None
) -> AioSession:
    """A session whose credentials come from `fetch`, called on first use and again before they expire. With `like`,
    it shares that session's botocore data loader: a new loader re-reads the service models, about 250 ms of CPU
    for an account's first scan on each replica (measured in the scale-out benchmark)."""
    session = get_session()
    if like is not None:
        session.register_component("data_loader", like.session.get_component("data_loader"))
    # aiobotocore has no public setter for refreshable credentials; a session's resolved credentials live here.
    session._credentials = AioDeferredRefreshableCredentials(  # type: ignore[attr-defined]
        refresh_using=fetch, method=method
    )
    return session


def default_clients(settings: Settings) -> AwsClients:
    """The clients of the default credentials: the chain, or (KUSHIM_AWS_SECRET_ID) keys kept in Secrets Manager."""
    base = AwsClients(settings)
    if not settings.aws_secret_id:
        return base
    access = SecretsManagerAccess(kind="secrets_manager", secret_id=settings.aws_secret_id)
    return AwsClients(settings, refreshing_session(secret_fetcher(base, access), "secrets-manager", like=base))


class AccountAccess:
    """The AWS clients of each account Kushim checks, built once per account and access configuration."""

    def __init__(self, settings: Settings, base: AwsClients, registry: RegistryFile | None) -> None:
        self._settings = settings
        self._base = base
        self._registry = registry
        self._clients: dict[tuple[str, str], AwsClients] = {}
        self._caller: str | None = None
        self._lock = asyncio.Lock()

    @property
    def base(self) -> AwsClients:
        return self._base

    def registry(self) -> Registry | None:
        return self._registry.current() if self._registry is not None else None

    async def caller_account(self) -> str:
        async with self._lock:
            if self._caller is None:
                self._caller = await self._base.caller_account()
                log.info("account_resolved", account_id=self._caller)
            return self._caller

    async def known_accounts(self) -> frozenset[str]:
        """The registered accounts; without a registry, the account the default credentials belong to."""
        registry = self.registry()
        if registry is not None:
            return registry.ids
        return frozenset({await self.caller_account()})

    async def clients(self, account_id: str) -> AwsClients:
        registry = self.registry()
        if registry is None:
            own = await self.caller_account()
            if account_id != own:
                raise UnregisteredAccount(f"account {account_id} is not the account of these credentials ({own})")
            return self._base
        account = registry.account(account_id)
        if account is None:
            raise UnregisteredAccount(f"account {account_id} is not in the account registry")
        access = account.access
        if isinstance(access, DefaultAccess):
            return self._base
        key = (account_id, access.model_dump_json())
        clients = self._clients.get(key)
        if clients is None:
            if isinstance(access, AssumeRoleAccess):
                session = refreshing_session(assume_role_fetcher(self._base, access), "assume-role", like=self._base)
            else:
                session = refreshing_session(secret_fetcher(self._base, access), "secrets-manager", like=self._base)
            clients = self._clients[key] = AwsClients(self._settings, session)
        return clients

    def _registered(self, account_id: str) -> Account | None:
        """The account's registry entry; None without a registry or when it is not registered."""
        registry = self.registry()
        return registry.account(account_id) if registry is not None else None

    def names_its_account(self, account_id: str) -> bool:
        """Do the account's credentials belong to it without asking sts:GetCallerIdentity? An assumed role's do: STS
        hands out credentials of the role's own account, and the registry refuses a role ARN of another account."""
        account = self._registered(account_id)
        return account is not None and isinstance(account.access, AssumeRoleAccess)

    def describe_access(self, account_id: str) -> str:
        """How the account is reached, for messages (never the ExternalId)."""
        account = self._registered(account_id)
        if account is None or isinstance(account.access, DefaultAccess):
            return "the default credentials"
        if isinstance(account.access, AssumeRoleAccess):
            return f"role {account.access.role_arn} (sts:AssumeRole with its ExternalId)"
        return f"the access keys in secret {account.access.secret_id}"

    def regions(self, account_id: str) -> list[str] | None:
        """The account's own regions from the registry (["all"] for discovery), or None for KUSHIM_REGIONS."""
        account = self._registered(account_id)
        return list(account.regions) if account is not None and account.regions else None


def account_access(settings: Settings, aws: AwsClients | None = None) -> AccountAccess:
    """The composition of a service's AWS access: the default clients (or those given) and the registry file."""
    return AccountAccess(settings, aws or default_clients(settings), RegistryFile(settings.registry_path))
