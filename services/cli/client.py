"""The CLI's (and any Python system's) view of Kushim over NATS: request a run, wait for it, read its report."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js.api import PubAck
from opentelemetry import propagate, trace
from opentelemetry.trace import TracerProvider
from pydantic import BaseModel

from shared import subjects
from shared.messages import (
    ConnectionTestRequest,
    ConnectionTestResult,
    Finding,
    HistoryPage,
    HistoryRequest,
    ReportPage,
    ReportRequest,
    RunCompleted,
    RunRejected,
    RunRequested,
    RunsPage,
    RunsRequest,
    RunState,
    RunSummary,
    Service,
    ServiceResult,
    run_id_for,
)

log = structlog.get_logger(__name__)


class CouldNotRun(Exception):
    """The broker or the evidence service could not be reached, or the wait timed out (exit code 4)."""


class RunRejectedError(Exception):
    """The scheduler refused the request."""


@dataclass
class Report:
    run: RunSummary
    services: list[ServiceResult]
    findings: list[Finding] = field(default_factory=list)
    account_names: dict[str, str] = field(default_factory=dict)


class KushimClient:
    def __init__(self, nc: NatsClient, *, tracer_provider: TracerProvider | None = None) -> None:
        """`tracer_provider`: run requests are published in a span of their own, whose trace the services continue
        (None: no span; the caller's active span, if any, is still propagated)."""
        self._nc = nc
        self._tracer_provider = tracer_provider

    @classmethod
    async def connect(
        cls, url: str, timeout: float = 5.0, *, tracer_provider: TracerProvider | None = None
    ) -> KushimClient:
        """Connect once within `timeout`; afterwards reconnect for as long as the command runs."""
        nc = NatsClient()
        errors: list[str] = []

        async def quiet(exc: Exception) -> None:
            errors.append(str(exc) or type(exc).__name__)
            log.debug("nats_connection_error", error=f"{type(exc).__name__}: {exc}")

        try:
            await asyncio.wait_for(
                nc.connect(
                    url,
                    connect_timeout=max(1, round(timeout)),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=quiet,
                ),
                timeout,
            )
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            if isinstance(exc, TimeoutError):
                reason = f"no connection within {timeout:.0f}s" + (f" (last error: {errors[-1]})" if errors else "")
            else:
                reason = str(exc) or type(exc).__name__
            raise CouldNotRun(f"cannot reach the NATS server at {safe_url(url)}: {reason}") from exc
        return cls(nc, tracer_provider=tracer_provider)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._nc.drain()

    async def request_run(
        self,
        request_id: str,
        *,
        accounts: Sequence[str] | None = None,
        services: Sequence[Service] | None = None,
        requested_by: str = "kushim-cli",
    ) -> PubAck:
        request = RunRequested(
            request_id=request_id,
            accounts=list(accounts) if accounts else None,
            services=list(services) if services else None,
            requested_by=requested_by,
            requested_at=datetime.now(UTC),
        )
        js = self._nc.jetstream()
        with self._publish_span(subjects.RUNS_REQUESTED, request_id):
            headers = {"Nats-Msg-Id": request_id}
            propagate.inject(headers)  # W3C traceparent of the active span: the services continue its trace
            try:
                return await js.publish(
                    subjects.RUNS_REQUESTED,
                    request.model_dump_json().encode(),
                    stream=subjects.STREAM_RUNS,
                    headers=headers,
                    timeout=5.0,
                )
            except Exception as exc:
                raise CouldNotRun(
                    f"the run request was not accepted by JetStream ({exc or type(exc).__name__}); is Kushim running?"
                ) from exc

    def _publish_span(self, subject: str, message_id: str) -> contextlib.AbstractContextManager[object]:
        if self._tracer_provider is None:
            return contextlib.nullcontext()
        tracer = trace.get_tracer("kushim.client", tracer_provider=self._tracer_provider)
        return tracer.start_as_current_span(
            f"{subject} publish",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "nats",
                "messaging.operation": "publish",
                "messaging.destination.name": subject,
                "messaging.message.id": message_id,
            },
        )

    async def run_and_wait(
        self,
        request_id: str,
        *,
        accounts: Sequence[str] | None = None,
        services: Sequence[Service] | None = None,
        timeout: float = 1200.0,
        progress: Callable[[Progress], None] | None = None,
    ) -> str:
        """Publish a RunRequested and wait until its run is final; returns the run id (raises on RunRejected).

        `progress` is called about once a second with where the run stands (read from the evidence service)."""
        done: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def on_completed(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                completed = RunCompleted.model_validate_json(msg.data)
                if completed.request_id == request_id and not done.done():
                    done.set_result(completed.run_id)

        async def on_rejected(msg: Msg) -> None:
            with contextlib.suppress(ValueError):
                rejected = RunRejected.model_validate_json(msg.data)
                if rejected.request_id == request_id and not done.done():
                    done.set_exception(RunRejectedError(rejected.reason))

        subs = [
            await self._nc.subscribe(subjects.RUNS_COMPLETED, cb=on_completed),
            await self._nc.subscribe(subjects.RUNS_REJECTED, cb=on_rejected),
        ]
        try:
            await self._nc.flush()
            await self.request_run(request_id, accounts=accounts, services=services)
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise CouldNotRun(f"no result for request {request_id} within {timeout:.0f}s")
                if self._nc.is_closed:
                    raise CouldNotRun("the connection to the NATS server was lost")
                poll = 1.0 if progress is not None else 5.0
                try:
                    return await asyncio.wait_for(asyncio.shield(done), timeout=min(poll, remaining))
                except TimeoutError:
                    # A RunCompleted missed during a reconnect is recovered from the evidence service's record.
                    page = await self._run_page(request_id)
                    if page is not None and page.run is not None:
                        if progress is not None:
                            progress(Progress.of(page))
                        if page.run.state is not RunState.RUNNING:
                            return page.run.run_id
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()

    async def _run_page(self, request_id: str) -> ReportPage | None:
        try:
            page = await self.report_page(ReportRequest(request_id=request_id, page_size=1))
        except CouldNotRun:
            return None
        return page if page.ok else None

    async def report_page(self, request: ReportRequest, timeout: float = 10.0) -> ReportPage:
        try:
            reply = await self._nc.request(subjects.REPORT_REQUEST, request.model_dump_json().encode(), timeout=timeout)
        except Exception as exc:
            raise CouldNotRun(
                f"the evidence service did not answer on {subjects.REPORT_REQUEST} ({exc or type(exc).__name__})"
            ) from exc
        return ReportPage.model_validate_json(reply.data)

    async def _ask(self, subject: str, request: BaseModel, timeout: float) -> bytes:
        try:
            reply = await self._nc.request(subject, request.model_dump_json().encode(), timeout=timeout)
        except Exception as exc:
            reason = exc or type(exc).__name__
            raise CouldNotRun(f"the evidence service did not answer on {subject} ({reason})") from exc
        return bytes(reply.data)

    async def runs(self, request: RunsRequest, timeout: float = 10.0) -> RunsPage:
        page = RunsPage.model_validate_json(await self._ask(subjects.RUNS_REQUEST, request, timeout))
        if not page.ok:
            raise CouldNotRun(page.error or "the evidence service could not list runs")
        return page

    async def history(self, request: HistoryRequest, timeout: float = 30.0) -> HistoryPage:
        page = HistoryPage.model_validate_json(await self._ask(subjects.HISTORY_REQUEST, request, timeout))
        if not page.ok:
            raise CouldNotRun(page.error or "the evidence service could not build the history")
        return page

    async def connection_test(
        self, request_id: str | None = None, timeout: float = 60.0, account_id: str | None = None
    ) -> ConnectionTestResult:
        request = ConnectionTestRequest(request_id=request_id, account_id=account_id)
        try:
            reply = await self._nc.request(
                subjects.CONNECTION_TEST, request.model_dump_json().encode(), timeout=timeout
            )
        except Exception as exc:
            raise CouldNotRun(
                f"the scheduler did not answer on {subjects.CONNECTION_TEST} ({exc or type(exc).__name__})"
            ) from exc
        return ConnectionTestResult.model_validate_json(reply.data)

    async def report(
        self, *, run_id: str | None = None, request_id: str | None = None, account_id: str | None = None
    ) -> Report:
        """Every page of a run's report."""
        page_no, page_size = 0, 500
        findings: list[Finding] = []
        first: ReportPage | None = None
        while True:
            page = await self.report_page(
                ReportRequest(
                    run_id=run_id, request_id=request_id, account_id=account_id, page=page_no, page_size=page_size
                )
            )
            if not page.ok or page.run is None:
                raise CouldNotRun(page.error or "the evidence service returned no run")
            first = first or page
            findings.extend(page.findings)
            if page.next_page is None:
                break
            # the service may shrink the page size to stay under the payload limit: follow its numbering
            page_no, page_size = page.next_page, page.page_size or page_size
        return Report(
            run=first.run if first.run else page.run,
            services=list(first.services),
            findings=findings,
            account_names=dict(first.account_names),
        )


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a run stands: planned (account, service) checks with their evidence stored, findings stored."""

    run_id: str
    state: RunState
    checks_done: int
    checks_expected: int
    findings_stored: int

    @classmethod
    def of(cls, page: ReportPage) -> Progress:
        assert page.run is not None
        done = sum(1 for s in page.services if s.complete)
        return cls(page.run.run_id, page.run.state, done, len(page.services), page.findings_total)

    def describe(self) -> str:
        return (
            f"run {self.run_id}: {self.checks_done}/{self.checks_expected} checks done, "
            f"{self.findings_stored} findings stored"
        )


async def run_check(
    url: str,
    *,
    accounts: Sequence[str] | None = None,
    services: Sequence[Service] | None = None,
    timeout: float = 1200.0,
    request_id: str | None = None,
    progress: Callable[[Progress], None] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Report:
    """Request a run, wait for it and read its whole report (`tracer_provider`: the run's trace starts here)."""
    client = await KushimClient.connect(url, tracer_provider=tracer_provider)
    try:
        request_id = request_id or f"cli-{uuid.uuid4().hex}"
        run_id = await client.run_and_wait(
            request_id, accounts=accounts, services=services, timeout=timeout, progress=progress
        )
        return await client.report(run_id=run_id)
    finally:
        await client.close()


def safe_url(url: str) -> str:
    """A URL fit to print: any user:password part is masked."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return urlunsplit((parts.scheme, f"***@{host}{port}", parts.path, parts.query, parts.fragment))


def expected_run_id(request_id: str) -> str:
    return run_id_for(request_id)
