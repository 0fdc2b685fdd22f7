"""Which failures are outages (retried for as long as they last) and which are poison (given up after max_deliver)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import BadRequestError, ServiceUnavailableError
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from shared.aws import TransientAwsError
from shared.consume import describe_failure, is_outage


def _client_error(status: int, code: str) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


class _PgError(Exception):
    """What asyncpg raises, as far as the classification looks: an error with a SQLSTATE."""

    def __init__(self, sqlstate: str, text: str) -> None:
        super().__init__(text)
        self.sqlstate = sqlstate


def _pg(sqlstate: str, text: str = "server error") -> DBAPIError:
    return DBAPIError("INSERT INTO evidence_findings", {"p": "x"}, _PgError(sqlstate, text))


def _wrapped(inner: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("while storing") from inner
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "refused"),
        TimeoutError(),
        EndpointConnectionError(endpoint_url="http://s3"),
        TransientAwsError("S3 unreachable"),
        NatsTimeoutError(),
        OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")),
        _client_error(503, "SlowDown"),
        _client_error(500, "InternalError"),
        _wrapped(ConnectionResetError()),
        _pg("25006", "cannot execute INSERT in a read-only transaction"),  # failover: pool on the old primary
        _pg("57P03", "the database system is starting up"),
        _pg("53300", "too many connections"),
        _pg("57014", "canceling statement due to statement timeout"),
        _pg("40P01", "deadlock detected"),
        _pg("08006", "connection failure"),
        OperationalError("SELECT", {}, sqlite3.OperationalError("disk I/O error")),
        ServiceUnavailableError(),
    ],
)
def test_outages(exc: BaseException) -> None:
    assert is_outage(exc)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad data"),
        KeyError("x"),
        IntegrityError("INSERT", {}, Exception("constraint")),
        _client_error(403, "AccessDenied"),
        _client_error(400, "InvalidArgument"),
        _wrapped(ValueError("bad data")),
        _pg("23505", "duplicate key value violates unique constraint"),
        _pg("22P05", "unsupported Unicode escape sequence"),  # a NUL byte in a finding
        OperationalError("INSERT", {}, sqlite3.OperationalError("no such column: sealed")),  # a schema mismatch
        BadRequestError(code=400, err_code=10058, description="stream name already in use with a different config"),
    ],
)
def test_poison(exc: BaseException) -> None:
    assert not is_outage(exc)


def test_failure_descriptions_leave_out_sql_parameters() -> None:
    error = DBAPIError(
        "INSERT INTO evidence_findings (summary) VALUES ($1)",
        ("AKIAIOSFODNN7EXAMPLE in a finding",),
        _PgError("22P05", "unsupported Unicode escape sequence"),
    )
    text = describe_failure(error)
    assert text == "DBAPIError: SQLSTATE 22P05: unsupported Unicode escape sequence"
    assert "AKIAIOSFODNN7EXAMPLE" not in describe_failure(ValueError("key AKIAIOSFODNN7EXAMPLE"))
    assert len(describe_failure(ValueError("x" * 5000))) < 600
