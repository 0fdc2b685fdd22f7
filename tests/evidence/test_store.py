"""The evidence store on SQLite and (with KUSHIM_TEST_POSTGRES_DSN) PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import text

from services.evidence.document import build_document
from services.evidence.store import EvidenceStore, PairKey
from shared.controls import gating_table
from shared.messages import PlannedCheck, RunState, Service, Soc2Control, Status, run_id_for
from tests.evidence.factory import ACCOUNT, OTHER_ACCOUNT, make_chunks, make_finding, make_plan, new_request_id

NOW = datetime(2026, 3, 15, 0, 0, tzinfo=UTC)
GATING = gating_table("all")


async def finish(store: EvidenceStore, pair: PairKey) -> None:
    """What the service does once a pair's chunks are in: build the document and record it (no bucket)."""
    material = await store.pair_material(pair)
    assert material is not None
    doc = build_document(material)
    await store.save_evidence(
        pair, key=doc.key, body=doc.body, sha256=doc.sha256, location="database", version_id=None, now=NOW
    )


async def test_same_chunk_twice_stores_one_row_each(store: EvidenceStore) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    found = [make_finding(run_id, ACCOUNT, "iam.user_mfa", f"user/u{i}", Status.PASS) for i in range(3)]
    [chunk0, chunk1] = make_chunks(request_id, ACCOUNT, Service.IAM, found, per_chunk=2)

    first = await store.save_chunk(chunk0, NOW)
    again = await store.save_chunk(chunk0, NOW + timedelta(seconds=5))

    assert (first.received, first.chunk_count, first.all_received) == (1, 2, False)
    assert again == first
    assert await store.count_rows(run_id) == {
        "evidence_runs": 0,
        "evidence_pairs": 1,
        "evidence_chunks": 1,
        "evidence_findings": 2,
        "evidence_documents": 0,
        "evidence_manifests": 0,
    }
    last = await store.save_chunk(chunk1, NOW)
    assert last.all_received
    assert not last.evidence_done
    assert (await store.count_rows(run_id))["evidence_findings"] == 3


async def test_chunks_before_plan_are_kept_and_completed_after_it(store: EvidenceStore) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    pair = PairKey(run_id, ACCOUNT, Service.S3)
    found = [make_finding(run_id, ACCOUNT, "s3.bucket_default_encryption", "bucket/b1", Status.PASS)]
    for chunk in make_chunks(request_id, ACCOUNT, Service.S3, found):
        assert (await store.save_chunk(chunk, NOW)).all_received

    assert await store.pair_material(pair) is None  # no plan: the evidence cannot be dated yet
    assert await store.ready_pairs(run_id) == [pair]
    assert await store.finalize_run(run_id, NOW, deadline_passed=True, gating=GATING) is None  # unknown run

    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.S3)]))
    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.S3)]))  # a redelivered plan changes nothing
    assert (await store.count_rows(run_id))["evidence_runs"] == 1
    assert await store.finalize_run(run_id, NOW, deadline_passed=False, gating=GATING) is None  # evidence not done
    await finish(store, pair)
    assert await store.ready_pairs(run_id) == []

    assert await store.finalize_run(run_id, NOW, deadline_passed=False, gating=GATING) is RunState.COMPLETE
    completed = await store.pending_completion(run_id)
    assert completed is not None
    assert completed.state is RunState.COMPLETE
    assert completed.controls[Soc2Control.CC6_7].status is Status.PASS
    assert set(completed.controls) == {Soc2Control.CC6_7}  # only the planned service's control


async def test_completion_verdicts_and_guard(store: EvidenceStore) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    plan = make_plan(request_id, [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3), (ACCOUNT, Service.CLOUDTRAIL)])
    await store.save_plan(plan)
    iam = [
        make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/alice", Status.FAIL),
        make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/bob", Status.PASS),
        make_finding(run_id, ACCOUNT, "iam.console_user_mfa", "user/bob", Status.PASS),
    ]
    s3 = [make_finding(run_id, ACCOUNT, "s3.bucket_default_encryption", f"bucket/b{i}", Status.PASS) for i in (1, 2)]
    trail = [
        make_finding(run_id, ACCOUNT, "cloudtrail.multi_region_logging", "account", Status.ERROR),
        make_finding(run_id, ACCOUNT, "cloudtrail.trail_logging", "trail/t1", Status.FAIL),  # advisory
    ]
    for service, found in ((Service.IAM, iam), (Service.S3, s3), (Service.CLOUDTRAIL, trail)):
        for chunk in make_chunks(request_id, ACCOUNT, service, found, per_chunk=2):
            await store.save_chunk(chunk, NOW)
        await finish(store, PairKey(run_id, ACCOUNT, service))

    # Two evaluations race: exactly one of them completes the run.
    results = await asyncio.gather(
        store.finalize_run(run_id, NOW, deadline_passed=False, gating=GATING),
        store.finalize_run(run_id, NOW, deadline_passed=True, gating=GATING),
    )
    assert sorted(r.value for r in results if r is not None) == ["COMPLETE"]

    completed = await store.pending_completion(run_id)
    assert completed is not None
    verdicts = {control: v.status for control, v in completed.controls.items()}
    assert verdicts == {Soc2Control.CC6_1: Status.FAIL, Soc2Control.CC6_7: Status.PASS, Soc2Control.CC7_2: Status.ERROR}
    cc61 = completed.controls[Soc2Control.CC6_1]
    assert (cc61.failed, cc61.errors, cc61.passed) == (1, 0, 2)
    assert completed.controls[Soc2Control.CC7_2].failed == 0  # the advisory FAIL does not count
    assert completed.findings_total == 7
    assert completed.findings_by_status == {Status.PASS: 4, Status.FAIL: 2, Status.ERROR: 1}
    assert completed.missing == []

    assert await store.unpublished_runs() == [run_id]
    await store.mark_published(run_id)
    assert await store.pending_completion(run_id) is None
    assert await store.unpublished_runs() == []


async def test_mfa_scope_console_makes_user_mfa_advisory(store: EvidenceStore) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
    found = [
        make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/robot", Status.FAIL),
        make_finding(run_id, ACCOUNT, "iam.console_user_mfa", "user/alice", Status.PASS),
    ]
    for chunk in make_chunks(request_id, ACCOUNT, Service.IAM, found):
        await store.save_chunk(chunk, NOW)
    await finish(store, PairKey(run_id, ACCOUNT, Service.IAM))

    assert await store.finalize_run(run_id, NOW, deadline_passed=False, gating=gating_table("console"))
    completed = await store.pending_completion(run_id)
    assert completed is not None
    assert completed.controls[Soc2Control.CC6_1].status is Status.PASS


async def test_incomplete_after_deadline_names_the_missing_pair(store: EvidenceStore) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    deadline = NOW + timedelta(minutes=15)
    plan = make_plan(request_id, [(ACCOUNT, Service.IAM), (OTHER_ACCOUNT, Service.IAM)], deadline_at=deadline)
    await store.save_plan(plan)
    found = [make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/alice", Status.PASS)]
    for chunk in make_chunks(request_id, ACCOUNT, Service.IAM, found):
        await store.save_chunk(chunk, NOW)
    await finish(store, PairKey(run_id, ACCOUNT, Service.IAM))

    assert await store.finalize_run(run_id, NOW, deadline_passed=False, gating=GATING) is None
    assert await store.overdue_runs(deadline - timedelta(seconds=1)) == []
    assert await store.overdue_runs(deadline) == [run_id]

    assert await store.finalize_run(run_id, deadline, deadline_passed=True, gating=GATING) is RunState.INCOMPLETE
    assert await store.overdue_runs(deadline + timedelta(hours=1)) == []
    completed = await store.pending_completion(run_id)
    assert completed is not None
    assert completed.state is RunState.INCOMPLETE
    assert completed.missing == [PlannedCheck(account_id=OTHER_ACCOUNT, service=Service.IAM)]
    cc61 = completed.controls[Soc2Control.CC6_1]
    assert cc61.status is Status.ERROR
    assert OTHER_ACCOUNT in cc61.reason
    assert completed.completed_at == deadline

    run = await store.find_run(run_id=run_id)
    assert run is not None
    assert run.state is RunState.INCOMPLETE
    assert run.missing == completed.missing


async def test_fail_wins_over_a_missing_pair(store: EvidenceStore) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.S3), (OTHER_ACCOUNT, Service.S3)]))
    found = [make_finding(run_id, ACCOUNT, "s3.bucket_default_encryption", "bucket/open", Status.FAIL)]
    for chunk in make_chunks(request_id, ACCOUNT, Service.S3, found):
        await store.save_chunk(chunk, NOW)
    await finish(store, PairKey(run_id, ACCOUNT, Service.S3))
    assert await store.finalize_run(run_id, NOW, deadline_passed=True, gating=GATING) is RunState.INCOMPLETE
    completed = await store.pending_completion(run_id)
    assert completed is not None
    assert completed.controls[Soc2Control.CC6_7].status is Status.FAIL


async def test_report_queries(store: EvidenceStore) -> None:
    older, newer = new_request_id(), new_request_id()
    await store.save_plan(make_plan(older, [(ACCOUNT, Service.IAM), (OTHER_ACCOUNT, Service.IAM)]))
    later = make_plan(newer, [(ACCOUNT, Service.IAM)], requested_at=datetime(2026, 3, 16, tzinfo=UTC))
    await store.save_plan(later)
    run_id = run_id_for(older)
    found = [
        make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/b", Status.PASS),
        make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/a", Status.PASS),
        make_finding(run_id, ACCOUNT, "iam.console_user_mfa", "user/z", Status.ERROR),
        make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/c", Status.FAIL),
    ]
    for chunk in make_chunks(request_id=older, account_id=ACCOUNT, service=Service.IAM, findings=found):
        await store.save_chunk(chunk, NOW)

    latest = await store.find_run()
    assert latest is not None
    assert latest.run_id == run_id_for(newer)
    by_account = await store.find_run(account_id=OTHER_ACCOUNT)
    assert by_account is not None
    assert by_account.run_id == run_id
    by_request = await store.find_run(request_id=older)
    assert by_request is not None
    assert by_request.run_id == run_id
    assert by_request.requested_at == datetime(2026, 3, 14, 23, 30, tzinfo=UTC)
    assert await store.find_run(run_id=run_id, request_id=newer) is None

    total, page = await store.findings_page(run_id, account_id=None, offset=0, limit=10)
    assert total == 4
    assert [(f.status.value, f.resource_id) for f in page] == [
        ("FAIL", "user/c"),
        ("ERROR", "user/z"),
        ("PASS", "user/a"),
        ("PASS", "user/b"),
    ]
    assert page[0] == found[3]  # a finding survives the database unchanged (timestamps included)
    total, page = await store.findings_page(run_id, account_id=OTHER_ACCOUNT, offset=0, limit=10)
    assert (total, page) == (0, [])

    results = await store.service_results(run_id)
    assert [(r.account_id, r.service, r.complete) for r in results] == [
        (ACCOUNT, Service.IAM, False),
        (OTHER_ACCOUNT, Service.IAM, False),
    ]
    assert results[0].population == {"resources": 4}
    assert results[1].population == {}


async def test_sqlite_runs_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    store = EvidenceStore(f"sqlite+aiosqlite:///{tmp_path / 'new' / 'dir' / 'kushim.db'}")
    await store.migrate()  # creates the missing directories
    try:
        async with store.engine.connect() as conn:
            assert await conn.scalar(text("PRAGMA journal_mode")) == "wal"
            assert await conn.scalar(text("PRAGMA synchronous")) == 2  # FULL
    finally:
        await store.close()


async def test_a_later_scan_attempt_replaces_a_partly_stored_earlier_one(store: EvidenceStore) -> None:
    """Attempt 1 stored chunk 0 of 3 and died; attempt 2 re-scanned into 2 chunks: only attempt 2's set counts."""
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    first = [make_finding(run_id, ACCOUNT, "iam.user_mfa", f"user/u{i}", Status.PASS) for i in range(3)]
    second = [make_finding(run_id, ACCOUNT, "iam.user_mfa", f"user/u{i}", Status.PASS) for i in range(4)]
    attempt1 = [
        c.model_copy(update={"attempt": 1}) for c in make_chunks(request_id, ACCOUNT, Service.IAM, first, per_chunk=1)
    ]
    attempt2 = [
        c.model_copy(update={"attempt": 2}) for c in make_chunks(request_id, ACCOUNT, Service.IAM, second, per_chunk=2)
    ]
    assert (len(attempt1), len(attempt2)) == (3, 2)

    progress = await store.save_chunk(attempt1[0], NOW)
    assert (progress.received, progress.chunk_count) == (1, 3)
    progress = await store.save_chunk(attempt2[0], NOW)
    assert (progress.received, progress.chunk_count, progress.all_received) == (1, 2, False)
    progress = await store.save_chunk(attempt1[1], NOW)  # a late chunk of the dead attempt does not count
    assert (progress.received, progress.chunk_count, progress.all_received) == (1, 2, False)
    progress = await store.save_chunk(attempt2[1], NOW)
    assert progress.all_received
    assert (await store.count_rows(run_id))["evidence_findings"] == 4


async def test_an_incomplete_run_becomes_complete_when_the_missing_results_arrive_late(store: EvidenceStore) -> None:
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    deadline = NOW + timedelta(minutes=15)
    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.IAM)], deadline_at=deadline))
    assert await store.finalize_run(run_id, deadline, deadline_passed=True, gating=GATING) is RunState.INCOMPLETE
    await store.mark_published(run_id)

    found = [make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/alice", Status.PASS)]
    for chunk in make_chunks(request_id, ACCOUNT, Service.IAM, found):
        await store.save_chunk(chunk, deadline)
    await finish(store, PairKey(run_id, ACCOUNT, Service.IAM))

    later = deadline + timedelta(minutes=1)
    assert await store.finalize_run(run_id, later, deadline_passed=False, gating=GATING) is RunState.COMPLETE
    completed = await store.pending_completion(run_id)
    assert completed is not None
    assert completed.state is RunState.COMPLETE
    assert completed.missing == []
    assert completed.controls[Soc2Control.CC6_1].status is Status.PASS
    assert await store.finalize_run(run_id, later, deadline_passed=True, gating=GATING) is None


async def test_a_complete_attempt_is_sealed_against_a_later_rescan(store: EvidenceStore) -> None:
    """Attempt 1's set is complete (its ack was lost); attempt 2 re-scanned: attempt 1's set stays the evidence."""
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    found = [make_finding(run_id, ACCOUNT, "iam.user_mfa", f"user/u{i}", Status.PASS) for i in range(2)]
    attempt1 = [
        c.model_copy(update={"attempt": 1, "population": {"users": 2}})
        for c in make_chunks(request_id, ACCOUNT, Service.IAM, found, per_chunk=1)
    ]
    attempt2 = [
        c.model_copy(update={"attempt": 2, "population": {"users": 3}})
        for c in make_chunks(request_id, ACCOUNT, Service.IAM, found, per_chunk=2)
    ]
    for chunk in attempt1:
        progress = await store.save_chunk(chunk, NOW)
    assert progress.all_received
    progress = await store.save_chunk(attempt2[0], NOW)
    assert (progress.chunk_count, progress.all_received) == (2, True)
    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
    material = await store.pair_material(PairKey(run_id, ACCOUNT, Service.IAM))
    assert material is not None
    assert material.population == {"users": 2}


async def test_pair_material_findings_are_exactly_the_models_json(store: EvidenceStore) -> None:
    """The evidence document reads findings back without re-validating them: the rows must give exactly what
    `Finding.model_dump(mode="json")` gives (times with and without microseconds, no ARN, nested details)."""
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    plain = make_finding(run_id, ACCOUNT, "iam.user_mfa", "user/plain", Status.PASS)
    precise = make_finding(
        run_id, ACCOUNT, "iam.user_mfa", "user/ünïcode", Status.FAIL, nested={"a": [1, 2.5, None, True]}, n=10**15
    ).model_copy(update={"observed_at": datetime(2026, 3, 14, 23, 31, 1, 120000, tzinfo=UTC), "resource_arn": None})
    found = [plain, precise]
    await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
    for chunk in make_chunks(request_id, ACCOUNT, Service.IAM, found):
        await store.save_chunk(chunk, NOW)
    material = await store.pair_material(PairKey(run_id, ACCOUNT, Service.IAM))
    assert material is not None
    by_id = {f["finding_id"]: f for f in material.findings}
    assert by_id == {f.finding_id: f.model_dump(mode="json") for f in found}
    assert by_id[precise.finding_id]["observed_at"] == "2026-03-14T23:31:01.120000Z"


async def test_run_pages_neither_skip_nor_repeat_runs_requested_at_the_same_instant(store: EvidenceStore) -> None:
    request_ids = [new_request_id() for _ in range(5)]
    for request_id in request_ids:  # make_plan: every run requested at the same REQUESTED_AT
        await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
    seen: list[str] = []
    before, before_run_id = None, None
    for _ in range(4):
        page = await store.list_runs(limit=2, before=before, before_run_id=before_run_id)
        seen += [row.run.run_id for row in page]
        if len(page) < 2:
            break
        before, before_run_id = page[-1].run.requested_at, page[-1].run.run_id
    assert sorted(seen) == sorted(run_id_for(r) for r in request_ids)
    assert len(seen) == len(set(seen))
