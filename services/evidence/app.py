"""The evidence service: stores run plans and findings chunks, builds and uploads one evidence document per
(run, account, service), completes runs (COMPLETE, or INCOMPLETE after their deadline), publishes RunCompleted and
answers paged report requests.

Acknowledgement order (ack only after the effect is durable): a chunk is acked after its database commit; the
last chunk of a pair only after its evidence document is uploaded and recorded and the run's completion evaluated.
Any failure before that is transient: the message is nacked with a delay and the redelivery is idempotent.

Evidence needs the run's `requested_at` (its key's date). When the last chunk of a pair lands before the run's plan,
the chunk is acked once stored and the plan's handler builds that pair's evidence when the plan arrives (each side
commits first and reads the other's data after, so one of them always sees both).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta

import nats
import structlog
from faststream import AckPolicy
from faststream.nats import NatsBroker, NatsMessage
from nats.aio.client import Client as NatsClient
from pydantic import BaseModel

from services.evidence.document import EvidenceDocument, build_document
from services.evidence.manifest import GENESIS_SHA256, manifest_parts
from services.evidence.report import Reports
from services.evidence.store import EvidenceStore, PairKey
from services.evidence.upload import EvidenceConflict, S3Uploader, StoredObject, Uploader
from shared import subjects
from shared.accounts import Registry, RegistryFile
from shared.aws import AwsClients
from shared.consume import Consumer, Delivery, InFlight, Rejected, describe_failure
from shared.controls import gating_table
from shared.credentials import default_clients
from shared.messages import DeadLetter, FindingsReported, RunCompleted, RunJoined, RunPlanned, RunState
from shared.nats import (
    durable_subscriber,
    evidence_dead_letters_consumer,
    evidence_findings_consumer,
    evidence_joins_consumer,
    evidence_plans_consumer,
    make_broker,
    publish_durable,
)
from shared.observability import Metrics, Observability
from shared.service import ServiceApp
from shared.settings import Settings

log = structlog.get_logger(__name__)

SERVICE_NAME = "evidence"
REPORT_QUEUE = "evidence"


class EvidenceService:
    """The evidence service's logic, wired onto a broker by `create_service`."""

    def __init__(
        self,
        *,
        settings: Settings,
        broker: NatsBroker,
        store: EvidenceStore,
        uploader: Uploader | None,
        url: str | None = None,
        registry: RegistryFile | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._registry = registry
        self._mirrored: Registry | None = None
        self.broker = broker
        self._url = url
        self._nc: NatsClient | None = None
        self.store = store
        self.uploader = uploader
        self.reports = Reports(store)
        self._gating: Mapping[str, bool] = gating_table(settings.mfa_scope)
        self._publishing: dict[str, tuple[asyncio.Lock, int]] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Check the evidence bucket first (nothing to undo if it is unusable), then the database's schema revision
        (a missing, older or newer schema stops the service: `kushim db upgrade` migrates)."""
        if self.uploader is not None:
            await self.uploader.start()
        try:
            await self.store.check_schema()
            await self.mirror_registry()
            if self._url is not None:
                self._nc = await nats.connect(self._url, max_reconnect_attempts=-1, name="kushim-evidence-backlog")
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()
            self._nc = None
        if self.uploader is not None:
            await self.uploader.stop()
        await self.store.close()

    async def mirror_registry(self) -> None:
        """Keep the database's copy of the account registry (names for reports) in step with the file."""
        registry = self._registry.current() if self._registry is not None else None
        if registry is None or registry is self._mirrored:
            return
        listed: dict[str, tuple[str, str]] = {a.id: (a.name, a.access.kind) for a in registry.accounts}
        changed = await self.store.sync_accounts(listed, datetime.now(UTC))
        self._mirrored = registry
        if changed:
            log.info("account_registry_mirrored", accounts=len(listed), changed=changed)

    async def backlog(self) -> int:
        """Messages the evidence consumers have not finished yet (plans and findings chunks)."""
        if self._nc is None:
            return 0
        js = self._nc.jetstream()
        total = 0
        for spec in (evidence_plans_consumer(), evidence_findings_consumer()):
            info = await js.consumer_info(spec.stream, spec.durable)
            total += int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        return total

    # --- handlers -----------------------------------------------------------------------------

    async def handle_plan(self, plan: RunPlanned, delivery: Delivery, msg: NatsMessage) -> None:
        await self.store.save_plan(plan)
        log.info("plan_stored", pairs=len(plan.expected), deadline_at=plan.deadline_at.isoformat())
        for pair in await self.store.ready_pairs(plan.run_id):
            try:
                await self.finish_pair(pair)
            except EvidenceConflict:
                continue  # logged by the uploader; the pair stays without evidence and the run ends INCOMPLETE
        await self.settle(plan.run_id)

    async def handle_findings(self, chunk: FindingsReported, delivery: Delivery, msg: NatsMessage) -> None:
        for finding in chunk.findings:
            if (finding.run_id, finding.account_id, finding.service) != (chunk.run_id, chunk.account_id, chunk.service):
                raise Rejected(f"finding {finding.finding_id} does not belong to this chunk's run, account and service")
        if chunk.chunk_index >= chunk.chunk_count:
            raise Rejected(f"chunk_index {chunk.chunk_index} is not below chunk_count {chunk.chunk_count}")
        for finding in chunk.findings:
            if not _finite(finding.details):
                raise Rejected(f"finding {finding.finding_id} has a NaN or infinite number in its details (not JSON)")
        progress = await self.store.save_chunk(chunk, datetime.now(UTC))
        log.info(
            "chunk_stored",
            chunk_index=chunk.chunk_index,
            chunk_count=progress.chunk_count,
            received=progress.received,
            findings=len(chunk.findings),
            delivery=delivery.num_delivered,
        )
        if not progress.all_received:
            return
        if not progress.evidence_done:
            try:
                done = await self.finish_pair(PairKey(chunk.run_id, chunk.account_id, chunk.service))
            except EvidenceConflict as exc:
                raise Rejected(str(exc)) from exc
            if not done:
                return
        await self.settle(chunk.run_id)

    async def handle_join(self, joined: RunJoined, delivery: Delivery, msg: NatsMessage) -> None:
        """A request coalesced into a run in flight: it is answered with the run's RunCompleted when the run is final,
        at once if it already is (the run completed before its claim was released). A join of a run not final yet
        is stored first and the run's state read after: the run's finalisation commits first and reads its joiners
        after, so one of the two sees both."""
        async with self._completing(joined.run_id):
            final = await self.store.pending_completion(joined.run_id, published_too=True)
            if final is None:
                await self.store.save_join(joined)
                log.info("run_join_stored", tenant=joined.tenant)
                await self._answer_joiners(joined.run_id)
                return
            recorded, published = await self.store.joined_state(joined.run_id, joined.request_id)
            if recorded and published is final.state:
                return  # a redelivery, already answered
            await self._publish_to_joiner(final, joined.request_id, joined.tenant)
            await self.store.save_join(joined, published=final.state)
            log.info("run_join_answered", tenant=joined.tenant, state=final.state.value)

    async def handle_dead_letter(self, letter: DeadLetter, delivery: Delivery, msg: NatsMessage) -> None:
        if await self.store.save_dead_letter(letter, datetime.now(UTC)):
            log.warning(
                "dead_letter_stored",
                dead_consumer=letter.consumer,
                dead_subject=letter.subject,
                reason=letter.reason,
                num_delivered=letter.num_delivered,
            )

    # --- evidence and completion --------------------------------------------------------------

    async def finish_pair(self, pair: PairKey) -> bool:
        """Build, upload and record the pair's evidence document. False while the run's plan is unknown."""
        bound = log.bind(run_id=pair.run_id, account_id=pair.account_id, service=pair.service.value)
        material = await self.store.pair_material(pair)
        if material is None:
            bound.info("evidence_waits_for_plan")
            return False
        document = build_document(material)
        if self.uploader is not None:
            stored = await self._upload("document", self.uploader, document)
            location, version_id, replay = stored.location, stored.version_id, stored.replay
        else:
            location, version_id, replay = "database", None, False
        await self.store.save_evidence(
            pair,
            key=document.key,
            body=document.body,
            sha256=document.sha256,
            location=location,
            version_id=version_id,
            now=datetime.now(UTC),
        )
        bound.info(
            "evidence_stored",
            key=document.key,
            sha256=document.sha256,
            size=document.size,
            location=location,
            replay=replay,
            findings=len(material.findings),
        )
        return True

    async def settle(self, run_id: str, *, deadline_passed: bool = False) -> None:
        """Finalise the run if it can be, then publish its RunCompleted if that is still owed."""
        now = datetime.now(UTC)
        state = await self.store.finalize_run(run_id, now, deadline_passed=deadline_passed, gating=self._gating)
        if state is not None:
            log.info("run_finalized", run_id=run_id, state=state.value, deadline_passed=deadline_passed)
            if self._metrics is not None:
                self._metrics.runs_completed.labels(state=state.value).inc()
        try:
            await self.seal_manifests(run_id)
            await self.publish_completion(run_id)
        finally:
            if state is not None:  # measured once the completion is out: the duration's read delays nothing
                await self._observe_duration(run_id, state, now)

    async def _upload(self, kind: str, uploader: Uploader, document: EvidenceDocument) -> StoredObject:
        """One put into the evidence bucket, counted by kind (document, manifest) and outcome."""
        try:
            stored = await uploader.put(document)
        except EvidenceConflict:
            self._count_upload(kind, "conflict")
            raise
        except Exception:
            self._count_upload(kind, "error")
            raise
        self._count_upload(kind, "replay" if stored.replay else "stored")
        return stored

    def _count_upload(self, kind: str, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.evidence_uploads.labels(kind=kind, outcome=outcome).inc()

    async def _observe_duration(self, run_id: str, state: RunState, completed_at: datetime) -> None:
        """A finalised run's duration from plan to finalisation. Never fails the handler (the run is final)."""
        if self._metrics is None:
            return
        try:
            planned_at = await self.store.planned_at_of(run_id)
        except Exception as exc:
            log.warning("run_duration_unknown", run_id=run_id, error=describe_failure(exc))
            return
        if planned_at is not None:
            seconds = max(0.0, (completed_at - planned_at).total_seconds())
            self._metrics.run_duration.labels(state=state.value).observe(seconds)

    async def seal_manifests(self, run_id: str | None) -> None:
        """Append the run's manifests to their accounts' chains (once the run is final), then upload every manifest
        not yet uploaded (of this run, or of all runs when `run_id` is None: the sweep's retry after an outage)."""
        if run_id is not None:
            await self.store.append_manifests(
                run_id,
                datetime.now(UTC),
                manifest_parts,
                genesis=GENESIS_SHA256,
                in_database_only=self.uploader is None,
            )
        if self.uploader is None:
            return
        for record in await self.store.pending_manifests(run_id):
            document = EvidenceDocument(record.key, record.body, record.sha256, dated=record.requested_at)
            stored = await self._upload("manifest", self.uploader, document)
            await self.store.mark_manifest_uploaded(
                record.account_id,
                record.sequence,
                location=stored.location,
                version_id=stored.version_id,
                now=datetime.now(UTC),
            )
            log.info(
                "manifest_uploaded",
                account_id=record.account_id,
                sequence=record.sequence,
                key=record.key,
                sha256=record.sha256,
                replay=stored.replay,
            )

    async def publish_completion(self, run_id: str) -> None:
        """Publish every RunCompleted the final run still owes: to its own request, then to the requests that joined
        it (each under its own request_id, on its tenant's subject). One publisher per run at a time in this service:
        concurrent handlers of one run (its last chunk, a joiner, the sweep) would each publish the same message;
        the stream drops the copies, but plain subscribers would hear them twice."""
        async with self._completing(run_id):
            if not await self.store.manifests_sealed(run_id):
                # Another handler of this run is still sealing or uploading its manifests: it publishes once they
                # are stored (or the sweep does), so a RunCompleted never precedes the run's manifest.
                log.debug("completion_waits_for_manifests", run_id=run_id)
                return
            await self._publish_own_completion(run_id)
            await self._answer_joiners(run_id)

    @contextlib.asynccontextmanager
    async def _completing(self, run_id: str) -> AsyncIterator[None]:
        lock, users = self._publishing.get(run_id, (asyncio.Lock(), 0))
        self._publishing[run_id] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._publishing[run_id]
            if users == 1:
                del self._publishing[run_id]
            else:
                self._publishing[run_id] = (lock, users - 1)

    async def _publish_own_completion(self, run_id: str) -> None:
        message = await self.store.pending_completion(run_id)
        if message is not None:
            await publish_durable(
                self.broker,
                subjects.completed_subject(message.tenant),
                message,
                msg_id=f"completed:{run_id}:{message.state.value}",
                stream=subjects.STREAM_RUNS,
            )
            await self.store.mark_published(run_id, message.state)
            log.info(
                "run_completed_published",
                run_id=run_id,
                request_id=message.request_id,
                state=message.state.value,
                missing=len(message.missing),
                findings_total=message.findings_total,
            )

    async def _answer_joiners(self, run_id: str) -> None:
        owed = await self.store.owed_joiners(run_id)
        if not owed:
            return
        message = await self.store.pending_completion(run_id, published_too=True)
        if message is None:
            return
        published: list[str] = []
        try:
            for request_id, tenant in owed:
                await self._publish_to_joiner(message, request_id, tenant)
                published.append(request_id)
        finally:  # what was published stays published, even when a later publish failed
            if published:
                await self.store.mark_joiners_published(run_id, published, message.state)
        log.info("run_completed_published_to_joiners", run_id=run_id, joiners=len(published), state=message.state.value)

    async def _publish_to_joiner(self, completed: RunCompleted, request_id: str, tenant: str | None) -> None:
        """The run's RunCompleted under the joined request's id, on the subject that request would get."""
        await publish_durable(
            self.broker,
            subjects.completed_subject(tenant),
            completed.model_copy(update={"request_id": request_id, "tenant": tenant}),
            msg_id=f"completed:{completed.run_id}:{request_id}:{completed.state.value}",
            stream=subjects.STREAM_RUNS,
        )

    async def sweep(self) -> None:
        """Runs past their deadline become INCOMPLETE (or COMPLETE if all is in); owed completions are republished."""
        try:
            await self.mirror_registry()
        except Exception as exc:
            log.error("account_registry_mirror_failed", error=describe_failure(exc))
        now = datetime.now(UTC)
        overdue = await self.store.overdue_runs(now)
        if overdue:
            # Results may be queued behind an outage: a deadline waits (up to one more deadline) for the backlog.
            try:
                pending = await self.backlog()
            except Exception as exc:
                log.warning("backlog_unknown", error=f"{type(exc).__name__}: {exc}")
                pending = 0
            grace = timedelta(seconds=self.settings.run_deadline_seconds)
            if pending:
                overdue = [r for r in overdue if await self.store.deadline_of(r) + grace <= now]
                log.info("deadline_deferred_for_backlog", pending=pending, runs_still_overdue=len(overdue))
        for run_id in overdue:
            try:
                await self.settle(run_id, deadline_passed=True)
            except Exception as exc:
                log.error("deadline_settle_failed", run_id=run_id, error=f"{type(exc).__name__}: {exc}")
        unsealed: list[str | None]
        try:
            unsealed = [*await self.store.runs_without_manifests()]  # oldest first: chains follow time
        except Exception as exc:
            log.error("manifest_seal_failed", error=describe_failure(exc))
            unsealed = []
        for sealing in [*unsealed, None]:  # None: every manifest still waiting for its upload
            try:
                await self.seal_manifests(sealing)
            except Exception as exc:  # one run's failure must not hold up the others
                log.error("manifest_seal_failed", run_id=sealing, error=describe_failure(exc))
        for run_id in await self.store.unpublished_runs():
            try:
                # Waits (returns) while a handler of the run is still sealing its manifests: see publish_completion.
                await self.publish_completion(run_id)
            except Exception as exc:
                log.error("completion_publish_failed", run_id=run_id, error=f"{type(exc).__name__}: {exc}")

    async def deadline_loop(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(self.settings.deadline_poll_seconds)


def _reply_subscriber(
    broker: NatsBroker, subject: str, answer: Callable[[bytes], Awaitable[BaseModel]], description: str
) -> None:
    """A core (non-JetStream) request/reply subscription in the `evidence` queue group. FastStream accepts only MANUAL
    there (any other policy warns), and a core message has nothing to ack. The reply is the handler's return value."""

    @broker.subscriber(
        subject,
        queue=REPORT_QUEUE,
        ack_policy=AckPolicy.MANUAL,
        title=f"{SERVICE_NAME}:{subject}",
        description=description,
    )
    async def on_request(msg: NatsMessage) -> bytes:
        structlog.contextvars.clear_contextvars()
        page = await answer(msg.body)
        return page.model_dump_json().encode()


def _finite(value: object) -> bool:
    """JSON has no NaN or Infinity: evidence documents must stay valid JSON."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, list):
        return all(_finite(v) for v in value)
    return True


def create_evidence(
    settings: Settings,
    *,
    url: str,
    aws: AwsClients | None = None,
    store: EvidenceStore | None = None,
    uploader: Uploader | None = None,
    observability: Observability | None = None,
) -> tuple[ServiceApp, EvidenceService]:
    """Build the evidence service (no I/O): its broker, subscribers, store and, with a bucket, its uploader.

    `store` and `uploader` replace the defaults (tests inject failing wrappers this way).
    """
    obs = observability or Observability()
    broker = make_broker(url, name=SERVICE_NAME, settings=settings, middlewares=obs.broker_middlewares(SERVICE_NAME))
    if store is None:
        store = EvidenceStore(settings.effective_database_url)
    if uploader is None and settings.evidence_bucket:
        uploader = S3Uploader(aws or default_clients(settings), settings, settings.evidence_bucket)
    service = EvidenceService(
        settings=settings,
        broker=broker,
        store=store,
        uploader=uploader,
        url=url,
        registry=RegistryFile(settings.registry_path),
        metrics=obs.metrics,
    )

    in_flight = InFlight()
    plans_spec = evidence_plans_consumer()
    plans: Consumer[RunPlanned] = Consumer(
        spec=plans_spec,
        model=RunPlanned,
        handler=service.handle_plan,
        broker=broker,
        settings=settings,
        context=lambda p: {"run_id": p.run_id, "request_id": p.request_id},
        in_flight=in_flight,
    )
    findings_spec = evidence_findings_consumer()
    chunks: Consumer[FindingsReported] = Consumer(
        spec=findings_spec,
        model=FindingsReported,
        handler=service.handle_findings,
        broker=broker,
        settings=settings,
        context=lambda c: {"run_id": c.run_id, "account_id": c.account_id, "service": c.service.value},
        in_flight=in_flight,
    )

    @durable_subscriber(broker, plans_spec, description="Stores each run's plan: the pairs the run must receive.")
    async def on_run_planned(msg: NatsMessage) -> None:
        await plans(msg)

    @durable_subscriber(
        broker, findings_spec, description="Stores findings chunks; uploads a pair's evidence after its last chunk."
    )
    async def on_findings_reported(msg: NatsMessage) -> None:
        await chunks(msg)

    joins_spec = evidence_joins_consumer()
    joins: Consumer[RunJoined] = Consumer(
        spec=joins_spec,
        model=RunJoined,
        handler=service.handle_join,
        broker=broker,
        settings=settings,
        context=lambda j: {"run_id": j.run_id, "request_id": j.request_id},
        in_flight=in_flight,
    )

    @durable_subscriber(
        broker, joins_spec, description="Requests coalesced into a run in flight: answered when the run is final."
    )
    async def on_run_joined(msg: NatsMessage) -> None:
        await joins(msg)

    letters_spec = evidence_dead_letters_consumer()
    letters: Consumer[DeadLetter] = Consumer(
        spec=letters_spec,
        model=DeadLetter,
        handler=service.handle_dead_letter,
        broker=broker,
        settings=settings,
        in_flight=in_flight,
    )

    @durable_subscriber(
        broker, letters_spec, description="Keeps every dead letter (any consumer's) in the evidence database."
    )
    async def on_dead_letter(msg: NatsMessage) -> None:
        await letters(msg)

    for subject, answer, description in (
        (
            subjects.REPORT_REQUEST,
            service.reports.answer,
            "Answers a ReportRequest with one ReportPage (run summary, services, one page of findings).",
        ),
        (
            subjects.RUNS_REQUEST,
            service.reports.runs,
            "Answers a RunsRequest with a RunsPage: runs newest first, with their verdicts and counts.",
        ),
        (
            subjects.HISTORY_REQUEST,
            service.reports.history,
            "Answers a HistoryRequest with a HistoryPage: resources that started or stopped failing per run.",
        ),
    ):
        _reply_subscriber(broker, subject, answer, description)

    app = ServiceApp(
        name=SERVICE_NAME,
        broker=broker,
        url=url,
        settings=settings,
        on_start=[service.start],
        background=[service.deadline_loop],
        on_stop=[service.stop],
        in_flight=in_flight,
    )
    return app, service


def create_service(
    settings: Settings,
    *,
    url: str,
    aws: AwsClients | None = None,
    store: EvidenceStore | None = None,
    uploader: Uploader | None = None,
    observability: Observability | None = None,
) -> ServiceApp:
    """The evidence service as a `ServiceApp` (see `create_evidence` for the parameters)."""
    app, _ = create_evidence(settings, url=url, aws=aws, store=store, uploader=uploader, observability=observability)
    return app
