"""Kushim's message contract as documents for other teams: one JSON Schema per message and an AsyncAPI 3.0 document
of every subject, committed under `shared/schemas/` (a test fails when they drift from the code).

The channel table below is the single description of who publishes what where; the services' real subscribers
receive raw messages and validate inside (DESIGN: a typed handler under manual acks would loop invalid input), so
the document is built on a documentation-only broker whose handlers carry the models. A test checks that every
subject a real service subscribes to is in this table.

Regenerate with `make schemas` (`python -m shared.asyncapi --write`); `faststream docs gen --factory
shared.asyncapi:docs_app` renders the same AsyncAPI document.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.specification import AsyncAPI
from pydantic import BaseModel

from shared import subjects
from shared.messages import (
    CheckRequested,
    ConnectionTestRequest,
    ConnectionTestResult,
    DeadLetter,
    FindingsReported,
    HistoryPage,
    HistoryRequest,
    ReportPage,
    ReportRequest,
    RunCompleted,
    RunJoined,
    RunPlanned,
    RunRejected,
    RunRequested,
    RunsPage,
    RunsRequest,
    Service,
)

SCHEMAS_DIR = Path(__file__).with_name("schemas")
ASYNCAPI_FILE = "asyncapi.json"


@dataclass(frozen=True, slots=True)
class Channel:
    subject: str
    message: type[BaseModel]
    published_by: str
    consumed_by: str | None
    """The Kushim service that consumes it; None when only other systems listen."""
    description: str
    reply: type[BaseModel] | None = None
    stream: str | None = None


def channels() -> tuple[Channel, ...]:
    per_service = tuple(
        channel
        for service in Service
        for channel in (
            Channel(
                subjects.checks_subject(service),
                CheckRequested,
                "scheduler only",
                f"collector-{service.value} (durable {subjects.collector_durable(service)}, shared by its replicas)",
                f"One (account, {service.value}) check of a run.",
                stream=subjects.STREAM_CHECKS,
            ),
            Channel(
                subjects.findings_subject(service),
                FindingsReported,
                f"collector-{service.value}",
                f"evidence (durable {subjects.DURABLE_EVIDENCE_FINDINGS})",
                f"The {service.value} collector's findings for one (run, account), in chunks.",
                stream=subjects.STREAM_FINDINGS,
            ),
        )
    )
    return (
        Channel(
            subjects.RUNS_REQUESTED,
            RunRequested,
            "the CLI, the scheduler's cron loop, other systems (set Nats-Msg-Id to request_id)",
            f"scheduler (durable {subjects.DURABLE_SCHEDULER})",
            "The public entry point: ask for a run. Invalid requests are answered on kushim.runs.rejected.",
            stream=subjects.STREAM_RUNS,
        ),
        Channel(
            subjects.TENANT_RUNS_REQUESTED,
            RunRequested,
            "a tenant (kushim.runs.requested.<tenant>; its NATS user may publish on no other run subject)",
            f"scheduler (durable {subjects.DURABLE_SCHEDULER_TENANTS})",
            "A tenant's run request: only accounts on the tenant's allow-list in the account registry (none given: "
            "all of them). Answered on kushim.runs.completed.<tenant> or kushim.runs.rejected.<tenant>.",
            stream=subjects.STREAM_TENANT_REQUESTS,
        ),
        Channel(
            subjects.RUNS_PLANNED,
            RunPlanned,
            "scheduler",
            f"evidence (durable {subjects.DURABLE_EVIDENCE_PLANS})",
            "The pairs a run must receive before it can be COMPLETE, and its deadline.",
            stream=subjects.STREAM_RUNS,
        ),
        Channel(
            subjects.RUNS_JOINED,
            RunJoined,
            "scheduler (a request coalesced into an identical run in flight)",
            f"evidence (durable {subjects.DURABLE_EVIDENCE_JOINS})",
            "A request that joined an identical run in flight instead of scanning again; the evidence service answers "
            "it with that run's RunCompleted under the request's own request_id.",
            stream=subjects.STREAM_RUNS,
        ),
        Channel(
            subjects.RUNS_COMPLETED,
            RunCompleted,
            "evidence",
            None,
            "A run's outcome (COMPLETE or INCOMPLETE) with per-control verdicts; request_id echoed (a request that "
            "joined a run gets the run's outcome under its own request_id). The scheduler (durable "
            f"{subjects.DURABLE_SCHEDULER_COMPLETIONS}) releases the run's coalescing claim.",
            stream=subjects.STREAM_RUNS,
        ),
        Channel(
            subjects.TENANT_RUNS_COMPLETED,
            RunCompleted,
            "evidence",
            None,
            "The outcome of a tenant's run, on kushim.runs.completed.<tenant> (only that tenant hears it). The "
            f"scheduler (durable {subjects.DURABLE_SCHEDULER_TENANT_COMPLETIONS}) releases the run's coalescing claim.",
            stream=subjects.STREAM_RUNS,
        ),
        Channel(
            subjects.RUNS_REJECTED,
            RunRejected,
            "scheduler",
            None,
            "A refused RunRequested with the reason; request_id echoed when readable.",
            stream=subjects.STREAM_RUNS,
        ),
        Channel(
            f"{subjects.RUNS_REJECTED}.*",
            RunRejected,
            "scheduler",
            None,
            "A tenant's refused RunRequested, on kushim.runs.rejected.<tenant> (an account outside its allow-list).",
            stream=subjects.STREAM_RUNS,
        ),
        *per_service,
        Channel(
            f"{subjects.DLQ_PREFIX}.>",
            DeadLetter,
            "every consumer (kushim.dlq.<consumer>)",
            f"evidence (durable {subjects.DURABLE_EVIDENCE_DEAD_LETTERS}: table evidence_dead_letters)",
            "Messages a consumer could not process, with the reason and a redacted excerpt.",
            stream=subjects.STREAM_DLQ,
        ),
        Channel(
            subjects.REPORT_REQUEST,
            ReportRequest,
            "the CLI, other systems",
            "evidence (queue group evidence)",
            "Request/reply: one page of a run's report (ReportPage).",
            reply=ReportPage,
        ),
        Channel(
            subjects.RUNS_REQUEST,
            RunsRequest,
            "the CLI, other systems",
            "evidence (queue group evidence)",
            "Request/reply: runs over time, newest first (RunsPage).",
            reply=RunsPage,
        ),
        Channel(
            subjects.HISTORY_REQUEST,
            HistoryRequest,
            "the CLI, other systems",
            "evidence (queue group evidence)",
            "Request/reply: what changed between an account's consecutive runs (HistoryPage).",
            reply=HistoryPage,
        ),
        Channel(
            subjects.CONNECTION_TEST,
            ConnectionTestRequest,
            "the CLI (connect --remote), other systems",
            "scheduler (queue group scheduler)",
            "Request/reply: test the AWS connection from where Kushim runs (ConnectionTestResult).",
            reply=ConnectionTestResult,
        ),
    )


def models() -> list[type[BaseModel]]:
    """Every message model of the contract, each once, in table order."""
    found: list[type[BaseModel]] = []
    for channel in channels():
        for model in (channel.message, channel.reply):
            if model is not None and model not in found:
                found.append(model)
    return found


def _handler(model: type[BaseModel], reply: type[BaseModel] | None) -> Callable[..., Coroutine[Any, Any, Any]]:
    async def handler(body: Any) -> Any:  # documentation only: never called
        raise NotImplementedError

    handler.__annotations__ = {"body": model, "return": reply}
    return handler


def _version() -> str:
    try:
        return version("kushim")
    except PackageNotFoundError:  # pragma: no cover - a source tree that was never installed
        return "0.0.0"


def specification() -> AsyncAPI:
    """The AsyncAPI 3.0 document of every Kushim subject (no connection is made)."""
    return _specification(_documentation_broker())


def docs_app() -> FastStream:
    """For `faststream docs gen --factory shared.asyncapi:docs_app` (and `faststream docs serve`)."""
    broker = _documentation_broker()
    return FastStream(broker, specification=_specification(broker))


def _documentation_broker() -> NatsBroker:
    broker = NatsBroker("nats://kushim-nats:4222", description="Kushim's NATS JetStream (deploy/nats).")
    for channel in channels():
        where = f" Stream {channel.stream}." if channel.stream else " Core NATS request/reply."
        text = f"{channel.description}{where} Published by {channel.published_by}."
        if channel.consumed_by is not None:
            text += f" Consumed by {channel.consumed_by}."
            broker.subscriber(channel.subject, title=channel.subject, description=text)(
                _handler(channel.message, channel.reply)
            )
        else:
            broker.publisher(channel.subject, schema=channel.message, title=channel.subject, description=text)
    return broker


def _specification(broker: NatsBroker) -> AsyncAPI:
    return AsyncAPI(
        broker,
        title="Kushim",
        version=_version(),
        description="SOC 2 evidence automation for AWS: the messages other systems exchange with Kushim.",
        schema_version="3.0.0",
    )


def documents() -> dict[str, str]:
    """File name → content of every generated document (deterministic)."""
    files = {f"{model.__name__}.schema.json": _dump(model.model_json_schema()) for model in models()}
    files[ASYNCAPI_FILE] = _dump(json.loads(specification().to_specification().to_json()))
    return files


def _dump(data: object) -> str:
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write or check Kushim's JSON Schemas and AsyncAPI document.")
    parser.add_argument("--write", action="store_true", help=f"(re)write the files in {SCHEMAS_DIR}")
    args = parser.parse_args(argv)
    stale = [name for name, text in documents().items() if _read(SCHEMAS_DIR / name) != text]
    if args.write:
        SCHEMAS_DIR.mkdir(exist_ok=True)
        for name, text in documents().items():
            (SCHEMAS_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {len(documents())} files to {SCHEMAS_DIR} ({len(stale)} changed)")
        return 0
    if stale:
        print(f"out of date: {', '.join(stale)}; run `make schemas`", file=sys.stderr)
        return 1
    print("schemas are current")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.exists() else None


if __name__ == "__main__":
    sys.exit(main())
