"""A full check at DEBUG with planted fake credentials: none of them may appear in any log line (ours, FastStream's,
nats-py's, botocore's), dead letter, rejection, database row or evidence object."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.cli.client import run_check
from services.cli.demo_account import seed_demo_account
from services.cli.stack import running_stack
from shared import subjects
from shared.messages import RunState
from shared.settings import Settings
from tests.conftest import boto3_client
from tests.helpers import eventually, nats_client, stream_payloads

ACCESS_KEY = "AKIAPLANTED1234567XY"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYPLANTEDKEY"
SESSION_TOKEN = "FQoGZXIvYXdzEJr//////////wEaDPLANTEDTOKENxyz" + "B" * 120
PLANTED = (ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, "PLANTEDTOKEN", "PLANTEDKEY")
EVIDENCE_BUCKET = "kushim-evidence-storage-demo"


def _leaks(text: str) -> list[str]:
    return [secret for secret in PLANTED if secret in text]


@pytest.mark.timeout(90)
async def test_planted_credentials_reach_no_log_dead_letter_row_or_evidence_object(
    debug_log: io.StringIO, make_settings: Callable[..., Settings], moto_endpoint: str, tmp_path: Path
) -> None:
    seed_demo_account(moto_endpoint)
    settings = make_settings(
        aws_endpoint_url=moto_endpoint,
        evidence_bucket=EVIDENCE_BUCKET,
        aws_access_key_id=SecretStr(ACCESS_KEY),
        aws_secret_access_key=SecretStr(SECRET_KEY),
        aws_session_token=SecretStr(SESSION_TOKEN),
        log_level="DEBUG",
    )
    async with running_stack(settings, migrate=True, nats_store=tmp_path / "js") as stack:
        report = await run_check(stack.url, timeout=60, request_id="planted-secrets")
        assert report.run.state is RunState.COMPLETE
        async with nats_client(stack.url) as nc:
            # Outside input carrying the same secrets: rejected, dead-lettered, answered on kushim.runs.rejected.
            bad = {
                "request_id": "leaky-request",
                "requested_at": datetime.now(UTC).isoformat(),
                "requested_by": f"ci {ACCESS_KEY}",
                "aws_secret_access_key": SECRET_KEY,
                "session_token": SESSION_TOKEN,
            }
            await nc.jetstream().publish(
                subjects.RUNS_REQUESTED,
                json.dumps(bad).encode(),
                stream=subjects.STREAM_RUNS,
                headers={"Nats-Msg-Id": "leaky-request"},
            )

            async def rejected() -> bool:
                return bool(await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_REJECTED))

            await eventually(rejected, what="the rejection of the leaky request")
            written = [
                *await stream_payloads(nc, subjects.STREAM_DLQ, f"{subjects.DLQ_PREFIX}.>"),
                *await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_REJECTED),
                *await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_PLANNED),
                *await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_COMPLETED),
                *await stream_payloads(nc, subjects.STREAM_CHECKS, "kushim.checks.>"),
                *await stream_payloads(nc, subjects.STREAM_FINDINGS, "kushim.findings.>"),
            ]
            assert any(b"leaky-request" in payload for payload in written)  # the dead letter and the rejection

    log_text = debug_log.getvalue()
    assert "run_completed_published" in log_text  # logging was on, at DEBUG
    assert '"level": "debug"' in log_text
    assert "message_rejected" in log_text
    assert _leaks(log_text) == []
    for payload in written:
        assert _leaks(payload.decode(errors="replace")) == []

    database = Path(settings.effective_database_url.split(":///", 1)[1])
    for path in database.parent.glob(database.name + "*"):  # the database, its WAL and shared memory
        assert _leaks(path.read_bytes().decode("latin-1")) == [], path.name

    s3 = boto3_client(moto_endpoint, "s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=EVIDENCE_BUCKET).get("Contents", [])]
    assert any(k.startswith("evidence/") for k in keys)
    assert any(k.startswith("manifests/") for k in keys)
    for key in keys:
        body = s3.get_object(Bucket=EVIDENCE_BUCKET, Key=key)["Body"].read().decode(errors="replace")
        assert _leaks(body) == [], key
