"""The account registry: the single source of truth for which AWS accounts Kushim checks, how it reaches each one,
its regions and schedule, and which tenants may request runs for which accounts.

A TOML file (`KUSHIM_ACCOUNTS_FILE`, default `$KUSHIM_HOME/accounts.toml`; on Kubernetes a ConfigMap). Without
the file, Kushim checks the one account its credentials belong to. `kushim accounts add|list|remove|external-id`
edits and reads it (comments and layout are kept); services re-read it when it changes.

```toml
schema_version = 1

[[accounts]]
id = "111111111111"
name = "production"
regions = ["us-east-1", "eu-west-1"]     # optional: default KUSHIM_REGIONS; ["all"]: every enabled region
schedule = "0 3 * * *"                   # optional: default KUSHIM_SCHEDULE
timezone = "Europe/Berlin"               # optional: default KUSHIM_SCHEDULE_TIMEZONE
access = { kind = "assume_role", role_arn = "arn:aws:iam::111111111111:role/KushimAudit", external_id = "..." }

[[tenants]]
name = "billing"                         # publishes on kushim.runs.requested.billing
accounts = ["111111111111"]
```

The ExternalId is an identifier Kushim generates (never taken from a message); it is not a secret, but it is kept
out of logs.
"""

from __future__ import annotations

import os
import secrets
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import structlog
import tomlkit
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from shared.messages import AccountId

log = structlog.get_logger(__name__)

ALL_REGIONS = "all"
RoleArn = Annotated[str, StringConstraints(pattern=r"^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9_+=,.@/-]+$")]
ExternalId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+=,.@:/-]+$", min_length=2, max_length=1224)]
TenantName = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
RegionOrAll = Annotated[str, StringConstraints(pattern=r"^([a-z]{2}(-[a-z]+)+-[0-9]|all)$")]


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class DefaultAccess(_Strict):
    """The default credential chain: the guide's access keys, a profile, IRSA, EKS Pod Identity."""

    kind: Literal["default"] = "default"


class AssumeRoleAccess(_Strict):
    """sts:AssumeRole into a role of the account, with the ExternalId Kushim generated; credentials refresh."""

    kind: Literal["assume_role"]
    role_arn: RoleArn
    external_id: ExternalId
    session_name: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_+=,.@-]{2,64}$")] = "kushim"
    duration_seconds: int = Field(
        3600,
        ge=1800,
        le=43200,
        description="Session length; credentials are renewed 15 minutes before they expire, so at least 30 minutes.",
    )


class SecretsManagerAccess(_Strict):
    """Access keys kept in AWS Secrets Manager (read with the default chain, re-read every `refresh_seconds`).

    The secret is JSON with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY` (optionally `AWS_SESSION_TOKEN`).
    """

    kind: Literal["secrets_manager"]
    secret_id: Annotated[str, StringConstraints(min_length=1, max_length=2048)]
    region: Annotated[str, StringConstraints(pattern=r"^[a-z]{2}(-[a-z]+)+-[0-9]$")] | None = None
    refresh_seconds: int = Field(900, ge=60, le=86_400)


Access = Annotated[DefaultAccess | AssumeRoleAccess | SecretsManagerAccess, Field(discriminator="kind")]


class Account(_Strict):
    id: AccountId
    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    regions: list[RegionOrAll] = Field(default_factory=list)
    schedule: str | None = None
    timezone: str | None = None
    access: Access = Field(default_factory=DefaultAccess)

    @model_validator(mode="after")
    def _role_in_account(self) -> Account:
        if isinstance(self.access, AssumeRoleAccess):
            role_account = self.access.role_arn.split(":")[4]
            if role_account != self.id:
                raise ValueError(
                    f"account {self.id}: role {self.access.role_arn} is in account {role_account}; the role Kushim "
                    "assumes must be in the account it checks"
                )
        return self

    @field_validator("regions")
    @classmethod
    def _all_alone(cls, value: list[str]) -> list[str]:
        if ALL_REGIONS in value and value != [ALL_REGIONS]:
            raise ValueError('"all" stands alone: regions = ["all"]')
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and (len(value.split()) != 5 or not croniter.is_valid(value)):
            raise ValueError(f"{value!r} is not a 5-field cron expression (minute hour day month weekday)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"{value!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return value


class Tenant(_Strict):
    """Another system allowed to request runs for some accounts: it publishes on `kushim.runs.requested.<name>`
    (the NATS server lets its user publish nowhere else) and hears back on `kushim.runs.completed.<name>` and
    `kushim.runs.rejected.<name>`."""

    name: TenantName
    accounts: list[AccountId] = Field(min_length=1)


class Registry(_Strict):
    schema_version: Literal[1] = 1
    accounts: list[Account] = Field(default_factory=list)
    tenants: list[Tenant] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Registry:
        seen: set[str] = set()
        for account in self.accounts:
            if account.id in seen:
                raise ValueError(f"account {account.id} is listed twice")
            seen.add(account.id)
        names: set[str] = set()
        for tenant in self.tenants:
            if tenant.name in names:
                raise ValueError(f"tenant {tenant.name} is listed twice")
            names.add(tenant.name)
            unknown = sorted(set(tenant.accounts) - seen)
            if unknown:
                raise ValueError(f"tenant {tenant.name} lists unregistered account(s) {', '.join(unknown)}")
        return self

    @property
    def ids(self) -> frozenset[str]:
        return frozenset(account.id for account in self.accounts)

    def account(self, account_id: str) -> Account | None:
        return next((a for a in self.accounts if a.id == account_id), None)

    def tenant(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)


class RegistryError(Exception):
    """The registry file cannot be read or is invalid; the message names the file and the reason."""


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "file"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts[:5])


def parse_registry(text: str, source: str = "registry") -> Registry:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{source} is not valid TOML: {exc}") from None
    try:
        return Registry.model_validate(data)
    except ValidationError as exc:
        raise RegistryError(f"{source} is invalid: {_describe(exc)}") from None


def load_registry(path: Path) -> Registry | None:
    """The registry in `path`, or None when the file does not exist (single-account mode)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RegistryError(f"cannot read the account registry {path}: {exc.strerror}") from None
    return parse_registry(text, str(path))


def new_external_id() -> str:
    """A fresh ExternalId: 32 random URL-safe characters after a recognisable prefix."""
    return "kushim-" + secrets.token_urlsafe(24)


# --- editing (comments and layout of the file are kept) -------------------------------------


def _document(path: Path) -> tomlkit.TOMLDocument:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        doc = tomlkit.document()
        doc.add(tomlkit.comment("Kushim account registry: see `kushim accounts --help` and the README."))
        doc.add("schema_version", 1)
        doc.add(tomlkit.nl())
        return doc
    parse_registry(text, str(path))  # refuse to edit a file that is already invalid
    return tomlkit.parse(text)


def _write(path: Path, doc: tomlkit.TOMLDocument) -> Registry:
    text = tomlkit.dumps(doc)
    if not text.endswith("\n"):
        text += "\n"
    registry = parse_registry(text, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o644
    # Written beside the file and renamed over it: a reader (a service re-reading it) sees the old or the new file,
    # never half of one. The file keeps its permissions.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, mode)
    tmp.replace(path)
    return registry


def _account_table(account: Account) -> Any:
    table = tomlkit.table()
    for key, value in account.model_dump(mode="json", exclude_defaults=True, exclude={"access"}).items():
        table.add(key, value)
    if not isinstance(account.access, DefaultAccess):
        inline = tomlkit.inline_table()
        inline.update(account.access.model_dump(mode="json", exclude_defaults=True) | {"kind": account.access.kind})
        table.add("access", inline)
    return table


def add_account(path: Path, account: Account, *, replace: bool = False) -> Registry:
    doc = _document(path)
    accounts = doc.get("accounts")
    if accounts is None:
        accounts = tomlkit.aot()
        doc.add("accounts", accounts)
    for index, existing in enumerate(accounts):
        if existing.get("id") == account.id:
            if not replace:
                raise RegistryError(f"account {account.id} is already registered in {path}")
            accounts[index] = _account_table(account)
            return _write(path, doc)
    accounts.append(_account_table(account))
    return _write(path, doc)


def remove_account(path: Path, account_id: str) -> tuple[Registry, list[str]]:
    """Remove the account and drop it from every tenant's allow-list; returns the tenants that lost it (a tenant
    left with no account is removed too)."""
    if not path.exists():
        raise RegistryError(f"there is no account registry at {path}")
    doc = _document(path)
    accounts = doc.get("accounts") or []
    keep = [a for a in accounts if a.get("id") != account_id]
    if len(keep) == len(accounts):
        raise RegistryError(f"account {account_id} is not registered in {path}")
    new_accounts = tomlkit.aot()
    for table in keep:
        new_accounts.append(table)
    doc["accounts"] = new_accounts
    touched: list[str] = []
    tenants = doc.get("tenants")
    if tenants is not None:
        new_tenants = tomlkit.aot()
        for tenant in tenants:
            allowed = [a for a in tenant.get("accounts", []) if a != account_id]
            if len(allowed) != len(tenant.get("accounts", [])):
                touched.append(str(tenant.get("name")))
                tenant["accounts"] = allowed
            if allowed:
                new_tenants.append(tenant)
        doc["tenants"] = new_tenants
    return _write(path, doc), touched


# --- what services read -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: tuple[int, int, int] | None
    registry: Registry | None


class RegistryFile:
    """The registry as services see it: re-read when the file changes (a ConfigMap update), the last good version
    kept (and the problem logged) when a change is invalid."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._loaded: _Loaded | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> Registry | None:
        """The registry now; raises RegistryError only when no valid version was ever read."""
        stamp = self._stamp()
        if self._loaded is not None and self._loaded.stamp == stamp:
            return self._loaded.registry
        if stamp is None and self._loaded is not None and self._loaded.registry is not None:
            # A vanished file (a ConfigMap being recreated, a wrong mount) is not "back to one account": the last
            # registry stays in force until the file is back; going without a registry needs a restart.
            log.error("account_registry_missing", path=str(self.path), keeping="previous version")
            return self._loaded.registry
        try:
            registry = load_registry(self.path)
        except RegistryError as exc:
            if self._loaded is None:
                raise
            log.error("account_registry_invalid", path=str(self.path), reason=str(exc), keeping="previous version")
            return self._loaded.registry
        if self._loaded is not None:
            log.info(
                "account_registry_reloaded", path=str(self.path), accounts=len(registry.accounts) if registry else 0
            )
        self._loaded = _Loaded(stamp, registry)
        return registry


def trust_policy(principal_arn: str, external_id: str) -> dict[str, Any]:
    """The trust policy the customer attaches to Kushim's role in their account."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": principal_arn},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
            }
        ],
    }


# --- batch and tenant edits (`kushim accounts discover --add`, `kushim accounts tenant`) ----------


def add_accounts(path: Path, new: list[Account]) -> Registry:
    """Register several accounts in one edit; an id already registered is refused (nothing is written then)."""
    doc = _document(path)
    accounts = doc.get("accounts")
    if accounts is None:
        accounts = tomlkit.aot()
        doc.add("accounts", accounts)
    registered = {str(existing.get("id")) for existing in accounts}
    for account in new:
        if account.id in registered:
            raise RegistryError(f"account {account.id} is already registered in {path}")
        registered.add(account.id)
        accounts.append(_account_table(account))
    return _write(path, doc)


def add_tenant(path: Path, name: str, account_ids: list[str]) -> tuple[Registry, bool]:
    """Create the tenant with these accounts, or add them to an existing tenant's allow-list; returns the registry
    and whether the tenant is new. Every account must be registered."""
    try:
        TypeAdapter(TenantName).validate_python(name)
    except ValidationError:
        raise RegistryError(
            f"{name!r} is not a tenant name: lower-case letters, digits, '-' and '_', at most 64, "
            "starting with a letter or digit"
        ) from None
    if not account_ids:
        raise RegistryError(f"tenant {name} needs at least one account")
    if not path.exists():
        raise RegistryError(f"there is no account registry at {path}: register the accounts first")
    doc = _document(path)
    registered = {str(a.get("id")) for a in doc.get("accounts") or []}
    unknown = sorted(set(account_ids) - registered)
    if unknown:
        raise RegistryError(f"account(s) {', '.join(unknown)} not registered in {path}")
    wanted = list(dict.fromkeys(account_ids))
    tenants = doc.get("tenants")
    if tenants is None:
        tenants = tomlkit.aot()
        doc.add("tenants", tenants)
    for tenant in tenants:
        if tenant.get("name") == name:
            current = [str(a) for a in tenant.get("accounts", [])]
            tenant["accounts"] = current + [a for a in wanted if a not in current]
            return _write(path, doc), False
    table = tomlkit.table()
    table.add("name", name)
    table.add("accounts", wanted)
    tenants.append(table)
    return _write(path, doc), True


def remove_tenant(path: Path, name: str) -> Registry:
    if not path.exists():
        raise RegistryError(f"there is no account registry at {path}")
    doc = _document(path)
    tenants = doc.get("tenants") or []
    keep = [t for t in tenants if t.get("name") != name]
    if len(keep) == len(tenants):
        raise RegistryError(f"tenant {name} is not in {path}")
    new_tenants = tomlkit.aot()
    for table in keep:
        new_tenants.append(table)
    doc["tenants"] = new_tenants
    return _write(path, doc)
