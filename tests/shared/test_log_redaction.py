"""Planted fake secrets must never reach a log line, whatever logger or format carries them."""

from __future__ import annotations

import io
import logging

import pytest
import structlog
from pydantic import ValidationError

from shared.consume import validation_reason
from shared.log import configure_logging, redact_text
from shared.messages import RunRequested

SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTEDKEY"
SESSION_TOKEN = "FQoGZXIvYXdzEJr//////////wEaDPLANTEDTOKENxyz" + "A" * 100
ACCESS_KEY = "AKIAPLANTED1234567XY"
EXTERNAL_ID = "ext-planted-7f3a"


@pytest.fixture(params=["console", "json"])
def log_stream(request: pytest.FixtureRequest) -> io.StringIO:
    stream = io.StringIO()
    configure_logging("DEBUG", request.param, stream=stream)
    return stream


def assert_clean(text: str) -> None:
    for secret in (SECRET_KEY, SESSION_TOKEN, "PLANTEDTOKEN", ACCESS_KEY, EXTERNAL_ID):
        assert secret not in text


def test_structlog_fields_are_redacted(log_stream: io.StringIO) -> None:
    log = structlog.get_logger("kushim.test")
    log.info(
        "assumed_role",
        aws_secret_access_key=SECRET_KEY,
        session_token=SESSION_TOKEN,
        external_id=EXTERNAL_ID,
        credentials={"AccessKeyId": ACCESS_KEY, "SecretAccessKey": SECRET_KEY},
        note=f"key {ACCESS_KEY} secret={SECRET_KEY} ExternalId={EXTERNAL_ID}",
    )
    text = log_stream.getvalue()
    assert "assumed_role" in text
    assert_clean(text)


def test_third_party_stdlib_loggers_are_redacted(log_stream: io.StringIO) -> None:
    logging.getLogger("faststream").warning(
        "payload %s", f'{{"SessionToken": "{SESSION_TOKEN}", "ExternalId": "{EXTERNAL_ID}"}}'
    )
    logging.getLogger("nats.aio.client").error("auth with secret_access_key=%s", SECRET_KEY)
    text = log_stream.getvalue()
    assert "payload" in text
    assert_clean(text)


def test_botocore_debug_stays_off_even_at_debug(log_stream: io.StringIO) -> None:
    logging.getLogger("botocore.endpoint").debug("Response body: %s", SECRET_KEY)
    logging.getLogger("botocore.credentials").debug("credentials %s", ACCESS_KEY)
    assert log_stream.getvalue() == ""
    assert logging.getLogger("botocore").getEffectiveLevel() >= logging.WARNING


def test_exceptions_carry_no_locals_or_secrets(log_stream: io.StringIO) -> None:
    log = structlog.get_logger("kushim.test")
    secret_local = SECRET_KEY
    try:
        raise RuntimeError(f"AssumeRole failed for SecretAccessKey={secret_local}")
    except RuntimeError:
        log.exception("scan_failed")
    text = log_stream.getvalue()
    assert "scan_failed" in text
    assert_clean(text)


def test_validation_errors_never_echo_the_payload() -> None:
    body = f'{{"request_id": "r1", "requested_at": "nope", "aws_secret_access_key": "{SECRET_KEY}"}}'
    with pytest.raises(ValidationError) as info:
        RunRequested.model_validate_json(body)
    assert SECRET_KEY not in str(info.value)
    reason = validation_reason(info.value)
    assert "requested_at" in reason
    assert SECRET_KEY not in reason


def test_redact_text_keeps_ordinary_text() -> None:
    assert redact_text("run run-abc finished: 3 findings") == "run run-abc finished: 3 findings"
    assert redact_text("user/alice has no MFA device") == "user/alice has no MFA device"


def test_dead_letter_excerpt_keeps_only_harmless_values() -> None:
    from shared.consume import excerpt

    body = (
        b'{"request_id": "r1", "accounts": ["123456789012"], "api_key": "k-123", "pwd": "hunter2",'
        b' "dsn": "postgresql://u:pw@db/x", "requested_by": "ci secret=abc"}'
    )
    text = excerpt(body)
    for secret in ("k-123", "hunter2", "u:pw", "abc"):
        assert secret not in text
    assert '"r1"' in text
    assert "123456789012" in text
    assert "api_key" in text
    assert "redacted" in text
    assert "not JSON" in excerpt(b"\x00\x01 AKIAPLANTED1234567XY")
