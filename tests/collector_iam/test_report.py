"""The credential-report parser on hand-written reports in AWS's documented format (moto's report has no root row
and fills some columns wrongly, so it cannot be the oracle)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.collector_iam.report import ReportFormatError, parse_credential_report
from services.collector_iam.snapshot import AccessKey, IamUser, RootUser

HEADER = (
    "user,arn,user_creation_time,password_enabled,password_last_used,password_last_changed,password_next_rotation,"
    "mfa_active,access_key_1_active,access_key_1_last_rotated,access_key_1_last_used_date,"
    "access_key_1_last_used_region,access_key_1_last_used_service,access_key_2_active,access_key_2_last_rotated,"
    "access_key_2_last_used_date,access_key_2_last_used_region,access_key_2_last_used_service,cert_1_active,"
    "cert_1_last_rotated,cert_2_active,cert_2_last_rotated"
)
ACCOUNT = "123456789012"
ROOT_ROW = (
    f"<root_account>,arn:aws:iam::{ACCOUNT}:root,2019-03-04T10:00:00+00:00,not_supported,"
    "2025-05-01T08:00:00+00:00,not_supported,not_supported,false,"
    "true,2020-01-01T00:00:00+00:00,2025-04-30T12:00:00+00:00,us-east-1,s3,"
    "true,2021-06-01T00:00:00+00:00,N/A,N/A,N/A,false,N/A,false,N/A"
)
ROWS = (
    # console password, MFA, no keys
    f"alice,arn:aws:iam::{ACCOUNT}:user/alice,2020-02-02T09:00:00+00:00,true,2025-05-02T07:00:00+00:00,"
    "2024-11-01T00:00:00+00:00,N/A,true,false,N/A,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A",
    # no password, no MFA, two active keys: an old one in use, a new one never used
    f"bob,arn:aws:iam::{ACCOUNT}:user/bob,2021-01-01T00:00:00+00:00,false,N/A,N/A,N/A,false,"
    "true,2022-01-01T00:00:00+00:00,2025-05-31T23:00:00+00:00,eu-west-1,sts,"
    "true,2025-05-01T00:00:00+00:00,N/A,N/A,N/A,false,N/A,false,N/A",
    # password never used (no_information), no MFA; key 1 inactive, key 2 active; upper-case booleans, a Z time
    f"carol,arn:aws:iam::{ACCOUNT}:user/carol,2023-07-07T07:07:07Z,TRUE,no_information,"
    "2023-07-07T07:07:07+00:00,N/A,FALSE,FALSE,2023-07-07T07:10:00+00:00,2023-08-01T00:00:00+00:00,us-east-1,s3,"
    "TRUE,2024-01-01T00:00:00+00:00,N/A,N/A,N/A,false,N/A,false,N/A",
    # inactive key documented with N/A (AWS: last_rotated is N/A when the key is not active)
    f"dave,arn:aws:iam::{ACCOUNT}:user/dave,2024-04-04T00:00:00+00:00,false,N/A,N/A,N/A,false,"
    "false,N/A,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A",
)


def report(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join((header, *rows)) + "\n").encode()


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


def test_hand_written_report_with_root_keys_and_na_values() -> None:
    # Rows out of order on purpose: users come back sorted by name, root apart from them.
    parsed = parse_credential_report(report(ROWS[2], ROOT_ROW, ROWS[0], ROWS[3], ROWS[1]))

    assert parsed.root == RootUser(
        arn=f"arn:aws:iam::{ACCOUNT}:root",
        source="credential_report",
        mfa_active=False,
        access_keys_present=True,
        active_access_keys=2,
    )
    assert parsed.users == (
        IamUser(
            name="alice",
            arn=f"arn:aws:iam::{ACCOUNT}:user/alice",
            created=utc("2020-02-02T09:00:00+00:00"),
            mfa_active=True,
            console_password=True,
        ),
        IamUser(
            name="bob",
            arn=f"arn:aws:iam::{ACCOUNT}:user/bob",
            created=utc("2021-01-01T00:00:00+00:00"),
            mfa_active=False,
            console_password=False,
            access_keys=(
                AccessKey(
                    1, active=True, created=utc("2022-01-01T00:00:00+00:00"), last_used=utc("2025-05-31T23:00:00+00:00")
                ),
                AccessKey(2, active=True, created=utc("2025-05-01T00:00:00+00:00"), last_used=None),
            ),
        ),
        IamUser(
            name="carol",
            arn=f"arn:aws:iam::{ACCOUNT}:user/carol",
            created=utc("2023-07-07T07:07:07+00:00"),
            mfa_active=False,
            console_password=True,
            access_keys=(
                AccessKey(
                    1,
                    active=False,
                    created=utc("2023-07-07T07:10:00+00:00"),
                    last_used=utc("2023-08-01T00:00:00+00:00"),
                ),
                AccessKey(2, active=True, created=utc("2024-01-01T00:00:00+00:00"), last_used=None),
            ),
        ),
        IamUser(
            name="dave",
            arn=f"arn:aws:iam::{ACCOUNT}:user/dave",
            created=utc("2024-04-04T00:00:00+00:00"),
            mfa_active=False,
            console_password=False,
        ),
    )
    assert all(user.created is not None and user.created.tzinfo is UTC for user in parsed.users)


def test_root_without_keys_and_with_mfa() -> None:
    row = (
        f"<root_account>,arn:aws:iam::{ACCOUNT}:root,2019-03-04T10:00:00+00:00,not_supported,no_information,"
        "not_supported,not_supported,true,false,N/A,N/A,N/A,N/A,false,N/A,N/A,N/A,N/A,false,N/A,false,N/A"
    )
    parsed = parse_credential_report(report(row))
    assert parsed.users == ()
    assert parsed.root == RootUser(
        arn=f"arn:aws:iam::{ACCOUNT}:root",
        source="credential_report",
        mfa_active=True,
        access_keys_present=False,
        active_access_keys=0,
    )


def test_report_without_root_row_and_with_extra_columns_and_a_bom() -> None:
    # moto's report has no <root_account> row; AWS may add columns: they are ignored.
    header = HEADER + ",some_future_column"
    row = ROWS[0] + ",whatever"
    parsed = parse_credential_report(b"\xef\xbb\xbf" + report(row, header=header))
    assert parsed.root is None
    assert [user.name for user in parsed.users] == ["alice"]


def test_empty_report_has_no_users() -> None:
    parsed = parse_credential_report(report())
    assert (parsed.users, parsed.root) == ((), None)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (report(ROWS[0], header=HEADER.replace(",mfa_active", "")), "lacks the column"),
        (b"", "lacks the column"),
        (report(ROWS[0].replace("alice,", "al,ice,", 1)), "one value per column"),
        (report(ROWS[0].rsplit(",", 1)[0]), "one value per column"),
        (report(ROWS[0].replace("2020-02-02T09:00:00+00:00", "yesterday")), "not an ISO 8601 time"),
        (report(ROWS[0].replace(",true,2025-05-02", ",maybe,2025-05-02")), "not true/false"),
        (report(ROWS[0].replace(",true,2025-05-02", ",not_supported,2025-05-02")), "password_enabled"),
        (report(ROWS[3].replace(",false,false,N/A", ",false,true,N/A", 1)), "last_rotated is N/A"),
        (report(ROWS[0], ROWS[0]), "appears twice"),
        (report(ROOT_ROW, ROOT_ROW), "two <root_account> rows"),
        (b"\xff\xfe not utf-8", "not UTF-8"),
    ],
)
def test_malformed_reports_are_refused(content: bytes, message: str) -> None:
    with pytest.raises(ReportFormatError, match=message):
        parse_credential_report(content)
