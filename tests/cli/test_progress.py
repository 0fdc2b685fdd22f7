"""`kushim check --wait` progress: read from the evidence service while the run is still running."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.cli.client import KushimClient, Progress
from shared.messages import RunState, Service, Status, run_id_for
from shared.settings import Settings
from tests.evidence.factory import ACCOUNT, make_chunks, make_finding, make_plan, new_request_id
from tests.evidence.harness import running_evidence


async def test_progress_counts_checks_done_and_findings_stored(e2e_settings: Callable[..., Settings]) -> None:
    settings = e2e_settings()
    assert settings.nats_url is not None
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    iam = [make_finding(run_id, ACCOUNT, "iam.user_mfa", f"user/u{i}", Status.PASS) for i in range(3)]
    s3 = [make_finding(run_id, ACCOUNT, "s3.bucket_versioning", "bucket/b", Status.FAIL)]
    async with running_evidence(settings) as h:
        client = await KushimClient.connect(settings.nats_url)
        try:
            await h.plan(make_plan(request_id, [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3)]))
            await h.chunks(make_chunks(request_id, ACCOUNT, Service.IAM, iam))
            await h.drained()
            page = await client._run_page(request_id)
            assert page is not None
            progress = Progress.of(page)
            assert (progress.state, progress.checks_done, progress.checks_expected) == (RunState.RUNNING, 1, 2)
            assert progress.findings_stored == 3
            assert progress.describe() == f"run {run_id}: 1/2 checks done, 3 findings stored"

            seen: list[Progress] = []

            async def finish_later() -> None:
                await asyncio.sleep(1.5)  # at least one progress poll happens first
                await h.chunks(make_chunks(request_id, ACCOUNT, Service.S3, s3))

            finisher = asyncio.create_task(finish_later())
            # The request was already answered by the harness's plan: wait on the same request id.
            done = await client.run_and_wait(request_id, timeout=20, progress=seen.append)
            await finisher
            assert done == run_id
            assert seen
            assert seen[0].checks_done == 1
            assert all(p.checks_expected == 2 for p in seen)
        finally:
            await client.close()
