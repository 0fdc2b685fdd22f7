"""`kushim demo`: the whole pipeline on an embedded moto account, with dummy credentials, in a temporary folder."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from services.cli.client import Report, run_check
from services.cli.demo_account import DEMO_EVIDENCE_BUCKET, DEMO_REGION, seed_demo_account
from services.cli.stack import running_stack
from services.evidence.verify import Verification, verify_evidence
from shared.messages import RunState, Soc2Control, Status
from shared.settings import Settings


class DemoSettings(Settings):
    """Settings from arguments only: the user's environment (AWS_*, KUSHIM_*) cannot leak into the demo."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


EXPECTED_CONTROLS = {Soc2Control.CC6_1: Status.FAIL, Soc2Control.CC6_7: Status.FAIL, Soc2Control.CC7_2: Status.PASS}
EXPECTED_USERS_WITHOUT_MFA = {"carol", "ci-deployer", "reporting-bot"}
EXPECTED_UNENCRYPTED = {"demo-app-uploads"}
EXPECTED_MFA_PERCENT = 50.0


def demo_settings(home: Path, endpoint: str) -> Settings:
    return DemoSettings(
        home=home,
        nats_url=None,
        aws_endpoint_url=endpoint,
        aws_region=DEMO_REGION,
        aws_access_key_id=SecretStr("demo"),
        aws_secret_access_key=SecretStr("demo"),  # the embedded moto server's dummy credentials
        evidence_bucket=DEMO_EVIDENCE_BUCKET,
        schedule_enabled=False,
        run_deadline_seconds=120.0,
        deadline_poll_seconds=1.0,
        ack_wait_seconds=30.0,
        retry_delay_seconds=0.5,
        log_level="WARNING",
    )


def verify(report: Report) -> list[str]:
    """Differences between the demo's report and what the demo account must produce."""
    problems: list[str] = []
    if report.run.state is not RunState.COMPLETE:
        problems.append(f"run state {report.run.state.value}, expected COMPLETE")
    got = {c: v.status for c, v in report.run.controls.items()}
    if got != EXPECTED_CONTROLS:
        problems.append(f"control verdicts { ({k.value: v.value for k, v in got.items()}) }")
    no_mfa = {
        str(f.details.get("user_name"))
        for f in report.findings
        if f.check_id == "iam.user_mfa" and f.status is Status.FAIL
    }
    if no_mfa != EXPECTED_USERS_WITHOUT_MFA:
        problems.append(f"users without MFA {sorted(no_mfa)}")
    unencrypted = {
        f.resource_id.removeprefix("bucket/")
        for f in report.findings
        if f.check_id == "s3.bucket_default_encryption" and f.status is Status.FAIL
    }
    if unencrypted != EXPECTED_UNENCRYPTED:
        problems.append(f"buckets without default encryption {sorted(unencrypted)}")
    iam = [s for s in report.services if s.service.value == "iam"]
    if not iam or iam[0].metrics.get("mfa_percent") != EXPECTED_MFA_PERCENT:
        problems.append(f"MFA percentage {iam[0].metrics.get('mfa_percent') if iam else None}")
    return problems


async def _run(home: Path, endpoint: str) -> tuple[Report, Verification]:
    settings = demo_settings(home, endpoint)
    async with running_stack(settings, migrate=True) as stack:
        report = await run_check(stack.url, timeout=180.0, request_id=f"kushim-demo-{uuid.uuid4().hex[:12]}")
    # What an auditor would run next: re-read the manifest chain and every evidence object from the bucket.
    return report, await verify_evidence(settings)


def run_demo() -> tuple[Report, Verification, list[str]]:
    from moto.server import ThreadedMotoServer

    # moto logs every API it does not implement (LookupEvents) with a traceback: the finding says it already.
    logging.getLogger("werkzeug").setLevel(logging.CRITICAL)
    moto: Any = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    try:
        host, port = moto.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        seed_demo_account(endpoint)
        with tempfile.TemporaryDirectory(prefix="kushim-demo-") as tmp:
            report, verification = asyncio.run(_run(Path(tmp), endpoint))
    finally:
        moto.stop()
    problems = verify(report)
    if not verification.ok or verification.manifests != 1 or verification.objects != len(report.services):
        found = ", ".join(f"{p.kind.value} {p.key}" for p in verification.problems)
        problems.append(f"evidence verification: {verification.manifests} manifest(s), {found or 'no problem'}")
    return report, verification, problems
