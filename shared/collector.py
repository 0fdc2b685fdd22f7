"""The runtime every collector service shares: one CheckRequested in, chunked FindingsReported out.

A collector service supplies a `CollectorSpec`: its service, its explicit CHECKS tuple, `collect` (the only AWS
I/O, returning a typed snapshot) and `summarize` (population counts and metrics). This module does the rest:
validation, the account guard, running the pure checks, chunking, publishing with deterministic message ids,
and acking only after every chunk's PubAck.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

import structlog
from faststream.nats import NatsBroker, NatsMessage

from shared import subjects
from shared.aws import ApiCallCounter, AwsCallError, AwsClients, TransientAwsError, classify_error
from shared.checks import Check, Outcome, RunContext, build_chunks, evaluate, to_finding
from shared.consume import Consumer, Delivery, InFlight, Rejected
from shared.credentials import AccountAccess, UnregisteredAccount, account_access
from shared.messages import CheckRequested, Finding, Service, Status
from shared.nats import collector_consumer, durable_subscriber, make_broker, publish_durable
from shared.observability import Metrics, Observability
from shared.service import ServiceApp
from shared.settings import Settings

log = structlog.get_logger(__name__)

S = TypeVar("S")

COLLECTOR_VERSION = "0.1.0"


@dataclass(frozen=True, slots=True)
class Summary:
    population: dict[str, int]
    metrics: dict[str, float]
    regions: list[str]


@dataclass(frozen=True, slots=True)
class CollectorSpec(Generic[S]):
    service: Service
    checks: Sequence[Check[S]]
    collect: Callable[[AwsClients, CheckRequested, ApiCallCounter, Settings], Awaitable[S]]
    summarize: Callable[[S], Summary]


class AccountGuard:
    """The clients of a requested account, once its credentials are proven to belong to it (sts:GetCallerIdentity,
    once per account and access, except for an assumed role: its ARN names the account): an unregistered account is
    rejected, keys of another account too.
    Before every scan the account's credentials are obtained (a no-op while they are fresh), so a role or secret that
    stopped working is reported as such, not as every API call of the scan being denied."""

    def __init__(self, access: AccountAccess) -> None:
        self._access = access
        self._verified: dict[str, AwsClients] = {}
        self._locks: dict[str, asyncio.Lock] = {}  # per account: one unreachable account must not hold up the others

    async def clients(self, account_id: str) -> AwsClients:
        async with self._locks.setdefault(account_id, asyncio.Lock()):
            try:
                aws = await self._access.clients(account_id)
                await aws.resolve_credentials()
                if self._verified.get(account_id) is aws:
                    return aws
                # The default credentials' account is known (and cached) already; an assumed role's is its ARN's;
                # others (keys from Secrets Manager) are asked once.
                if aws is self._access.base:
                    actual = await self._access.caller_account()
                elif self._access.names_its_account(account_id):
                    actual = account_id
                else:
                    actual = await aws.caller_account()
            except UnregisteredAccount as exc:
                raise Rejected(f"{exc}; not scanned") from exc
            except Exception as exc:
                err = classify_error("sts", "GetCallerIdentity", exc)
                if err.transient:
                    raise TransientAwsError(f"cannot reach account {account_id}: {err.describe()}") from exc
                raise AccessFailed(account_id, self._access.describe_access(account_id), err) from exc
            if actual != account_id:
                err = AwsCallError(
                    "sts", "GetCallerIdentity", "WrongAccount", f"they belong to account {actual}", "-", False
                )
                raise AccessFailed(account_id, self._access.describe_access(account_id), err)
            self._verified[account_id] = aws
            return aws


class AccessFailed(Exception):
    """The account's credentials could not be obtained or were refused (a role's trust policy or ExternalId, a
    missing secret): the scan reports ERROR at once rather than retrying what will not change."""

    def __init__(self, account_id: str, access: str, err: AwsCallError) -> None:
        self.err = AwsCallError(
            err.service,
            "Credentials",
            err.code,
            f"cannot reach account {account_id} through {access}: {err.code}: {err.message}"[:500],
            "sts:AssumeRole (trust policy and ExternalId) or the credential source",
            False,
        )
        super().__init__(self.err.message)


class CollectorRuntime(Generic[S]):
    def __init__(
        self,
        spec: CollectorSpec[S],
        *,
        broker: NatsBroker,
        settings: Settings,
        guard: AccountGuard,
        metrics: Metrics | None = None,
    ) -> None:
        self.spec = spec
        self._broker = broker
        self._settings = settings
        self._guard = guard
        self._metrics = metrics

    async def handle(self, request: CheckRequested, delivery: Delivery, msg: NatsMessage) -> None:
        if request.service is not self.spec.service:
            raise Rejected(f"{request.service.value} request on the {self.spec.service.value} collector")
        try:
            aws = await self._guard.clients(request.account_id)
        except AccessFailed as exc:
            log.warning("account_access_failed", code=exc.err.code, reason=exc.err.message)
            await self._publish_errors(request, delivery.num_delivered, exc.err)
            self._count_check("access_failed")
            return
        started = datetime.now(UTC)
        counter = ApiCallCounter(on_result=self._metrics.aws_call if self._metrics is not None else None)
        log.info("scan_started", delivery=delivery.num_delivered)
        snapshot = await self.spec.collect(aws, request, counter, self._settings)
        ctx = RunContext(request.run_id, request.account_id, datetime.now(UTC), COLLECTOR_VERSION)
        findings = evaluate(self.spec.checks, snapshot, ctx)
        summary = self.spec.summarize(snapshot)
        await self._publish(request, delivery.num_delivered, findings, summary, counter.snapshot(), started)
        self._count_check("reported")
        by_status = {s.value: sum(1 for f in findings if f.status is s) for s in Status}
        log.info("scan_reported", findings=len(findings), api_calls=sum(counter.counts.values()), **by_status)

    async def record_failure(self, request: CheckRequested, delivery: Delivery, exc: BaseException) -> bool:
        """Last delivery failed: report ERROR findings so the run ends with ERROR rather than silence."""
        if isinstance(exc, Rejected):
            return False
        err = AwsCallError(self.spec.service.value, "Scan", type(exc).__name__, str(exc)[:500], "-", True)
        await self._publish_errors(request, delivery.num_delivered, err)
        self._count_check("failed")
        return True

    def _count_check(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.checks.labels(service=self.spec.service.value, outcome=outcome).inc()

    async def _publish_errors(self, request: CheckRequested, attempt: int, err: AwsCallError) -> None:
        """One ERROR finding per check for the whole account: the run ends with ERROR rather than silence."""
        ctx = RunContext(request.run_id, request.account_id, datetime.now(UTC), COLLECTOR_VERSION)
        findings = [
            to_finding(chk.info, Outcome.error("account", "AWS::::Account", err), ctx) for chk in self.spec.checks
        ]
        await self._publish(request, attempt, findings, Summary({}, {}, []), {}, ctx.observed_at)

    async def _publish(
        self,
        request: CheckRequested,
        attempt: int,
        findings: list[Finding],
        summary: Summary,
        api_calls: dict[str, int],
        started: datetime,
    ) -> None:
        envelope: dict[str, Any] = {
            "run_id": request.run_id,
            "request_id": request.request_id,
            "account_id": request.account_id,
            "service": self.spec.service,
            "attempt": attempt,
            "population": summary.population,
            "metrics": summary.metrics,
            "api_calls": api_calls,
            "regions": summary.regions,
            "collector_version": COLLECTOR_VERSION,
            "started_at": started,
            "finished_at": datetime.now(UTC),
        }
        chunks = build_chunks(findings, self._settings.chunk_max_bytes, **envelope)
        subject = subjects.findings_subject(self.spec.service)
        for chunk in chunks:
            # The id names the attempt and the chunk, not the content: a publish retried within one attempt is
            # deduplicated by the stream, and a later attempt's set never mixes with a partly published earlier one.
            pair = f"{request.run_id}:{request.account_id}:{self.spec.service.value}"
            msg_id = f"findings:{pair}:{attempt}:{chunk.chunk_index}"
            await publish_durable(self._broker, subject, chunk, msg_id=msg_id, stream=subjects.STREAM_FINDINGS)
        if self._metrics is not None:
            tally = Counter((f.control.value, f.status.value) for f in findings)
            for (control, status), count in tally.items():
                self._metrics.findings.labels(service=self.spec.service.value, control=control, status=status).inc(
                    count
                )


def collector_service(
    name: str,
    spec: CollectorSpec[S],
    settings: Settings,
    *,
    url: str,
    aws: AwsClients | None = None,
    observability: Observability | None = None,
) -> ServiceApp:
    """A collector service: its broker, the durable consumer wiring and the AWS clients (nothing connects yet)."""
    obs = observability or Observability()
    broker = make_broker(url, name=name, settings=settings, middlewares=obs.broker_middlewares(name))
    in_flight = InFlight()
    register_collector(
        broker, spec, access=account_access(settings, aws), settings=settings, metrics=obs.metrics, in_flight=in_flight
    )
    return ServiceApp(name=name, broker=broker, url=url, settings=settings, in_flight=in_flight)


def register_collector(
    broker: NatsBroker,
    spec: CollectorSpec[S],
    *,
    access: AccountAccess,
    settings: Settings,
    metrics: Metrics | None = None,
    in_flight: InFlight | None = None,
) -> CollectorRuntime[S]:
    """Wire a collector onto a broker: its durable consumer, handler and dead letters (`metrics`: where its scans,
    findings and AWS calls are counted; `in_flight`: the service's running handlers, handed back when it stops)."""
    runtime = CollectorRuntime(spec, broker=broker, settings=settings, guard=AccountGuard(access), metrics=metrics)
    consumer_spec = collector_consumer(spec.service)
    consumer: Consumer[CheckRequested] = Consumer(
        spec=consumer_spec,
        model=CheckRequested,
        handler=runtime.handle,
        broker=broker,
        settings=settings,
        on_exhausted=runtime.record_failure,
        context=lambda r: {"run_id": r.run_id, "account_id": r.account_id, "service": r.service.value},
        in_flight=in_flight,
    )

    @durable_subscriber(
        broker, consumer_spec, description=f"Scans one account's {spec.service.value} resources per CheckRequested."
    )
    async def on_check_requested(msg: NatsMessage) -> None:
        await consumer(msg)

    return runtime
