"""Runs over time, history and export through a running evidence service (real nats-server, SQLite), and the CLI
commands that read them (`kushim runs`, `kushim history`, `kushim export`)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from typer.testing import CliRunner

from services.cli.main import app as cli
from shared import subjects
from shared.messages import (
    HistoryPage,
    PlannedCheck,
    RunsPage,
    RunState,
    Service,
    Status,
    run_id_for,
)
from shared.settings import Settings
from tests.evidence.factory import (
    ACCOUNT,
    OTHER_ACCOUNT,
    REQUESTED_AT,
    make_chunks,
    make_finding,
    make_plan,
    new_request_id,
)
from tests.evidence.harness import Harness, running_evidence

# Per run (oldest first): IAM user statuses and S3 bucket statuses; None = the service's results never arrive.
RUNS: list[tuple[dict[str, Status], dict[str, Status] | None]] = [
    ({"user/alice": Status.FAIL, "user/bob": Status.PASS}, {"bucket/logs": Status.FAIL, "bucket/data": Status.PASS}),
    ({"user/alice": Status.PASS, "user/bob": Status.FAIL, "user/carol": Status.FAIL}, {"bucket/logs": Status.PASS}),
    ({"user/alice": Status.PASS, "user/bob": Status.ERROR}, None),  # S3 missing: INCOMPLETE, S3 not compared
]


async def _run(h: Harness, day: int, iam: dict[str, Status], s3: dict[str, Status] | None) -> str:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    deadline = datetime.now(UTC) + timedelta(seconds=1 if s3 is None else 60)
    requested_at = REQUESTED_AT + timedelta(days=day)
    pairs = [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3)]
    await h.plan(make_plan(request_id, pairs, requested_at=requested_at, deadline_at=deadline))
    found = [make_finding(run_id, ACCOUNT, "iam.user_mfa", user, status) for user, status in iam.items()]
    await h.chunks(make_chunks(request_id, ACCOUNT, Service.IAM, found))
    if s3 is not None:
        found = [make_finding(run_id, ACCOUNT, "s3.bucket_versioning", b, status) for b, status in s3.items()]
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.S3, found))
    completed = await h.next_completion(timeout=15)
    while completed.run_id != run_id:  # a core subscriber may see an earlier run's completion twice (republished)
        completed = await h.next_completion(timeout=15)
    assert completed.state is (RunState.INCOMPLETE if s3 is None else RunState.COMPLETE)
    return run_id


async def _ask(h: Harness, subject: str, payload: dict[str, object]) -> bytes:
    reply = await h.nc.request(subject, json.dumps(payload).encode(), timeout=5)
    return bytes(reply.data)


async def test_runs_history_and_export(e2e_settings: Callable[..., Settings]) -> None:
    settings = e2e_settings()
    assert settings.nats_url is not None
    async with running_evidence(settings) as h:
        run_ids = [await _run(h, day, iam, s3) for day, (iam, s3) in enumerate(RUNS)]

        page = RunsPage.model_validate_json(await _ask(h, subjects.RUNS_REQUEST, {"account_id": ACCOUNT, "limit": 2}))
        assert page.ok
        assert [e.run.run_id for e in page.runs] == [run_ids[2], run_ids[1]]
        assert page.runs[0].run.state is RunState.INCOMPLETE
        assert page.runs[0].run.missing == [PlannedCheck(account_id=ACCOUNT, service=Service.S3)]
        assert page.runs[1].findings_by_status == {Status.PASS: 2, Status.FAIL: 2, Status.ERROR: 0}
        assert page.runs[1].accounts == [ACCOUNT]
        assert page.next_before == page.runs[1].run.requested_at
        cursor = {"before": page.next_before.isoformat(), "before_run_id": page.next_before_run_id}
        rest = RunsPage.model_validate_json(
            await _ask(h, subjects.RUNS_REQUEST, {"account_id": ACCOUNT, "limit": 2, **cursor})
        )
        assert [e.run.run_id for e in rest.runs] == [run_ids[0]]
        assert rest.next_before is None
        other = RunsPage.model_validate_json(await _ask(h, subjects.RUNS_REQUEST, {"account_id": OTHER_ACCOUNT}))
        assert other.ok
        assert other.runs == []
        bad = RunsPage.model_validate_json(await _ask(h, subjects.RUNS_REQUEST, {"limit": 0}))
        assert not bad.ok
        assert "limit" in (bad.error or "")

        history = HistoryPage.model_validate_json(await _ask(h, subjects.HISTORY_REQUEST, {"account_id": ACCOUNT}))
        assert history.ok
        newest, middle, oldest = history.entries
        # Run 3 vs run 2: only IAM compared (S3 missing); bob FAIL -> ERROR stopped failing; carol vanished.
        assert newest.compared_with == run_ids[1]
        assert newest.services_compared == [Service.IAM]
        assert newest.started_failing == []
        assert [(c.resource_id, c.before, c.after) for c in newest.stopped_failing] == [
            ("user/bob", Status.FAIL, Status.ERROR),
            ("user/carol", Status.FAIL, None),
        ]
        # Run 2 vs run 1: alice and logs fixed; bob broke; carol new and failing; data vanished (was PASS).
        assert middle.services_compared == [Service.IAM, Service.S3]
        assert [(c.check_id, c.resource_id, c.before, c.after) for c in middle.started_failing] == [
            ("iam.user_mfa", "user/bob", Status.PASS, Status.FAIL),
            ("iam.user_mfa", "user/carol", None, Status.FAIL),
        ]
        assert [(c.resource_id, c.before, c.after) for c in middle.stopped_failing] == [
            ("user/alice", Status.FAIL, Status.PASS),
            ("bucket/logs", Status.FAIL, Status.PASS),
        ]
        assert (middle.started_failing_total, middle.stopped_failing_total) == (2, 2)
        assert oldest.compared_with is None

        env = {"KUSHIM_NATS_URL": settings.nats_url, "KUSHIM_HOME": str(settings.home)}
        runner = CliRunner()
        shown = await asyncio.to_thread(runner.invoke, cli, ["history", "--account", ACCOUNT], env=env)
        assert shown.exit_code == 0, shown.output
        assert "user/bob (global): PASS → FAIL" in shown.stdout
        assert "2 stopped failing" in shown.stdout
        listed = await asyncio.to_thread(runner.invoke, cli, ["runs", "-o", "json"], env=env)
        assert listed.exit_code == 0, listed.output
        assert [r["run"]["run_id"] for r in json.loads(listed.stdout)["runs"]] == run_ids[::-1]

        exported = await asyncio.to_thread(
            runner.invoke, cli, ["export", "--run", run_ids[1], "--format", "csv"], env=env
        )
        assert exported.exit_code == 0, exported.output
        rows = list(csv.DictReader(io.StringIO(exported.stdout)))
        assert sorted((r["resource_id"], r["status"]) for r in rows) == [
            ("bucket/logs", "PASS"),
            ("user/alice", "PASS"),
            ("user/bob", "FAIL"),
            ("user/carol", "FAIL"),
        ]
        ocsf = await asyncio.to_thread(runner.invoke, cli, ["export", "--run", run_ids[1], "-f", "ocsf"], env=env)
        assert ocsf.exit_code == 0, ocsf.output
        events = json.loads(ocsf.stdout)
        assert len(events) == 4
        assert {e["class_uid"] for e in events} == {2003}
        assert sorted(e["compliance"]["control"] for e in events) == ["CC6.1", "CC6.1", "CC6.1", "CC6.7"]
        unknown = await asyncio.to_thread(
            runner.invoke, cli, ["export", "--run", "run-" + "0" * 32, "-f", "json"], env=env
        )
        assert unknown.exit_code == 4
        assert "unknown run" in unknown.output
