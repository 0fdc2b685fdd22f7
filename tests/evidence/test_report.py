"""Report request/reply: over core NATS against the running service, and the reply-size guard on its own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from services.evidence.report import Reports
from services.evidence.store import EvidenceStore
from shared.embedded import EmbeddedNats
from shared.messages import ReportRequest, Service, Soc2Control, Status, run_id_for
from shared.settings import Settings
from tests.evidence.factory import ACCOUNT, OTHER_ACCOUNT, make_chunks, make_finding, make_plan, new_request_id
from tests.evidence.harness import running_evidence

# The order a report must give, written down by hand: FAIL, ERROR, PASS, then check_id, then resource_id.
EXPECTED_ORDER = [
    ("FAIL", "iam.console_user_mfa", "user/dave"),
    ("FAIL", "iam.user_mfa", "user/carol"),
    ("ERROR", "iam.user_mfa", "user/zed"),
    ("PASS", "iam.console_user_mfa", "user/alice"),
    ("PASS", "iam.user_mfa", "user/alice"),
]


FIVE_FINDINGS = [
    ("iam.user_mfa", "user/alice", Status.PASS),
    ("iam.user_mfa", "user/zed", Status.ERROR),
    ("iam.console_user_mfa", "user/alice", Status.PASS),
    ("iam.user_mfa", "user/carol", Status.FAIL),
    ("iam.console_user_mfa", "user/dave", Status.FAIL),
]


async def test_report_paging_and_errors(make_settings: Callable[..., Settings], nats_server: EmbeddedNats) -> None:
    settings = make_settings(nats_url=nats_server.url, deadline_poll_seconds=0.2)
    request_id = new_request_id()
    run_id = run_id_for(request_id)
    found = [make_finding(run_id, ACCOUNT, c, r, s) for c, r, s in FIVE_FINDINGS]

    async with running_evidence(settings) as h:
        await h.plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
        await h.chunks(make_chunks(request_id, ACCOUNT, Service.IAM, found, per_chunk=2))
        await h.next_completion()

        pages = []
        for number in range(3):
            request = ReportRequest(run_id=run_id, page=number, page_size=2)
            pages.append(await h.report(request.model_dump_json().encode()))
        assert all(p.ok for p in pages)
        assert [len(p.findings) for p in pages] == [2, 2, 1]
        assert [p.next_page for p in pages] == [1, 2, None]
        assert [p.findings_total for p in pages] == [5, 5, 5]
        got = [(f.status.value, f.check_id, f.resource_id) for p in pages for f in p.findings]
        assert got == EXPECTED_ORDER
        first = pages[0]
        assert first.run is not None
        assert first.run.run_id == run_id
        assert first.run.state.value == "COMPLETE"
        assert first.run.controls[Soc2Control.CC6_1].status is Status.FAIL
        assert [(s.account_id, s.service, s.complete) for s in first.services] == [(ACCOUNT, Service.IAM, True)]
        assert first.services[0].evidence_location == "database"

        by_request = await h.report(ReportRequest(request_id=request_id).model_dump_json().encode())
        latest = await h.report(b"{}")
        for_account = await h.report(f'{{"account_id": "{ACCOUNT}", "page_size": 1000}}'.encode())
        for page in (by_request, latest, for_account):
            assert page.ok
            assert page.run is not None
            assert page.run.run_id == run_id
            assert page.findings_total == 5
            assert page.next_page is None

        unknown = await h.report(ReportRequest(run_id=run_id_for("never-requested")).model_dump_json().encode())
        assert not unknown.ok
        assert unknown.error == f"unknown run {run_id_for('never-requested')}"
        other = await h.report(f'{{"run_id": "{run_id}", "account_id": "{OTHER_ACCOUNT}"}}'.encode())
        assert not other.ok
        assert other.error is not None
        assert OTHER_ACCOUNT in other.error

        for malformed in (b"not json at all", b'{"page_size": 5000}', b'{"run_id": "x", "surprise": 1}', b""):
            reply = await h.report(malformed)
            assert not reply.ok
            assert reply.error is not None
            assert reply.error.startswith("invalid message")
            assert reply.run is None
        assert (await h.report(b"{}")).ok  # still answering


async def test_a_page_too_large_for_one_reply_is_shrunk_without_losing_its_place(tmp_path: Path) -> None:
    store = EvidenceStore(f"sqlite+aiosqlite:///{tmp_path / 'report.db'}")
    await store.migrate()
    try:
        request_id = new_request_id()
        run_id = run_id_for(request_id)
        await store.save_plan(make_plan(request_id, [(ACCOUNT, Service.IAM)]))
        found = [
            make_finding(run_id, ACCOUNT, "iam.user_mfa", f"user/u{i:02d}", Status.PASS, blob="x" * 4000)
            for i in range(12)
        ]
        for chunk in make_chunks(request_id, ACCOUNT, Service.IAM, found):
            await store.save_chunk(chunk, found[0].observed_at)
        reports = Reports(store, budget=16_000)  # room for about three of these findings

        page = await reports.page(ReportRequest(run_id=run_id, page=1, page_size=6))
        assert page.ok
        assert (page.page_size, page.page, page.next_page) == (3, 2, 3)  # offset 6 kept: page 2 of size 3
        assert [f.resource_id for f in page.findings] == ["user/u06", "user/u07", "user/u08"]
        assert len(page.model_dump_json()) <= 16_000
        last = await reports.page(ReportRequest(run_id=run_id, page=3, page_size=3))
        assert [f.resource_id for f in last.findings] == ["user/u09", "user/u10", "user/u11"]
        assert last.next_page is None
    finally:
        await store.close()
