"""Metrics, traces and probes on real parts: every service in its own stack (as in its own container) with its own
registry, tracer provider and HTTP port, on one nats-server and moto."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import signal
import sys
import threading
import types
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from services.cli.client import Report, run_check
from services.cli.demo_account import DEMO_EVIDENCE_BUCKET, seed_demo_account
from services.cli.render import EXIT_COULD_NOT_RUN
from services.cli.stack import SERVICES, running_stack
from shared import subjects
from shared.embedded import EmbeddedNats, free_port, start_nats
from shared.messages import RunState, Service
from shared.observability import Observability, TracingUnavailable, tracer_provider_from_settings
from shared.probes import HttpBinding, HttpServerError, http_binding, http_server
from shared.settings import Settings
from tests.conftest import MOTO_ACCOUNT
from tests.helpers import cli_env, eventually, kushim, nats_client

PLANTED_SECRET = "obsPlantedSecretValueThatMustNeverBeTraced"
COLLECTORS = {"collector-iam": "iam", "collector-s3": "s3", "collector-cloudtrail": "cloudtrail"}


# --- helpers ---------------------------------------------------------------------------------


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read().decode()


async def get(url: str) -> tuple[int, str]:
    return await asyncio.to_thread(_get, url)


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 when there is none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def label_values(text: str, name: str, label: str) -> set[str]:
    return {
        sample.labels[label]
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and label in sample.labels
    }


@contextlib.asynccontextmanager
async def separate_stacks(
    settings: Settings, observability: Mapping[str, Observability], services: Sequence[str] = tuple(SERVICES)
) -> AsyncIterator[dict[str, str]]:
    """Each service in a stack of its own with its own HTTP server on a free port; yields name -> base URL."""
    urls: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stacks:
        for name in services:
            port = free_port()
            await stacks.enter_async_context(
                running_stack(
                    settings,
                    services=[name],
                    migrate=name == "evidence",
                    observability=observability[name],
                    http=HttpBinding("127.0.0.1", port),
                )
            )
            urls[name] = f"http://127.0.0.1:{port}"
        yield urls


def service_provider(name: str, exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": name}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


# --- metrics ---------------------------------------------------------------------------------


async def test_metrics_of_a_run(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    seed_demo_account(moto_endpoint)
    settings = make_settings(
        nats_url=nats_server.url, aws_endpoint_url=moto_endpoint, evidence_bucket=DEMO_EVIDENCE_BUCKET
    )
    observability = {name: Observability() for name in SERVICES}
    async with separate_stacks(settings, observability) as urls:
        for url in urls.values():
            assert await get(f"{url}/readyz") == (200, "ready\n")
        report = await run_check(nats_server.url, timeout=60, request_id="metrics-run")
        assert report.run.state is RunState.COMPLETE
        scraped = {name: (await get(f"{url}/metrics")) for name, url in urls.items()}

    for name, (status, _) in scraped.items():
        assert status == 200, name
    for name, service in COLLECTORS.items():
        text = scraped[name][1]
        assert metric(text, "kushim_checks_total", service=service, outcome="reported") == 1
        assert metric(text, "kushim_checks_total", outcome="failed") == 0
        reported = Counter(f.status.value for f in report.findings if f.service.value == service)
        by_status = {
            status: metric(text, "kushim_findings_total", service=service, status=status) for status in reported
        }
        assert by_status == reported
        by_control = Counter(f.control.value for f in report.findings if f.service.value == service)
        for control, count in by_control.items():
            assert metric(text, "kushim_findings_total", service=service, control=control) == count
        apis = label_values(text, "kushim_aws_calls_total", "api")
        assert apis
        assert {api.split(":")[0] for api in apis} <= {service, "ec2"}, apis
        # FastStream's middleware: one CheckRequested received and acked, findings published
        handler = subjects.checks_subject(Service(service))
        assert metric(text, "faststream_received_messages_total", app_name=name, handler=handler) == 1
        assert metric(text, "faststream_received_processed_messages_total", handler=handler, status="acked") == 1
        findings_subject = f"kushim.findings.{service}"
        assert metric(text, "faststream_published_messages_total", destination=findings_subject, status="success") >= 1
        assert metric(text, "process_resident_memory_bytes") > 0
    assert metric(scraped["collector-iam"][1], "kushim_aws_calls_total", outcome="ok") >= 1
    # moto has no LookupEvents: the call is counted with its error outcome
    cloudtrail = scraped["collector-cloudtrail"][1]
    assert metric(cloudtrail, "kushim_aws_calls_total", api="cloudtrail:LookupEvents", outcome="error") >= 1

    evidence = scraped["evidence"][1]
    assert metric(evidence, "kushim_runs_completed_total", state="COMPLETE") == 1
    assert metric(evidence, "kushim_run_duration_seconds_count", state="COMPLETE") == 1
    assert 0 < metric(evidence, "kushim_run_duration_seconds_sum", state="COMPLETE") < 60
    assert metric(evidence, "kushim_evidence_uploads_total", kind="document", outcome="stored") == 3
    assert metric(evidence, "kushim_evidence_uploads_total", kind="manifest", outcome="stored") == 1
    assert metric(evidence, "kushim_messages_dead_lettered_total") == 0
    assert (
        metric(evidence, "faststream_received_messages_total", app_name="evidence", handler="kushim.runs.planned") == 1
    )

    scheduler = scraped["scheduler"][1]
    assert metric(scheduler, "faststream_received_messages_total", handler=subjects.RUNS_REQUESTED) == 1
    assert metric(scheduler, "faststream_published_messages_total", destination=subjects.RUNS_PLANNED) == 1
    # bounded labels: no run, request or account id anywhere
    for name, (_, text) in scraped.items():
        assert report.run.run_id not in text, name
        assert "metrics-run" not in text, name
        assert MOTO_ACCOUNT not in text, name


async def test_dead_letters_are_counted_by_consumer(settings: Settings, nats_server: EmbeddedNats) -> None:
    observability = Observability()
    port = free_port()
    async with running_stack(
        settings, services=["collector-iam"], observability=observability, http=HttpBinding("127.0.0.1", port)
    ):
        async with nats_client(nats_server.url) as nc:
            await nc.jetstream().publish(
                subjects.checks_subject(Service.IAM),
                b'{"not": "a check request"}',
                stream=subjects.STREAM_CHECKS,
            )

        async def counted() -> bool:
            _, text = await get(f"http://127.0.0.1:{port}/metrics")
            return metric(text, "kushim_messages_dead_lettered_total", consumer="collector-iam") == 1

        await eventually(counted, what="the dead letter counted")
        _, text = await get(f"http://127.0.0.1:{port}/metrics")
        assert metric(text, "faststream_published_messages_total", destination="kushim.dlq.collector-iam") == 1
        assert metric(text, "kushim_checks_total") == 0


# --- readiness -------------------------------------------------------------------------------


async def test_readiness_follows_nats(settings: Settings, nats_server: EmbeddedNats) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    async with running_stack(
        settings, services=["collector-iam"], observability=Observability(), http=HttpBinding("127.0.0.1", port)
    ):
        assert await get(f"{base}/healthz") == (200, "ok\n")
        assert await get(f"{base}/readyz") == (200, "ready\n")
        status, _ = await get(f"{base}/metrics")
        assert status == 200
        assert (await get(f"{base}/nothing"))[0] == 404

        nats_server.stop()
        loop = asyncio.get_running_loop()
        stopped = loop.time()

        async def not_ready() -> bool:
            return (await get(f"{base}/readyz"))[0] == 503

        await eventually(not_ready, timeout=5.0, what="/readyz to turn 503 without NATS")
        assert loop.time() - stopped < 5.0
        status, body = await get(f"{base}/readyz")
        assert (status, body) == (503, "collector-iam is not connected to NATS\n")
        assert await get(f"{base}/healthz") == (200, "ok\n")

        # the same server back on the same port: the broker reconnects and the service is ready again
        restarted = start_nats(nats_server.store_dir, port=nats_server.port)
        try:

            async def ready() -> bool:
                return (await get(f"{base}/readyz"))[0] == 200

            await eventually(ready, timeout=15.0, what="/readyz back to 200 after the reconnect")
        finally:
            nats_server.process = restarted.process  # the fixture stops it at the end
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{base}/healthz", timeout=2)  # the server stopped with the stack


async def test_readyz_is_503_until_every_service_started(settings: Settings) -> None:
    observability = Observability()
    observability.expect(["collector-iam"])
    async with http_server(observability, HttpBinding("127.0.0.1", free_port())) as bound:
        base = f"http://{bound.host}:{bound.port}"
        assert await get(f"{base}/healthz") == (200, "ok\n")
        assert await get(f"{base}/readyz") == (503, "collector-iam is not started\n")


async def test_a_busy_port_is_a_clear_error() -> None:
    async with http_server(Observability(), HttpBinding("127.0.0.1", free_port())) as bound:
        with pytest.raises(HttpServerError, match="KUSHIM_HTTP_PORT"):
            async with http_server(Observability(), HttpBinding("127.0.0.1", bound.port)):
                pass


def test_http_binding_defaults(make_settings: Callable[..., Settings]) -> None:
    assert http_binding(make_settings(), serve=True) == HttpBinding("0.0.0.0", 8080)
    assert http_binding(make_settings(), serve=False) is None  # kushim up: only when asked
    assert http_binding(make_settings(http_port=9100), serve=False) == HttpBinding("127.0.0.1", 9100)
    assert http_binding(make_settings(http_port=0), serve=True) is None
    assert http_binding(make_settings(http_host="10.0.0.5", http_port=9000), serve=True) == HttpBinding(
        "10.0.0.5", 9000
    )


async def test_kushim_serve_answers_probes_and_stops_on_sigterm(nats_server: EmbeddedNats, tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(KUSHIM_NATS_URL=nats_server.url, KUSHIM_HTTP_PORT=str(port), KUSHIM_HOME=str(tmp_path / "home"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.cli.main", "serve", "collector-s3", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:

        async def ready() -> bool:
            assert proc.returncode is None, "kushim serve exited early"
            try:
                return (await get(f"http://127.0.0.1:{port}/readyz"))[0] == 200
            except urllib.error.URLError:
                return False

        await eventually(ready, timeout=30.0, what="kushim serve to be ready")
        status, text = await get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert "kushim_checks_total" in text
        assert "faststream_received_messages_total" in text or "faststream_received_messages" in text
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]


# --- tracing ---------------------------------------------------------------------------------


def _chain(span: ReadableSpan, by_id: Mapping[int, ReadableSpan]) -> Iterator[ReadableSpan]:
    current: ReadableSpan | None = span
    while current is not None:
        yield current
        parent = current.parent
        current = by_id.get(parent.span_id) if parent is not None else None


async def test_one_trace_follows_a_run_across_services(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str, debug_log: io.StringIO
) -> None:
    seed_demo_account(moto_endpoint)
    settings = make_settings(
        nats_url=nats_server.url,
        aws_endpoint_url=moto_endpoint,
        evidence_bucket=DEMO_EVIDENCE_BUCKET,
        aws_secret_access_key=PLANTED_SECRET,
        deadline_poll_seconds=60.0,  # the completion is published by the last chunk's handler, not by the sweep
    )
    exporter = InMemorySpanExporter()
    providers = {name: service_provider(f"kushim-{name}", exporter) for name in SERVICES}
    client = service_provider("kushim-cli", exporter)
    observability = {name: Observability(tracer_provider=providers[name]) for name in SERVICES}
    async with separate_stacks(settings, observability):
        report: Report = await run_check(nats_server.url, timeout=60, request_id="traced-run", tracer_provider=client)
        run_id = report.run.run_id

        def completed_span() -> ReadableSpan | None:
            return next(
                (
                    s
                    for s in exporter.get_finished_spans()
                    if s.name == f"{subjects.RUNS_COMPLETED} process"
                    and s.resource.attributes["service.name"] == "kushim-scheduler"
                ),
                None,
            )

        async def completion_heard() -> bool:
            return completed_span() is not None

        await eventually(completion_heard, what="the scheduler's span of the RunCompleted")
    spans = exporter.get_finished_spans()
    by_id = {s.context.span_id: s for s in spans}
    root = next(s for s in spans if s.name == f"{subjects.RUNS_REQUESTED} publish" and s.parent is None)
    assert root.resource.attributes["service.name"] == "kushim-cli"
    trace_id = root.context.trace_id

    # every span about this run belongs to the run's one trace
    of_run = [s for s in spans if (s.attributes or {}).get("kushim.run_id") == run_id]
    assert {str(s.resource.attributes["service.name"]) for s in of_run} == {f"kushim-{name}" for name in SERVICES}
    assert {s.context.trace_id for s in of_run} == {trace_id}

    # the chain, child to parent: the scheduler hears the RunCompleted the evidence service published in the handler
    # of the last findings chunk, which a collector published while processing the CheckRequested the scheduler
    # published while processing the RunRequested the client published.
    heard = completed_span()
    assert heard is not None
    chain = [(str(s.resource.attributes["service.name"]), s.name) for s in _chain(heard, by_id)]
    assert chain[-1] == ("kushim-cli", f"{subjects.RUNS_REQUESTED} publish")
    assert chain[0] == ("kushim-scheduler", f"{subjects.RUNS_COMPLETED} process")
    assert chain[1] == ("kushim-evidence", f"{subjects.RUNS_COMPLETED} create")
    requested = [("kushim-scheduler", f"{subjects.RUNS_REQUESTED} process"), chain[-1]]
    if chain[2][1] == f"{subjects.RUNS_PLANNED} process":  # (rare) the plan was stored after every chunk
        assert chain[2:] == [chain[2], ("kushim-scheduler", f"{subjects.RUNS_PLANNED} create"), *requested]
    else:
        service = chain[2][1].split(" ")[0].rsplit(".", 1)[1]  # the collector whose chunk completed the run
        assert chain[2:] == [
            ("kushim-evidence", f"kushim.findings.{service} process"),
            (f"kushim-collector-{service}", f"kushim.findings.{service} create"),
            (f"kushim-collector-{service}", f"kushim.checks.{service} process"),
            ("kushim-scheduler", f"kushim.checks.{service} create"),
            *requested,
        ]
    assert {s.context.trace_id for s in _chain(heard, by_id)} == {trace_id}

    # what spans carry: messaging attributes and Kushim identifiers, never a secret or a payload
    keys = {key for s in spans for key in (s.attributes or {})}
    assert keys <= {
        "messaging.system",
        "messaging.operation",
        "messaging.destination.name",
        "messaging.destination.temporary",
        "messaging.destination_publish.name",
        "messaging.message.id",
        "messaging.message.conversation_id",
        "messaging.message.payload_size_bytes",
        "messaging.message.body.size",
        "kushim.run_id",
        "kushim.request_id",
        "kushim.account_id",
        "kushim.service",
    }, keys
    assert f"{subjects.REPORT_REQUEST} process" in {s.name for s in spans}  # the client's report requests
    assert not [s.name for s in spans if "_INBOX" in s.name]  # replies: "(temporary) publish"
    values = json.dumps([dict(s.attributes or {}) for s in spans])
    assert PLANTED_SECRET not in values
    assert "testing" not in values

    # the services' log lines name the trace they belong to
    lines = [json.loads(line) for line in debug_log.getvalue().splitlines() if line.startswith("{")]
    scanned = [line for line in lines if line.get("event") == "scan_reported"]
    assert len(scanned) == 3
    assert {line.get("trace_id") for line in scanned} == {format(trace_id, "032x")}
    assert PLANTED_SECRET not in debug_log.getvalue()


# --- tracing configuration -------------------------------------------------------------------


def test_tracing_settings(make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch) -> None:
    assert tracer_provider_from_settings(make_settings(), service_name="kushim-x") is None
    console = tracer_provider_from_settings(make_settings(tracing="console"), service_name="kushim-x")
    assert console is not None
    assert console.resource.attributes["service.name"] == "kushim-x"
    console.shutdown()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    named = tracer_provider_from_settings(make_settings(tracing="console"), service_name="kushim-x")
    assert named is not None
    assert named.resource.attributes["service.name"] == "from-env"
    named.shutdown()


def test_otlp_without_its_package_is_a_clear_error(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", None)
    with pytest.raises(TracingUnavailable, match="opentelemetry-exporter-otlp-proto-http"):
        Observability.from_settings(make_settings(tracing="otlp"), service_name="kushim-x")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter", None)
    with pytest.raises(TracingUnavailable, match="opentelemetry-exporter-otlp-proto-grpc"):
        Observability.from_settings(make_settings(tracing="otlp"), service_name="kushim-x")


def test_otlp_uses_the_installed_exporter(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    exported = InMemorySpanExporter()
    fake = types.ModuleType("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    fake.OTLPSpanExporter = lambda: exported  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "opentelemetry.exporter.otlp.proto.http.trace_exporter", fake)
    observability = Observability.from_settings(make_settings(tracing="otlp"), service_name="kushim-x")
    assert observability.tracer_provider is not None
    observability.tracer_provider.get_tracer("test").start_span("one").end()
    observability.shutdown()  # flushes the batch
    assert [s.name for s in exported.get_finished_spans()] == ["one"]


@pytest.mark.parametrize("command", ["serve", "up"])
async def test_a_missing_otlp_exporter_stops_the_start(command: str, nats_server: EmbeddedNats, tmp_path: Path) -> None:
    env = cli_env(
        KUSHIM_NATS_URL=nats_server.url,
        KUSHIM_TRACING="otlp",
        KUSHIM_HOME=str(tmp_path / "home"),
        KUSHIM_HTTP_PORT=str(free_port()),
    )
    # The HTTP exporter comes with the `otlp` extra (the image, `make test`); the gRPC one is not installed.
    env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    args = ["serve", "collector-iam"] if command == "serve" else ["up"]
    if _installed("opentelemetry.exporter.otlp.proto.grpc.trace_exporter"):
        pytest.skip("the gRPC OTLP exporter is installed")
    code, _, err = await kushim(*args, env=env, timeout=60)
    assert code == EXIT_COULD_NOT_RUN
    assert "opentelemetry-exporter-otlp-proto-grpc" in err


class OtlpReceiver(BaseHTTPRequestHandler):
    """An OTLP/HTTP collector stand-in: keeps what is POSTed to /v1/traces."""

    received: ClassVar[list[tuple[str, str, bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).received.append((self.path, self.headers.get("Content-Type", ""), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_otlp_exports_spans_over_http_with_the_extra_installed(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """KUSHIM_TRACING=otlp with the `otlp` extra's exporter: spans reach an OTLP/HTTP endpoint named by the standard
    variables, as protobuf."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    OtlpReceiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), OtlpReceiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        observability = Observability.from_settings(make_settings(tracing="otlp"), service_name="kushim-x")
        assert observability.tracer_provider is not None
        observability.tracer_provider.get_tracer("test").start_span("exported").end()
        observability.shutdown()  # flushes the batch
    finally:
        server.shutdown()
        server.server_close()
    ((path, content_type, body),) = OtlpReceiver.received
    assert path == "/v1/traces"
    assert content_type == "application/x-protobuf"
    request = ExportTraceServiceRequest.FromString(body)
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}["service.name"]
    assert service == "kushim-x"
    assert [span.name for scope in resource_spans.scope_spans for span in scope.spans] == ["exported"]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


async def test_kushim_check_starts_the_trace_and_keeps_stdout_for_the_report(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> None:
    settings = make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint)
    exporter = InMemorySpanExporter()
    observability = Observability(tracer_provider=service_provider("kushim", exporter))
    services = ("evidence", "collector-s3", "scheduler")
    async with running_stack(settings, services=services, migrate=True, observability=observability):
        env = cli_env(KUSHIM_NATS_URL=nats_server.url, KUSHIM_TRACING="console")
        code, out, err = await kushim("check", "-s", "s3", "--output", "json", env=env)
    assert code == 0, err
    assert json.loads(out)["status"] == "COMPLETE"  # stdout is the report alone
    printed = err[err.index('{\n    "name"') :]  # the CLI's span, as the console exporter prints it (on stderr)
    span = json.loads(printed[: printed.index("\n}") + 2])
    assert span["name"] == f"{subjects.RUNS_REQUESTED} publish"
    assert span["resource"]["attributes"]["service.name"] == "kushim-cli"
    heard = next(s for s in exporter.get_finished_spans() if s.name == f"{subjects.RUNS_REQUESTED} process")
    assert heard.parent is not None
    assert f"0x{heard.context.trace_id:032x}" == span["context"]["trace_id"]
    assert f"0x{heard.parent.span_id:016x}" == span["context"]["span_id"]
