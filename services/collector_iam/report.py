"""The IAM credential report (GetCredentialReport's CSV) parsed into snapshot parts. Pure: no I/O.

Format (AWS IAM User Guide, "Getting credential reports"): one row per IAM user plus a `<root_account>` row, with
the columns below (more may follow; they are ignored). Values that mean "no value" are `N/A`, `not_supported`
and `no_information`. Booleans are `true`/`false` (the guide writes `TRUE`/`FALSE`: case is ignored). Times are
ISO 8601 with an offset (`2024-01-01T10:00:00+00:00`).

A report that does not match this format raises `ReportFormatError`: the collector then takes the per-user path
rather than guess.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import UTC, datetime

from services.collector_iam.snapshot import AccessKey, IamUser, RootUser

ROOT_ROW = "<root_account>"
KEY_NUMBERS = (1, 2)
REQUIRED_COLUMNS = (
    "user",
    "arn",
    "user_creation_time",
    "password_enabled",
    "mfa_active",
    *(f"access_key_{n}_{field}" for n in KEY_NUMBERS for field in ("active", "last_rotated", "last_used_date")),
)
NO_VALUE = frozenset({"n/a", "not_supported", "no_information", ""})


class ReportFormatError(ValueError):
    """The report is not in the documented format."""


@dataclass(frozen=True, slots=True)
class CredentialReport:
    users: tuple[IamUser, ...]
    root: RootUser | None


def parse_credential_report(content: bytes) -> CredentialReport:
    """Users (sorted by name, root excluded) and the root user (None when the report has no `<root_account>` row)."""
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ReportFormatError(f"the report is not UTF-8 text: {exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or ())]
    if missing:
        raise ReportFormatError(f"the report lacks the column(s) {', '.join(missing)}")
    users: dict[str, IamUser] = {}
    root: RootUser | None = None
    for line, row in enumerate(reader, start=2):
        if None in row or None in row.values():
            # Too many fields (an unquoted comma: IAM user names may contain one) or too few.
            raise ReportFormatError(f"line {line} does not have one value per column")
        values: dict[str, str] = {key: value for key, value in row.items() if key is not None and value is not None}
        try:
            if values["user"] == ROOT_ROW:
                if root is not None:
                    raise ReportFormatError("two <root_account> rows")
                root = _root(values)
                continue
            user = _user(values)
        except ValueError as exc:  # ReportFormatError included
            raise ReportFormatError(f"line {line} ({values['user']!r}): {exc}") from exc
        if user.name in users:
            raise ReportFormatError(f"line {line}: user {user.name!r} appears twice")
        users[user.name] = user
    return CredentialReport(users=tuple(users[name] for name in sorted(users)), root=root)


def _user(row: dict[str, str]) -> IamUser:
    console_password = parse_bool(row["password_enabled"], "password_enabled")
    if console_password is None:
        raise ReportFormatError(f"password_enabled is {row['password_enabled']!r} for an IAM user")
    mfa_active = parse_bool(row["mfa_active"], "mfa_active")
    if mfa_active is None:
        raise ReportFormatError(f"mfa_active is {row['mfa_active']!r}")
    return IamUser(
        name=row["user"],
        arn=row["arn"],
        created=parse_time(row["user_creation_time"], "user_creation_time"),
        mfa_active=mfa_active,
        console_password=console_password,
        access_keys=_keys(row),
    )


def _root(row: dict[str, str]) -> RootUser:
    mfa_active = parse_bool(row["mfa_active"], "mfa_active")
    if mfa_active is None:
        raise ReportFormatError(f"mfa_active is {row['mfa_active']!r}")
    keys = _keys(row)
    return RootUser(
        arn=row["arn"],
        source="credential_report",
        mfa_active=mfa_active,
        access_keys_present=bool(keys),
        active_access_keys=sum(1 for key in keys if key.active),
    )


def _keys(row: dict[str, str]) -> tuple[AccessKey, ...]:
    """The keys the row shows: active ones, and inactive ones whose creation time is given.

    AWS documents `last_rotated` as N/A when a key is not active, so an inactive key may be invisible here; the
    checks judge only active keys, so that loses nothing.
    """
    keys: list[AccessKey] = []
    for n in KEY_NUMBERS:
        prefix = f"access_key_{n}_"
        active = parse_bool(row[prefix + "active"], prefix + "active")
        created = parse_time(row[prefix + "last_rotated"], prefix + "last_rotated")
        if created is None:
            if active:
                raise ReportFormatError(f"{prefix}active is true but {prefix}last_rotated is N/A")
            continue
        last_used = parse_time(row[prefix + "last_used_date"], prefix + "last_used_date")
        keys.append(AccessKey(number=n, active=bool(active), created=created, last_used=last_used))
    return tuple(keys)


def parse_bool(value: str, column: str) -> bool | None:
    """`true`/`false` (any case); None for the "no value" markers."""
    lowered = value.strip().lower()
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    if lowered in NO_VALUE:
        return None
    raise ReportFormatError(f"{column} is {value!r}, not true/false")


def parse_time(value: str, column: str) -> datetime | None:
    """An ISO 8601 time in UTC (a time without offset is taken as UTC); None for the "no value" markers."""
    stripped = value.strip()
    if stripped.lower() in NO_VALUE:
        return None
    try:
        parsed = datetime.fromisoformat(stripped)
    except ValueError as exc:
        raise ReportFormatError(f"{column} is {value!r}, not an ISO 8601 time") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)
