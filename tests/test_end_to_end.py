"""The whole pipeline on real parts: nats-server, moto, SQLite; compared with a truth written down by hand.

The truth below is NOT derived from the seeding code (services/cli/demo_account.py): it is what a person reading
the demo account's description expects to see.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from services.cli.client import run_check
from services.cli.demo_account import seed_demo_account
from services.cli.render import EXIT_COULD_NOT_RUN, EXIT_ERROR, EXIT_FAIL, exit_code
from services.cli.stack import running_stack
from shared.embedded import EmbeddedNats, free_port
from shared.messages import RunState, Service, Soc2Control, Status
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT, boto3_client
from tests.helpers import cli_env, kushim

EVIDENCE_BUCKET = "kushim-evidence-storage-demo"
PLANTED_SECRET = "e2ePlantedSecretValueThatMustNeverBeLogged0"

UPLOADS = "bucket/demo-app-uploads"
EVIDENCE = "bucket/kushim-evidence-storage-demo"
CUSTOMER = "bucket/demo-customer-data"
TRAIL_LOGS = "bucket/demo-cloudtrail-logs"
SINGLE = "trail/us-east-1/demo-single-region"
ORG = "trail/us-east-1/demo-org-trail"

TRUTH: set[tuple[str, str, str]] = {
    # CC6.1: 6 users; alice, bob and svc-backup have MFA; alice, bob and carol have console passwords.
    ("iam.user_mfa", "user/alice", "PASS"),
    ("iam.user_mfa", "user/bob", "PASS"),
    ("iam.user_mfa", "user/carol", "FAIL"),
    ("iam.user_mfa", "user/svc-backup", "PASS"),
    ("iam.user_mfa", "user/ci-deployer", "FAIL"),
    ("iam.user_mfa", "user/reporting-bot", "FAIL"),
    ("iam.console_user_mfa", "user/alice", "PASS"),
    ("iam.console_user_mfa", "user/bob", "PASS"),
    ("iam.console_user_mfa", "user/carol", "FAIL"),
    ("iam.root_mfa", "root", "FAIL"),  # moto's root user never has MFA
    ("iam.root_access_keys", "root", "PASS"),
    # no user has an access key: no key findings
    # CC6.7: 4 buckets
    ("s3.bucket_default_encryption", UPLOADS, "FAIL"),
    ("s3.bucket_default_encryption", EVIDENCE, "PASS"),
    ("s3.bucket_default_encryption", CUSTOMER, "PASS"),
    ("s3.bucket_default_encryption", TRAIL_LOGS, "PASS"),
    ("s3.bucket_sse_kms", UPLOADS, "FAIL"),
    ("s3.bucket_sse_kms", EVIDENCE, "FAIL"),
    ("s3.bucket_sse_kms", CUSTOMER, "PASS"),
    ("s3.bucket_sse_kms", TRAIL_LOGS, "FAIL"),
    ("s3.bucket_versioning", UPLOADS, "FAIL"),
    ("s3.bucket_versioning", EVIDENCE, "PASS"),
    ("s3.bucket_versioning", CUSTOMER, "FAIL"),
    ("s3.bucket_versioning", TRAIL_LOGS, "FAIL"),
    ("s3.bucket_access_logging", UPLOADS, "FAIL"),
    ("s3.bucket_access_logging", EVIDENCE, "FAIL"),
    ("s3.bucket_access_logging", CUSTOMER, "FAIL"),
    ("s3.bucket_access_logging", TRAIL_LOGS, "FAIL"),
    ("s3.bucket_public_access_block", UPLOADS, "FAIL"),
    ("s3.bucket_public_access_block", EVIDENCE, "PASS"),
    ("s3.bucket_public_access_block", CUSTOMER, "FAIL"),
    ("s3.bucket_public_access_block", TRAIL_LOGS, "PASS"),
    # CC7.2: one single-region trail, one multi-region trail with validation and KMS; both logging everything
    ("cloudtrail.multi_region_logging", "account", "PASS"),
    ("cloudtrail.trail_logging", SINGLE, "PASS"),
    ("cloudtrail.trail_logging", ORG, "PASS"),
    ("cloudtrail.trail_log_file_validation", SINGLE, "FAIL"),
    ("cloudtrail.trail_log_file_validation", ORG, "PASS"),
    ("cloudtrail.trail_delivery", SINGLE, "PASS"),
    ("cloudtrail.trail_delivery", ORG, "PASS"),
    ("cloudtrail.trail_kms", SINGLE, "FAIL"),
    ("cloudtrail.trail_kms", ORG, "PASS"),
    ("cloudtrail.management_events", SINGLE, "PASS"),
    ("cloudtrail.management_events", ORG, "PASS"),
    ("cloudtrail.region_coverage", "region/us-east-1", "PASS"),
    ("cloudtrail.recent_activity", "region/us-east-1", "ERROR"),  # moto has no LookupEvents
}
FINDINGS_PER_SERVICE = {"iam": 11, "s3": 20, "cloudtrail": 13}
ENCRYPTION = {
    "bucket/kushim-evidence-storage-demo": "AES256",
    "bucket/demo-customer-data": "aws:kms",
    "bucket/demo-cloudtrail-logs": "AES256",
}


def sqlite_path(settings: Settings) -> str:
    return settings.effective_database_url.split(":///", 1)[1]


async def test_demo_account_end_to_end(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    seed_demo_account(moto_endpoint)
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, evidence_bucket=EVIDENCE_BUCKET)
    async with running_stack(settings, migrate=True) as stack:
        report = await run_check(stack.url, timeout=60, request_id="e2e-demo")

    # --- the report ---
    run = report.run
    assert run.state is RunState.COMPLETE
    assert {c: v.status for c, v in run.controls.items()} == {
        Soc2Control.CC6_1: Status.FAIL,
        Soc2Control.CC6_7: Status.FAIL,
        Soc2Control.CC7_2: Status.PASS,
    }
    assert {(f.check_id, f.resource_id, f.status.value) for f in report.findings} == TRUTH
    assert exit_code(report) == EXIT_FAIL
    iam = next(s for s in report.services if s.service is Service.IAM)
    assert iam.population == {"users": 6, "console_users": 3, "active_access_keys": 0}
    assert iam.metrics["mfa_percent"] == 50.0
    assert iam.metrics["console_mfa_percent"] == 66.7
    carol = next(f for f in report.findings if f.check_id == "iam.user_mfa" and f.resource_id == "user/carol")
    assert carol.details["console_password"] is True
    assert carol.resource_arn == f"arn:aws:iam::{MOTO_ACCOUNT}:user/carol"
    assert carol.remediation
    for resource_id, algorithm in ENCRYPTION.items():
        finding = next(
            f for f in report.findings if f.resource_id == resource_id and f.check_id == "s3.bucket_default_encryption"
        )
        assert finding.details["algorithm"] == algorithm

    # --- the database ---
    with sqlite3.connect(sqlite_path(settings)) as db:
        rows = set(
            db.execute("SELECT check_id, resource_id, status FROM evidence_findings WHERE run_id = ?", (run.run_id,))
        )
        assert rows == TRUTH
        (state,) = db.execute("SELECT state FROM evidence_runs WHERE run_id = ?", (run.run_id,)).fetchone()
        assert state == "COMPLETE"
        done = db.execute(
            "SELECT service FROM evidence_pairs WHERE run_id = ? AND evidence_done_at IS NOT NULL", (run.run_id,)
        ).fetchall()
        assert sorted(s for (s,) in done) == ["cloudtrail", "iam", "s3"]

    # --- the evidence bucket ---
    s3 = boto3_client(moto_endpoint, "s3")
    listed = s3.list_objects_v2(Bucket=EVIDENCE_BUCKET, Prefix=f"evidence/{MOTO_ACCOUNT}/")
    keys = sorted(obj["Key"] for obj in listed.get("Contents", []))
    date = run.requested_at.strftime("%Y/%m/%d")
    assert keys == [f"evidence/{MOTO_ACCOUNT}/{date}/{run.run_id}/{svc}.json" for svc in ("cloudtrail", "iam", "s3")]
    for key in keys:
        obj = s3.get_object(Bucket=EVIDENCE_BUCKET, Key=key, ChecksumMode="ENABLED")
        assert obj["ServerSideEncryption"] == "AES256"
        assert obj.get("ChecksumSHA256")
        document: dict[str, Any] = json.loads(obj["Body"].read())
        service = key.rsplit("/", 1)[1].removesuffix(".json")
        assert len(document["findings"]) == FINDINGS_PER_SERVICE[service]
        assert document["run_id"] == run.run_id
    assert {s.evidence_location for s in report.services} == {f"s3://{EVIDENCE_BUCKET}/{k}" for k in keys}


async def test_missing_collector_ends_incomplete_and_check_exits_3(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    # An empty account passes CC6.7; the CloudTrail collector never answers.
    settings = make_settings(
        nats_url=nats_server.url,
        aws_endpoint_url=moto_endpoint,
        run_deadline_seconds=3.0,
        deadline_poll_seconds=0.2,
    )
    services = ("evidence", "collector-iam", "collector-s3", "scheduler")
    async with running_stack(settings, services=services, migrate=True):
        code, out, err = await kushim(
            "check", "-s", "s3", "-s", "cloudtrail", "--output", "json", env=cli_env(KUSHIM_NATS_URL=nats_server.url)
        )
    assert code == EXIT_ERROR, err
    result = json.loads(out)
    assert result["status"] == "INCOMPLETE"
    assert result["missing"] == [{"account_id": MOTO_ACCOUNT, "service": "cloudtrail"}]
    assert result["controls"]["CC7.2"]["status"] == "ERROR"
    assert "cloudtrail" in result["controls"]["CC7.2"]["reason"]
    assert result["controls"]["CC6.7"]["status"] == "PASS"
    assert "CC6.1" not in result["controls"]  # IAM was not requested


async def test_check_exits_4_when_the_broker_is_unreachable() -> None:
    code, _, err = await kushim("check", env=cli_env(KUSHIM_NATS_URL=f"nats://127.0.0.1:{free_port()}"), timeout=60)
    assert code == EXIT_COULD_NOT_RUN
    assert "Could not run" in err


async def test_kushim_up_then_check_against_aws_endpoint_url(moto_endpoint: str, tmp_path: Path) -> None:
    """The documented path for a real account, with AWS_ENDPOINT_URL pointing at moto."""
    seed_demo_account(moto_endpoint)
    home = tmp_path / "kushim-home"
    env = cli_env(
        AWS_ENDPOINT_URL=moto_endpoint,
        AWS_REGION="us-east-1",
        AWS_ACCESS_KEY_ID="AKIAPLANTEDE2E000001",
        AWS_SECRET_ACCESS_KEY=PLANTED_SECRET,
        AWS_S3_BUCKET_NAME=EVIDENCE_BUCKET,
        KUSHIM_HOME=str(home),
        KUSHIM_SCHEDULE_ENABLED="false",
        KUSHIM_LOG_FORMAT="json",
    )
    up = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli.main", "up", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        for _ in range(300):
            if (home / "state.json").exists():
                break
            assert up.returncode is None, "kushim up exited early"
            await asyncio.sleep(0.1)
        else:
            pytest.fail("kushim up did not write its state file")
        code, out, err = await kushim("check", "--wait", "--output", "json", env=env)
        assert code == EXIT_FAIL, err
        result = json.loads(out)
        assert result["status"] == "COMPLETE"
        assert {c: v["status"] for c, v in result["controls"].items()} == {
            "CC6.1": "FAIL",
            "CC6.7": "FAIL",
            "CC7.2": "PASS",
        }
        assert {(f["check_id"], f["resource_id"], f["status"]) for f in result["findings"]} == TRUTH
        code, out, _ = await kushim("report", "--output", "json", env=env)
        assert code == EXIT_FAIL
        assert json.loads(out)["run_id"] == result["run_id"]
    finally:
        if up.returncode is None:
            up.send_signal(signal.SIGINT)
        _, up_err = await asyncio.wait_for(up.communicate(), 30)
    assert up.returncode == 0, up_err.decode()[-2000:]
    assert not (home / "state.json").exists()
    assert PLANTED_SECRET not in up_err.decode()
    assert "AKIAPLANTEDE2E000001" not in up_err.decode()


async def test_up_without_credentials_refuses_to_start(tmp_path: Path) -> None:
    env = cli_env(KUSHIM_HOME=str(tmp_path / "home"), AWS_EC2_METADATA_DISABLED="true")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        env.pop(key, None)
    code, _, err = await kushim("up", env=env, timeout=60)
    assert code == EXIT_COULD_NOT_RUN
    assert "no AWS credentials found" in err


async def test_up_with_a_missing_evidence_bucket_refuses_to_start(moto_endpoint: str, tmp_path: Path) -> None:
    env = cli_env(
        KUSHIM_HOME=str(tmp_path / "home"),
        AWS_ENDPOINT_URL=moto_endpoint,
        AWS_S3_BUCKET_NAME="kushim-evidence-storage-missing",
    )
    code, _, err = await kushim("up", env=env, timeout=60)
    assert code == EXIT_COULD_NOT_RUN
    assert "kushim-evidence-storage-missing" in err
    assert not (tmp_path / "home" / "state.json").exists()
