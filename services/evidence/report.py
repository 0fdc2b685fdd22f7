"""Report request/reply: `ReportRequest` bytes in, one `ReportPage` out, never an exception.

Run selection: `run_id`, else `request_id`, else the latest run (among runs that planned `account_id` when given).
Findings are ordered FAIL, ERROR, PASS, then check_id and resource_id.

Reply size: a page must stay well under NATS's 1 MiB payload. When the requested page would exceed
`REPLY_BUDGET_BYTES`, the reply carries fewer findings under a smaller page size that divides the requested one, so
`page * page_size` (the offset) is unchanged: the reply's `page` and `page_size` are authoritative, and a client
follows `next_page` with the reply's `page_size`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from services.evidence.history import changes
from services.evidence.store import EvidenceStore, ResourceStatus, StoredRun
from shared.consume import describe_failure, validation_reason
from shared.messages import (
    Finding,
    HistoryEntry,
    HistoryPage,
    HistoryRequest,
    ReportPage,
    ReportRequest,
    RunListEntry,
    RunsPage,
    RunsRequest,
    RunSummary,
    Status,
)

log = structlog.get_logger(__name__)

REPLY_BUDGET_BYTES = 768 * 1024


class Reports:
    def __init__(self, store: EvidenceStore, *, budget: int = REPLY_BUDGET_BYTES) -> None:
        self._store = store
        self._budget = budget

    async def answer(self, body: bytes) -> ReportPage:
        return await _reply(body, ReportRequest, ReportPage, self.page, "report")

    async def runs(self, body: bytes) -> RunsPage:
        return await _reply(body, RunsRequest, RunsPage, self._runs, "runs")

    async def history(self, body: bytes) -> HistoryPage:
        return await _reply(body, HistoryRequest, HistoryPage, self._history, "history")

    async def page(self, request: ReportRequest) -> ReportPage:
        by_id = request.run_id is not None or request.request_id is not None
        run = await self._store.find_run(
            run_id=request.run_id,
            request_id=request.request_id,
            account_id=None if by_id else request.account_id,  # the account narrows "latest" only
        )
        if run is None:
            return ReportPage(ok=False, error=_not_found(request))
        services = await self._store.service_results(run.run_id, request.account_id)
        if request.account_id is not None and not services:
            return ReportPage(ok=False, error=f"run {run.run_id} planned no checks for account {request.account_id}")
        offset = request.page * request.page_size
        total, findings = await self._store.findings_page(
            run.run_id, account_id=request.account_id, offset=offset, limit=request.page_size
        )
        summary = summary_of(run)
        names = await self._store.account_names()
        accounts = {s.account_id for s in services}
        head = ReportPage(
            ok=True,
            run=summary,
            services=services,
            findings_total=total,
            account_names={a: n for a, n in sorted(names.items()) if a in accounts},
        )
        size = self._fitting_page_size(len(head.model_dump_json()), findings, request.page_size)
        if size != request.page_size:
            log.info("report_page_shrunk", run_id=run.run_id, requested=request.page_size, page_size=size)
        page = offset // size
        shown = findings[:size]
        next_page = page + 1 if (page + 1) * size < total else None
        log.debug("report_served", run_id=run.run_id, page=page, findings=len(shown), findings_total=total)
        return head.model_copy(update={"findings": shown, "page": page, "page_size": size, "next_page": next_page})

    def _fitting_page_size(self, head_bytes: int, findings: list[Finding], requested: int) -> int:
        """The largest divisor of `requested` whose first findings fit the budget (at least 1)."""
        sizes = [len(f.model_dump_json()) + 1 for f in findings]
        for size in range(requested, 0, -1):
            if requested % size == 0 and head_bytes + sum(sizes[:size]) + 64 <= self._budget:
                return size
        return 1

    async def _runs(self, request: RunsRequest) -> RunsPage:
        rows = await self._store.list_runs(
            account_id=request.account_id,
            limit=request.limit,
            before=request.before,
            before_run_id=request.before_run_id,
        )
        entries = [
            RunListEntry(
                run=summary_of(row.run),
                accounts=row.accounts,
                findings_total=row.findings_total,
                findings_by_status={Status(k): v for k, v in row.findings_by_status.items()},
            )
            for row in rows
        ]
        last = rows[-1].run if rows and len(rows) == request.limit else None
        return RunsPage(
            ok=True,
            runs=entries,
            next_before=last.requested_at if last else None,
            next_before_run_id=last.run_id if last else None,
        )

    async def _history(self, request: HistoryRequest) -> HistoryPage:
        account = request.account_id
        rows = await self._store.list_runs(account_id=account, limit=request.limit + 1)
        if not rows:
            return HistoryPage(ok=False, account_id=account, error=f"no run has checked account {account} yet")
        statuses = [await self._store.resource_statuses(r.run.run_id, account) for r in rows]
        services = [await self._store.evidence_services(r.run.run_id, account) for r in rows]
        entries = []
        for i, row in enumerate(rows[: request.limit]):
            entry = HistoryEntry(
                run=summary_of(row.run),
                findings_by_status=_count(statuses[i].values()),
            )
            if i + 1 < len(rows):
                both = services[i] & services[i + 1]
                diff = changes(statuses[i + 1], statuses[i], both)
                entry = entry.model_copy(
                    update={
                        "compared_with": rows[i + 1].run.run_id,
                        "services_compared": sorted(both),
                        "started_failing": diff.started_failing[: request.changes_limit],
                        "stopped_failing": diff.stopped_failing[: request.changes_limit],
                        "started_failing_total": len(diff.started_failing),
                        "stopped_failing_total": len(diff.stopped_failing),
                    }
                )
            entries.append(entry)
        return HistoryPage(ok=True, account_id=account, entries=entries)


Req = TypeVar("Req", bound=BaseModel)
Page = TypeVar("Page", bound=BaseModel)


async def _reply(
    body: bytes, request_model: type[Req], page_model: type[Page], build: Callable[[Req], Awaitable[Page]], what: str
) -> Page:
    """Validate a request and build its reply; never raise: an invalid request or a failure is an `ok: false` page."""
    try:
        request = request_model.model_validate_json(body)
    except ValidationError as exc:
        reason = validation_reason(exc)
        log.warning(f"{what}_request_invalid", reason=reason)
        return page_model(ok=False, error=reason)
    try:
        return await build(request)
    except Exception as exc:
        log.error(f"{what}_failed", error=describe_failure(exc))
        return page_model(ok=False, error=f"the {what} could not be built; see the evidence service log")


def summary_of(run: StoredRun) -> RunSummary:
    return RunSummary(
        run_id=run.run_id,
        request_id=run.request_id,
        requested_by=run.requested_by,
        requested_at=run.requested_at,
        state=run.state,
        completed_at=run.completed_at,
        controls=run.controls,
        missing=run.missing,
    )


def _count(found: Iterable[ResourceStatus]) -> dict[Status, int]:
    counts = dict.fromkeys(Status, 0)
    for item in found:
        counts[item.status] += 1
    return counts


def _not_found(request: ReportRequest) -> str:
    if request.run_id is not None:
        return f"unknown run {request.run_id}"
    if request.request_id is not None:
        return f"no run for request {request.request_id}"
    if request.account_id is not None:
        return f"no run has checked account {request.account_id} yet"
    return "no run has been recorded yet"
