"""Metrics, tracing and readiness of a Kushim process: one `Observability`, built at a composition root (the CLI's
`serve`, `up`, `demo`, or a test) and passed down to the services it runs. Nothing happens at import time.

Metrics live in a `CollectorRegistry` of the process (never prometheus_client's global one): FastStream's
`NatsPrometheusMiddleware` on every broker (messages received, processed, published, their durations and sizes,
labelled by subject and `app_name` = service), plus Kushim's own counters (`Metrics`). Labels are bounded: services,
controls, statuses, API operations, consumer names and subjects (tenants' subjects count one per registered tenant).
Run ids, request ids and account ids are never labels: an organization may have thousands of accounts, and every run
would add series without end; they are in the logs and on the spans instead.

Tracing: FastStream's OpenTelemetry middleware (`TelemetryMiddleware` with the NATS attributes of
`NatsTelemetryMiddleware`; replies named "(temporary)") on every broker. A message published inside a handler (our
`publish_durable` included: it sets `Nats-Msg-Id` and `content-type`, never `traceparent`) carries the W3C trace
context of the handler's span in its headers, so one trace follows a run from its RunRequested through the scheduler,
the collectors and the evidence service to its RunCompleted. `KUSHIM_TRACING` chooses the exporter.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from faststream import BaseMiddleware
from faststream.nats.opentelemetry.provider import NatsTelemetrySettingsProvider, telemetry_attributes_provider_factory
from faststream.nats.prometheus import NatsPrometheusMiddleware
from faststream.nats.response import NatsPublishCommand
from faststream.opentelemetry import TelemetryMiddleware, TelemetrySettingsProvider
from faststream.response import PublishType
from nats.aio.msg import Msg
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.process_collector import ProcessCollector

from shared import subjects
from shared.settings import Settings

if TYPE_CHECKING:
    from faststream._internal.context.repository import ContextRepo
    from faststream.response import PublishCommand
    from faststream.types import BrokerMiddleware

    from shared.service import ServiceApp

RUN_DURATION_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0, 7200.0)
"""Seconds from a run's plan to its completion: a small account takes seconds, an organization many minutes; the
default run deadline is 900 s."""


class Metrics:
    """Kushim's own Prometheus metrics, registered in one registry (one per process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.checks = Counter(
            "kushim_checks_total",
            "Scans a collector finished, by outcome: reported (findings published), access_failed (the account's "
            "credentials were refused: ERROR findings), failed (given up after the last delivery: ERROR findings).",
            ["service", "outcome"],
            registry=registry,
        )
        self.findings = Counter(
            "kushim_findings_total",
            "Findings a collector published, by control and status.",
            ["service", "control", "status"],
            registry=registry,
        )
        self.aws_calls = Counter(
            "kushim_aws_calls_total",
            "AWS API calls made by scans (botocore's retries inside one call are not counted again), by "
            "service:Operation and outcome (ok, or error: an error answer or no answer).",
            ["api", "outcome"],
            registry=registry,
        )
        self.run_duration = Histogram(
            "kushim_run_duration_seconds",
            "Seconds from a run's plan to its finalisation, by final state.",
            ["state"],
            buckets=RUN_DURATION_BUCKETS,
            registry=registry,
        )
        self.runs_completed = Counter(
            "kushim_runs_completed_total",
            "Runs finalised by the evidence service, by state (a late INCOMPLETE -> COMPLETE counts again).",
            ["state"],
            registry=registry,
        )
        self.evidence_uploads = Counter(
            "kushim_evidence_uploads_total",
            "Puts into the evidence bucket, by kind (document, manifest) and outcome (stored, replay: identical "
            "object already there, conflict: different object already there, error).",
            ["kind", "outcome"],
            registry=registry,
        )
        self.dead_lettered = Counter(
            "kushim_messages_dead_lettered_total",
            "Messages a consumer gave up on and wrote to the dead-letter stream, by consumer (durable name).",
            ["consumer"],
            registry=registry,
        )

    def aws_call(self, api: str, ok: bool) -> None:
        self.aws_calls.labels(api=api, outcome="ok" if ok else "error").inc()


class _DeadLetterCounting(BaseMiddleware[Any, Any]):
    """Counts dead letters where every one of them leaves a process: a successful publish on kushim.dlq.<consumer>
    (`shared.consume.DeadLetters`). The consumer name is one of our durable names: a bounded label."""

    def __init__(self, msg: Any, /, *, context: ContextRepo, counter: Counter) -> None:
        super().__init__(msg, context=context)
        self._counter = counter

    async def publish_scope(self, call_next: Callable[[Any], Awaitable[Any]], cmd: PublishCommand) -> Any:
        result = await call_next(cmd)
        prefix = f"{subjects.DLQ_PREFIX}."
        if cmd.destination.startswith(prefix):
            self._counter.labels(consumer=cmd.destination.removeprefix(prefix)).inc()
        return result


@dataclass(frozen=True, slots=True)
class _DeadLetterCountingFactory:
    counter: Counter

    def __call__(self, msg: Any, /, *, context: ContextRepo) -> _DeadLetterCounting:
        return _DeadLetterCounting(msg, context=context, counter=self.counter)


TEMPORARY_DESTINATION = "(temporary)"


class _NatsTelemetry(NatsTelemetrySettingsProvider):
    """FastStream's span names and attributes, except for replies: they go to the requester's inbox, a new subject
    per request, and are named "(temporary)" (OpenTelemetry's name for anonymous destinations) so that span names
    stay few."""

    def get_publish_destination_name(self, cmd: PublishCommand) -> str:
        if cmd.publish_type is PublishType.REPLY:
            return TEMPORARY_DESTINATION
        return super().get_publish_destination_name(cmd)

    def get_publish_attrs_from_cmd(self, cmd: PublishCommand) -> dict[str, Any]:
        attributes = super().get_publish_attrs_from_cmd(cmd)
        if cmd.publish_type is PublishType.REPLY:
            attributes["messaging.destination.name"] = TEMPORARY_DESTINATION
            attributes["messaging.destination.temporary"] = True
        return attributes


def _telemetry_settings(msg: Any) -> TelemetrySettingsProvider[Any, NatsPublishCommand] | None:
    if msg is None or isinstance(msg, Msg):
        return _NatsTelemetry()
    batch: TelemetrySettingsProvider[Any, NatsPublishCommand] | None = telemetry_attributes_provider_factory(msg)
    return batch  # a batch (not used by Kushim), or None for key-value and object store watches


class Observability:
    """The metrics registry, Kushim's metrics, the tracer provider and the readiness of the services of one process.

    `tracer_provider` None: no tracing middleware at all (no spans, no trace headers, no cost).
    """

    def __init__(
        self,
        *,
        registry: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        owns_tracer_provider: bool = False,
        process_metrics: bool = True,
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        if registry is None and process_metrics:
            ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.metrics = Metrics(self.registry)
        self.tracer_provider = tracer_provider
        self._owns_tracer_provider = owns_tracer_provider
        self._expected: list[str] = []
        self._apps: list[ServiceApp] = []
        self._telemetry = (
            TelemetryMiddleware[NatsPublishCommand](
                settings_provider_factory=_telemetry_settings,
                tracer_provider=tracer_provider,
                # Metrics come from Prometheus: no second set of them through an OpenTelemetry meter.
                meter_provider=NoOpMeterProvider(),
                include_messages_counters=False,
            )
            if tracer_provider is not None
            else None
        )
        self._dead_letters = _DeadLetterCountingFactory(self.metrics.dead_lettered)

    @classmethod
    def from_settings(cls, settings: Settings, *, service_name: str) -> Observability:
        """The process's observability as KUSHIM_TRACING (and the standard OTEL_* variables) configure it."""
        provider = tracer_provider_from_settings(settings, service_name=service_name)
        return cls(tracer_provider=provider, owns_tracer_provider=provider is not None)

    def broker_middlewares(self, service: str) -> tuple[BrokerMiddleware[Any, Any], ...]:
        """The middlewares of one service's broker, outermost first: the trace span wraps everything, Prometheus
        times the handler, dead letters are counted once published."""
        prometheus = NatsPrometheusMiddleware(registry=self.registry, app_name=service)
        middlewares: list[BrokerMiddleware[Any, Any]] = []
        if self._telemetry is not None:
            middlewares.append(self._telemetry)
        middlewares += [prometheus, self._dead_letters]
        return tuple(middlewares)

    # --- readiness ----------------------------------------------------------------------------

    def expect(self, services: Sequence[str]) -> None:
        """The services this process is going to run: it is ready only once every one of them is."""
        self._expected = list(services)
        self._apps = []

    def track(self, app: ServiceApp) -> None:
        self._apps.append(app)

    async def readiness(self) -> tuple[bool, str]:
        """(ready, reason): every expected service started and its broker connected to NATS."""
        if not self._expected:
            return False, "no service configured yet"
        started = {app.name: app for app in self._apps}
        for name in self._expected:
            app = started.get(name)
            if app is None or not app.running:
                return False, f"{name} is not started"
            if not await app.connected():
                return False, f"{name} is not connected to NATS"
        return True, "ready"

    def shutdown(self) -> None:
        """Flush and stop the tracer provider this object created (spans still buffered are exported)."""
        if self._owns_tracer_provider and self.tracer_provider is not None:
            self.tracer_provider.shutdown()


# --- tracing ------------------------------------------------------------------------------------

OTLP_EXPORTERS = {
    "http/protobuf": (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
        "opentelemetry-exporter-otlp-proto-http",
    ),
    "grpc": ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "opentelemetry-exporter-otlp-proto-grpc"),
}


class TracingUnavailable(RuntimeError):
    """KUSHIM_TRACING asks for an exporter whose package is not installed."""


def otlp_exporter() -> SpanExporter:
    """The OTLP span exporter of the protocol OTEL_EXPORTER_OTLP_TRACES_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL names
    (default http/protobuf); it reads its endpoint, headers and timeout from the standard OTEL_EXPORTER_OTLP_*
    variables itself."""
    protocol = (
        os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip() or "http/protobuf"
    if protocol not in OTLP_EXPORTERS:
        raise TracingUnavailable(
            f"OTLP protocol {protocol!r} is not supported for KUSHIM_TRACING=otlp: use http/protobuf or grpc"
        )
    module_name, package = OTLP_EXPORTERS[protocol]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise TracingUnavailable(
            f"KUSHIM_TRACING=otlp ({protocol}) needs the package {package}: install it (pip install {package}) or "
            "set KUSHIM_TRACING=none"
        ) from None
    exporter: SpanExporter = module.OTLPSpanExporter()
    return exporter


def tracer_provider_from_settings(
    settings: Settings, *, service_name: str, console: TextIO | None = None
) -> TracerProvider | None:
    """None for KUSHIM_TRACING=none; else a TracerProvider exporting in batches to the console (`console`, default
    stdout: the services print nothing else there) or OTLP.

    The resource's service.name is `service_name` unless OTEL_SERVICE_NAME is set; OTEL_RESOURCE_ATTRIBUTES,
    OTEL_TRACES_SAMPLER(_ARG) and OTEL_BSP_* are honoured by the SDK."""
    if settings.tracing == "none":
        return None
    exporter: SpanExporter = (
        ConsoleSpanExporter(out=console or sys.stdout) if settings.tracing == "console" else otlp_exporter()
    )
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": service_name}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider
