"""`kushim accounts`: the account registry (which accounts Kushim checks and how it reaches each), ExternalIds and
trust policies, AWS Organizations discovery, and tenants."""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import TypeAdapter, ValidationError
from rich.markup import escape
from rich.table import Table

from services.cli import render
from services.cli.common import err, load_settings, out
from shared.accounts import (
    ALL_REGIONS,
    Account,
    AssumeRoleAccess,
    DefaultAccess,
    Registry,
    RegistryError,
    RoleArn,
    SecretsManagerAccess,
    add_account,
    add_accounts,
    add_tenant,
    load_registry,
    new_external_id,
    remove_account,
    remove_tenant,
    trust_policy,
)
from shared.credentials import default_clients
from shared.log import configure_logging
from shared.messages import AccountId
from shared.organizations import DiscoveryError, Organization, describe_organization
from shared.settings import Settings
from shared.subjects import completed_subject, rejected_subject, tenant_requests_subject

accounts_app = typer.Typer(
    name="accounts",
    help="The account registry (KUSHIM_ACCOUNTS_FILE, default $KUSHIM_HOME/accounts.toml): which AWS accounts "
    "Kushim checks, how it reaches each (default credentials, AssumeRole with an ExternalId, Secrets Manager), "
    "their regions and schedules, and tenants. Without the file Kushim checks the account of its credentials.",
    no_args_is_help=True,
)
tenant_app = typer.Typer(
    name="tenant",
    help="Tenants: other systems allowed to request runs for some registered accounts "
    "(on kushim.runs.requested.<tenant>).",
    no_args_is_help=True,
)
accounts_app.add_typer(tenant_app)

_PRINCIPAL = re.compile(r"^arn:aws[a-z-]*:iam::[0-9]{12}:(root|role/\S+|user/\S+)$")


# --- shared helpers ------------------------------------------------------------------------------


def _usage(message: str) -> NoReturn:
    """One line on stderr and exit 2 (a usage or registry error)."""
    err.print(f"[red]{message}[/red]")
    raise typer.Exit(render.EXIT_USAGE)


def _registry_error(exc: RegistryError) -> NoReturn:
    err.print(f"[red]Account registry:[/red] {escape(str(exc))}")
    raise typer.Exit(render.EXIT_USAGE)


def _write_error(path: Path, exc: OSError) -> NoReturn:
    err.print(f"[red]Could not write the account registry {escape(str(path))}:[/red] {escape(str(exc.strerror))}")
    raise typer.Exit(render.EXIT_COULD_NOT_RUN)


def _settings() -> Settings:
    settings = load_settings()
    configure_logging("WARNING", settings.log_format)
    return settings


def _load(path: Path) -> Registry | None:
    try:
        return load_registry(path)
    except RegistryError as exc:
        _registry_error(exc)


def _require(path: Path) -> Registry:
    registry = _load(path)
    if registry is None:
        _usage(
            f"There is no account registry at {escape(str(path))}: register an account with "
            "`kushim accounts add ACCOUNT_ID --name NAME --role-name ROLE`."
        )
    return registry


def _account_id(value: str) -> str:
    try:
        return TypeAdapter(AccountId).validate_python(value)
    except ValidationError:
        _usage(f"Invalid account id {escape(repr(value))}: an AWS account id is exactly 12 digits.")


def _reason(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_input=False):
        where = ".".join(str(p) for p in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else str(error["msg"]))
    return "; ".join(parts[:5])


def partition_of(region: str) -> str:
    """The ARN partition of a region (role ARNs built from a role name use it)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


def role_arn_for(account_id: str, role_name: str, partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account_id}:role/{role_name.strip('/')}"


def _kushim_principal(settings: Settings, partition: str) -> str:
    """`arn:<partition>:iam::<account of Kushim's own credentials>:root` (sts:GetCallerIdentity)."""
    account = asyncio.run(default_clients(settings).caller_account())
    return f"arn:{partition}:iam::{account}:root"


def _principal_option(value: str | None) -> str | None:
    if value is not None and not _PRINCIPAL.match(value):
        _usage(
            f"--principal {escape(repr(value))} is not an IAM principal ARN "
            "(arn:aws:iam::<account>:root, …:role/<name> or …:user/<name>)."
        )
    return value


def _show_trust(account: Account, principal: str) -> None:
    """The ExternalId and next steps on stderr, the trust policy JSON alone on stdout (`> trust.json` works)."""
    assert isinstance(account.access, AssumeRoleAccess)
    access = account.access
    role_name = access.role_arn.split(":role/", 1)[1].rsplit("/", 1)[-1]
    err.print(
        f"Account {account.id} ({escape(account.name)}): Kushim assumes {access.role_arn}\n"
        f"ExternalId: {access.external_id}\n"
        f"Attach this trust policy to the role (its trust relationship), trusting {principal}, e.g.\n"
        f"  aws iam update-assume-role-policy --role-name {escape(role_name)} --policy-document file://trust.json"
    )
    out.print_json(json.dumps(trust_policy(principal, access.external_id)))


def _access_text(account: Account) -> str:
    access = account.access
    if isinstance(access, AssumeRoleAccess):
        return f"assume_role {access.role_arn}"
    if isinstance(access, SecretsManagerAccess):
        return f"secrets_manager {access.secret_id}" + (f" ({access.region})" if access.region else "")
    return "default credentials"


def _public(account: Account) -> dict[str, Any]:
    """An account as `list --json` prints it: never the ExternalId."""
    return account.model_dump(mode="json", exclude={"access": {"external_id"}})


# --- add / list / remove / external-id -----------------------------------------------------------


@accounts_app.command()
def add(
    account_id: Annotated[str, typer.Argument(help="The account's 12-digit id.", show_default=False)],
    name: Annotated[str, typer.Option("--name", help="A name for people (reports, `kushim accounts list`).")],
    role_arn: Annotated[
        str | None,
        typer.Option("--role-arn", help="Reach the account by sts:AssumeRole into this role (in the same account)."),
    ] = None,
    role_name: Annotated[
        str | None,
        typer.Option("--role-name", help="Like --role-arn, with the ARN arn:aws:iam::<ACCOUNT_ID>:role/<NAME>."),
    ] = None,
    session_name: Annotated[
        str | None, typer.Option("--session-name", help="RoleSessionName (CloudTrail shows it; default kushim).")
    ] = None,
    secret_id: Annotated[
        str | None,
        typer.Option("--secret-id", help="Reach the account with access keys kept in this Secrets Manager secret."),
    ] = None,
    secret_region: Annotated[
        str | None, typer.Option("--secret-region", help="Region of the secret (default: AWS_REGION).")
    ] = None,
    regions: Annotated[
        str | None,
        typer.Option("--regions", help="Comma-separated regions, or `all` (default: KUSHIM_REGIONS)."),
    ] = None,
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="Cron expression of its runs (default: KUSHIM_SCHEDULE).")
    ] = None,
    timezone: Annotated[
        str | None,
        typer.Option("--timezone", help="IANA time zone of the schedule (default: KUSHIM_SCHEDULE_TIMEZONE)."),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace", help="Rewrite an already registered account from these options (its ExternalId is kept)."
        ),
    ] = False,
    rotate: Annotated[
        bool,
        typer.Option(
            "--new-external-id",
            help="With --replace: generate a new ExternalId (the role's trust policy must then be updated).",
        ),
    ] = False,
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal",
            help="Principal the printed trust policy trusts (default: the root of Kushim's own account).",
        ),
    ] = None,
) -> None:
    """Register an account. With a role, Kushim generates its ExternalId and prints the trust policy to attach to
    the role in that account."""
    settings = _settings()
    path = settings.registry_path
    account_id = _account_id(account_id)
    principal = _principal_option(principal)
    if role_arn and role_name:
        _usage("Give --role-arn or --role-name, not both.")
    if secret_id and (role_arn or role_name):
        _usage("Give a role (--role-arn / --role-name) or --secret-id, not both.")
    with_role = bool(role_arn or role_name)
    if session_name is not None and not with_role:
        _usage("--session-name applies to a role (--role-arn or --role-name).")
    if rotate and not with_role:
        _usage("--new-external-id applies to a role (--role-arn or --role-name).")
    if secret_region is not None and not secret_id:
        _usage("--secret-region applies to --secret-id.")
    if role_name:
        role_arn = role_arn_for(account_id, role_name, partition_of(settings.aws_region))
    if role_arn:
        try:
            role_arn = TypeAdapter(RoleArn).validate_python(role_arn)
        except ValidationError:
            _usage(f"{escape(repr(role_arn))} is not an IAM role ARN (arn:aws:iam::<account>:role/<name>).")
        owner = role_arn.split(":")[4]
        if owner != account_id:
            _usage(
                f"Role {escape(role_arn)} belongs to account {owner}, not {account_id}: Kushim assumes a role in "
                "the account it checks (create the role there, or register account "
                f"{owner})."
            )

    registry = _load(path)
    existing = registry.account(account_id) if registry else None
    if existing is not None and not replace:
        _usage(
            f"Account {account_id} is already registered in {escape(str(path))} (as "
            f"{escape(existing.name)}): add --replace to rewrite it."
        )
    kept = False
    access: dict[str, Any]
    if role_arn:
        external_id = new_external_id()
        if existing is not None and isinstance(existing.access, AssumeRoleAccess) and not rotate:
            external_id, kept = existing.access.external_id, True
        access = {"kind": "assume_role", "role_arn": role_arn, "external_id": external_id}
        if session_name is not None:
            access["session_name"] = session_name
    elif secret_id:
        access = {"kind": "secrets_manager", "secret_id": secret_id}
        if secret_region is not None:
            access["region"] = secret_region
    else:
        access = {"kind": "default"}
    values: dict[str, Any] = {"id": account_id, "name": name, "access": access}
    if regions is not None:
        values["regions"] = [r.strip() for r in regions.split(",") if r.strip()]
    if schedule is not None:
        values["schedule"] = schedule
    if timezone is not None:
        values["timezone"] = timezone
    try:
        account = Account.model_validate(values)
    except ValidationError as exc:
        _usage(f"Invalid account: {escape(_reason(exc))}")
    try:
        add_account(path, account, replace=replace)
    except RegistryError as exc:
        _registry_error(exc)
    except OSError as exc:
        _write_error(path, exc)

    verb = "Replaced" if existing is not None else "Registered"
    out.print(f"{verb} account {account.id} ({escape(account.name)}) in {escape(str(path))}: {_access_text(account)}.")
    if not isinstance(account.access, AssumeRoleAccess):
        if isinstance(account.access, DefaultAccess):
            out.print(f"Kushim reaches it with its default credentials: they must belong to account {account.id}.")
        return
    if kept:
        out.print("Its ExternalId is unchanged (the role's trust policy stays valid).")
    elif existing is not None and isinstance(existing.access, AssumeRoleAccess):
        err.print(
            "[yellow]The ExternalId changed:[/yellow] the role's current trust policy no longer lets Kushim in; "
            "replace it with the one below."
        )
    out.print(
        f"Next, in account {account.id}: create the role with the read-only policy from `kushim policy`, and "
        "attach the trust policy below."
    )
    try:
        partition = account.access.role_arn.split(":")[1]
        trusted = principal or _kushim_principal(settings, partition)
    except Exception as exc:
        err.print(
            f"[yellow]Could not read Kushim's own account (sts:GetCallerIdentity):[/yellow] "
            f"{escape(type(exc).__name__)}: {escape(str(exc))}. Print the trust policy with "
            f"`kushim accounts external-id {account.id} --principal arn:aws:iam::<Kushim's account>:root`."
        )
        return
    _show_trust(account, trusted)


@accounts_app.command(name="list")
def list_accounts(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON (no ExternalIds) instead of a table.")] = False,
) -> None:
    """List the registered accounts: access, regions, schedule and the tenants allowed to request their runs.
    ExternalIds are never shown here (`kushim accounts external-id` prints one)."""
    settings = _settings()
    path = settings.registry_path
    registry = _load(path)
    if registry is None:
        if as_json:
            out.print_json(json.dumps({"registry": str(path), "accounts": [], "tenants": []}))
        err.print(
            f"No account registry at {escape(str(path))}: Kushim checks the account its credentials belong to "
            "(sts:GetCallerIdentity). Register accounts with `kushim accounts add ACCOUNT_ID --name NAME "
            "--role-name ROLE` or `kushim accounts discover --role-name ROLE --add`."
        )
        return
    tenants_of: dict[str, list[str]] = {a.id: [] for a in registry.accounts}
    for tenant in registry.tenants:
        for account_id in tenant.accounts:
            tenants_of.setdefault(account_id, []).append(tenant.name)
    if as_json:
        document = {
            "registry": str(path),
            "accounts": [_public(a) | {"tenants": tenants_of[a.id]} for a in registry.accounts],
            "tenants": [t.model_dump(mode="json") for t in registry.tenants],
        }
        out.print_json(json.dumps(document))
        return
    table = Table(title=f"Accounts ({escape(str(path))})")
    for col in ("Account", "Name", "Access", "Regions", "Schedule", "Tenants"):
        table.add_column(col, overflow="fold")
    for account in registry.accounts:
        regions = ", ".join(account.regions) if account.regions else f"default ({_default_regions(settings)})"
        when = account.schedule or f"default ({settings.schedule})"
        zone = account.timezone or f"{settings.schedule_timezone}"
        table.add_row(
            account.id,
            escape(account.name),
            escape(_access_text(account)),
            regions,
            f"{escape(when)} {escape(zone)}",
            ", ".join(tenants_of[account.id]) or "-",
        )
    out.print(table)
    if not registry.accounts:
        out.print("No accounts registered yet: `kushim accounts add` or `kushim accounts discover --add`.")


def _default_regions(settings: Settings) -> str:
    if settings.all_regions:
        return ALL_REGIONS
    return ",".join(settings.scan_regions)


@accounts_app.command()
def remove(
    account_id: Annotated[str, typer.Argument(help="The account's 12-digit id.", show_default=False)],
) -> None:
    """Unregister an account and drop it from every tenant's allow-list (a tenant left with no account is
    removed)."""
    settings = _settings()
    path = settings.registry_path
    account_id = _account_id(account_id)
    try:
        registry, touched = remove_account(path, account_id)
    except RegistryError as exc:
        _registry_error(exc)
    except OSError as exc:
        _write_error(path, exc)
    out.print(f"Removed account {account_id} from {escape(str(path))}.")
    for name in touched:
        if registry.tenant(name) is None:
            out.print(f"Tenant {name} had no other account and was removed.")
        else:
            out.print(f"Tenant {name} may no longer request runs for it.")


@accounts_app.command(name="external-id")
def external_id(
    account_id: Annotated[str, typer.Argument(help="The account's 12-digit id.", show_default=False)],
    principal: Annotated[
        str | None,
        typer.Option(
            "--principal",
            help="Principal the trust policy trusts (default: arn:aws:iam::<account of Kushim's credentials>:root, "
            "read with sts:GetCallerIdentity).",
        ),
    ] = None,
) -> None:
    """Print an account's ExternalId (stderr) and the trust policy for its role (stdout, JSON): the customer
    pastes it into the role's trust relationship."""
    settings = _settings()
    path = settings.registry_path
    account_id = _account_id(account_id)
    principal = _principal_option(principal)
    registry = _require(path)
    account = registry.account(account_id)
    if account is None:
        _usage(f"Account {account_id} is not registered in {escape(str(path))}.")
    if not isinstance(account.access, AssumeRoleAccess):
        _usage(
            f"Account {account_id} is reached with {account.access.kind} access, which has no ExternalId: register "
            "it with --role-arn or --role-name (`kushim accounts add --replace`)."
        )
    if principal is None:
        try:
            principal = _kushim_principal(settings, account.access.role_arn.split(":")[1])
        except Exception as exc:
            err.print(
                f"[red]Could not read Kushim's own account (sts:GetCallerIdentity):[/red] "
                f"{escape(type(exc).__name__)}: {escape(str(exc))}. Give it with --principal."
            )
            raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None
    _show_trust(account, principal)


# --- AWS Organizations discovery ---------------------------------------------------------------


NEW = "new"
REGISTERED = "registered"
MANAGEMENT = "management (skipped: --include-management)"


@dataclass(frozen=True, slots=True)
class DiscoveredAccount:
    """One active account of the organization and what discover does with it (NEW, REGISTERED or MANAGEMENT)."""

    account_id: str
    name: str
    status: str
    management: bool


def discovery_plan(
    organization: Organization, registered: frozenset[str], include_management: bool
) -> list[DiscoveredAccount]:
    plan = []
    for account in organization.active_accounts:
        management = account.id == organization.management_account_id
        if account.id in registered:
            status = REGISTERED
        elif management and not include_management:
            status = MANAGEMENT
        else:
            status = NEW
        plan.append(DiscoveredAccount(account.id, account.name, status, management))
    return plan


def print_discovery(organization: Organization, plan: list[DiscoveredAccount], added: set[str], path: Path) -> None:
    inactive = len(organization.accounts) - len(organization.active_accounts)
    table = Table(
        title=f"AWS Organization {escape(organization.id)} (management account {organization.management_account_id})"
    )
    for col in ("Account", "Name", "Kushim"):
        table.add_column(col, overflow="fold")
    for entry in plan:
        status = "added" if entry.account_id in added else entry.status
        name = escape(entry.name) + (" [dim](management)[/dim]" if entry.management else "")
        style = {"added": "green", NEW: "yellow"}.get(status, "")
        table.add_row(entry.account_id, name, f"[{style}]{status}[/{style}]" if style else status)
    out.print(table)
    missing = sum(1 for e in plan if e.status == NEW and e.account_id not in added)
    summary = (
        f"{len(plan)} active account(s); {sum(1 for e in plan if e.status == REGISTERED)} already registered in "
        f"{escape(str(path))}"
    )
    if added:
        summary += f", {len(added)} added"
    if missing:
        summary += f", {missing} not registered (`kushim accounts discover --role-name ROLE --add` registers them)"
    if inactive:
        summary += f"; {inactive} suspended or closed account(s) not shown"
    out.print(summary + ".")


@accounts_app.command()
def discover(
    role_name: Annotated[
        str | None,
        typer.Option(
            "--role-name", help="Role Kushim assumes in every member account (required with --add), e.g. KushimAudit."
        ),
    ] = None,
    add_missing: Annotated[
        bool,
        typer.Option(
            "--add", help="Register every active account not registered yet (AssumeRole, a fresh ExternalId each)."
        ),
    ] = False,
    include_management: Annotated[
        bool,
        typer.Option("--include-management", help="Also list and add the organization's management account."),
    ] = False,
) -> None:
    """List the active accounts of the AWS Organization and which are registered (organizations:ListAccounts and
    organizations:DescribeOrganization, with the credentials of the management account or a delegated
    administrator). --add registers the missing ones."""
    settings = _settings()
    path = settings.registry_path
    if add_missing and not role_name:
        _usage("--add needs --role-name: the role Kushim assumes in each account.")
    registry = _load(path)
    aws = default_clients(settings)
    try:
        organization = asyncio.run(describe_organization(aws))
    except DiscoveryError as exc:
        err.print(f"[red]Could not list the organization's accounts:[/red] {escape(str(exc))}")
        raise typer.Exit(render.EXIT_COULD_NOT_RUN) from None

    registered = registry.ids if registry else frozenset()
    plan = discovery_plan(organization, registered, include_management)
    new: list[Account] = []
    if add_missing and role_name:
        for entry in plan:
            if entry.status == NEW:
                try:
                    new.append(
                        Account(
                            id=entry.account_id,
                            name=entry.name[:128],
                            access=AssumeRoleAccess(
                                kind="assume_role",
                                role_arn=role_arn_for(entry.account_id, role_name, organization.partition),
                                external_id=new_external_id(),
                            ),
                        )
                    )
                except ValidationError as exc:
                    _usage(f"Cannot register {entry.account_id} with role {escape(role_name)}: {escape(_reason(exc))}")
        if new:
            try:
                add_accounts(path, new)
            except RegistryError as exc:
                _registry_error(exc)
            except OSError as exc:
                _write_error(path, exc)
    added = {a.id for a in new}
    print_discovery(organization, plan, added, path)
    if new:
        out.print(
            f"\nRegistered {len(new)} account(s) in {escape(str(path))}. In each, create the role "
            f"{escape(role_name or '')} with the read-only policy from `kushim policy` and attach its trust policy "
            "(each account has its own ExternalId):"
        )
        for account in new:
            out.print(f"  kushim accounts external-id {account.id}    # {escape(account.name)}")


# --- tenants -----------------------------------------------------------------------------------


def _nats_user_hint(name: str) -> str:
    variable = "KUSHIM_NATS_TENANT_" + re.sub(r"[^A-Z0-9]", "_", name.upper()) + "_PASSWORD"
    return (
        "{\n"
        f"  user: {name}\n"
        f"  password: ${variable}\n"
        "  permissions: {\n"
        f'    publish: {{ allow: ["{tenant_requests_subject(name)}"] }}\n'
        f'    subscribe: {{ allow: ["{completed_subject(name)}", "{rejected_subject(name)}", '
        f'"_INBOX_{name}.>"] }}\n'
        "  }\n"
        "}"
    )


@tenant_app.command(name="add")
def tenant_add(
    name: Annotated[
        str, typer.Argument(help="Tenant name: lower-case letters, digits, '-' and '_'.", show_default=False)
    ],
    account: Annotated[
        list[str],
        typer.Option("--account", "-a", help="A registered account the tenant may request runs for; repeat."),
    ],
) -> None:
    """Allow a tenant to request runs for these accounts (creates the tenant, or extends its allow-list)."""
    settings = _settings()
    path = settings.registry_path
    ids = [_account_id(a) for a in account]
    try:
        registry, created = add_tenant(path, name, ids)
    except RegistryError as exc:
        _registry_error(exc)
    except OSError as exc:
        _write_error(path, exc)
    tenant = registry.tenant(name)
    assert tenant is not None
    out.print(
        f"{'Added' if created else 'Updated'} tenant {name} in {escape(str(path))}: it may request runs for "
        f"{', '.join(tenant.accounts)}.\n"
        f"It publishes RunRequested on {tenant_requests_subject(name)} and hears back on "
        f"{completed_subject(name)} and {rejected_subject(name)}."
    )
    if created:
        out.print("Give it a NATS user that may publish on its subject only (deploy/nats/nats-server.conf), e.g.:")
        out.print(escape(_nats_user_hint(name)), highlight=False)


@tenant_app.command(name="remove")
def tenant_remove(
    name: Annotated[str, typer.Argument(help="Tenant name.", show_default=False)],
) -> None:
    """Remove a tenant: its run requests are rejected from then on (remove its NATS user too)."""
    settings = _settings()
    path = settings.registry_path
    try:
        remove_tenant(path, name)
    except RegistryError as exc:
        _registry_error(exc)
    except OSError as exc:
        _write_error(path, exc)
    out.print(
        f"Removed tenant {escape(name)} from {escape(str(path))}: its requests on "
        f"{escape(tenant_requests_subject(name))} are rejected; remove its NATS user as well."
    )
