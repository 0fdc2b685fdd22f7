"""Which failures are outages (retried for as long as they last) and which are poison (given up after max_deliver)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError
from nats.errors import TimeoutError as NatsTimeoutError
from sqlalchemy.exc import IntegrityError, OperationalError

from shared.aws import TransientAwsError
from shared.consume import is_outage


def _client_error(status: int, code: str) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


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
    ],
)
def test_poison(exc: BaseException) -> None:
    assert not is_outage(exc)
