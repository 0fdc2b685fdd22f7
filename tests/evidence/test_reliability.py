"""Reliability of the evidence service against real parts: a nats-server per test, moto's S3 server, SQLite and
(with KUSHIM_TEST_POSTGRES_DSN) PostgreSQL.

- a SIGKILLed `kushim serve evidence` loses and duplicates nothing (findings rows, S3 object versions);
- a database outage longer than ack_wait: nothing is acked before it is stored, everything arrives afterwards;
- an S3 outage: a pair's last chunk is not acked before its evidence object is written;
- chunks that never arrive: the run ends INCOMPLETE naming exactly the pairs that lack them.

Outages of servers that are not ours (PostgreSQL, moto) go through `tests.proxy.TcpProxy`; an SQLite outage is a
write lock held by another connection. Every assertion counts what the database, the streams and the bucket hold,
never the service's own counters. Each test prints one `measured:` line (see it with `pytest -s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.js.errors import NotFoundError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import services.evidence.store as evidence_store
from services.evidence.store import EvidenceStore
from shared import subjects
from shared.embedded import EmbeddedNats
from shared.messages import FindingsReported, PlannedCheck, RunCompleted, RunPlanned, RunState, Service, Status
from shared.nats import make_broker, publish_durable
from shared.settings import Settings
from tests.conftest import boto3_client
from tests.evidence.factory import (
    ACCOUNT,
    OTHER_ACCOUNT,
    REQUESTED_AT,
    make_chunks,
    make_finding,
    make_plan,
    new_request_id,
)
from tests.evidence.harness import running_evidence
from tests.helpers import eventually, nats_client, stream_models
from tests.proxy import Mode, TcpProxy

BUCKET = "kushim-evidence-storage-reliability"
ACK_WAIT = 2.0
RETRY_DELAY = 0.2
OUTAGE = 5.0
"""Seconds an outage lasts: longer than ack_wait plus the first retry delays (2 + 0.2 + 0.4 + 0.8)."""
SQLITE_BUSY_TIMEOUT_MS = 2_500
"""The service waits this long on a locked SQLite database before the write fails (10 s in production): longer than
ack_wait (the message must be kept alive while it waits) and shorter than the outage (writes must fail too)."""

CHECK_OF = {
    Service.IAM: "iam.user_mfa",
    Service.S3: "s3.bucket_default_encryption",
    Service.CLOUDTRAIL: "cloudtrail.trail_logging",
}
Pair = tuple[str, Service]


# --- workloads --------------------------------------------------------------------------------------


@dataclass
class Workload:
    """A run's plan and its findings chunks, as the scheduler and the collectors publish them."""

    request_id: str
    plan: RunPlanned
    chunks: dict[Pair, list[FindingsReported]]

    @property
    def run_id(self) -> str:
        return self.plan.run_id

    def all_chunks(self) -> list[FindingsReported]:
        return [c for pair in self.chunks.values() for c in pair]

    def finding_ids(self, chunks: Sequence[FindingsReported] | None = None) -> set[str]:
        return {f.finding_id for c in (self.all_chunks() if chunks is None else chunks) for f in c.findings}

    def key(self, pair: Pair) -> str:
        account_id, service = pair
        return f"evidence/{account_id}/{REQUESTED_AT:%Y/%m/%d}/{self.run_id}/{service.value}.json"


def workload(pairs: Sequence[Pair], *, per_pair: int, per_chunk: int, deadline_at: datetime | None = None) -> Workload:
    request_id = new_request_id()
    plan = make_plan(request_id, pairs, deadline_at=deadline_at)
    chunks: dict[Pair, list[FindingsReported]] = {}
    for account_id, service in pairs:
        found = [
            make_finding(
                plan.run_id,
                account_id,
                CHECK_OF[service],
                f"resource/{account_id}/{service.value}/{i:05d}",
                Status.FAIL if i % 7 == 0 else Status.PASS,
                index=i,
            )
            for i in range(per_pair)
        ]
        chunks[(account_id, service)] = make_chunks(request_id, account_id, service, found, per_chunk=per_chunk)
    return Workload(request_id, plan, chunks)


# --- publishing like the scheduler and the collectors -----------------------------------------------


class Publisher:
    """Publishes plans and chunks with the Nats-Msg-Ids the scheduler and the collectors use."""

    def __init__(self, broker: NatsBroker) -> None:
        self.broker = broker
        self.published = 0

    async def plan(self, plan: RunPlanned) -> None:
        await publish_durable(
            self.broker, subjects.RUNS_PLANNED, plan, msg_id=f"planned:{plan.run_id}", stream=subjects.STREAM_RUNS
        )

    async def chunks(self, chunks: Sequence[FindingsReported]) -> None:
        for chunk in chunks:
            await publish_durable(
                self.broker,
                subjects.findings_subject(chunk.service),
                chunk,
                msg_id=f"findings:{chunk.run_id}:{chunk.account_id}:{chunk.service.value}:{chunk.chunk_index}",
                stream=subjects.STREAM_FINDINGS,
            )
            self.published += 1


class Publishing:
    """A connected publisher (async context manager)."""

    def __init__(self, url: str, settings: Settings) -> None:
        self._broker = make_broker(url, name="test-publisher", settings=settings)

    async def __aenter__(self) -> Publisher:
        await self._broker.connect()
        return Publisher(self._broker)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._broker.stop()


# --- what the streams say ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """The evidence findings consumer, as the server counts it, over a stream holding `published` chunks."""

    published: int
    pending: int
    """Never delivered yet."""
    ack_pending: int
    """Delivered and not acked (being handled, or nacked and waiting for redelivery)."""
    deliveries: int
    """Every delivery, redeliveries included (the consumer sequence)."""

    @property
    def acked(self) -> int:
        return self.published - self.pending - self.ack_pending

    @property
    def redeliveries(self) -> int:
        return self.deliveries - (self.published - self.pending)


async def findings_progress(nc: NatsClient, published: int) -> Progress:
    info = await nc.jetstream().consumer_info(subjects.STREAM_FINDINGS, subjects.DURABLE_EVIDENCE_FINDINGS)
    stream = await nc.jetstream().stream_info(subjects.STREAM_FINDINGS)
    assert stream.state.messages == published, "the findings stream holds other messages than the test's"
    return Progress(
        published=published,
        pending=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0),
        deliveries=int(info.delivered.consumer_seq if info.delivered else 0),
    )


async def completions(nc: NatsClient, run_id: str) -> list[RunCompleted]:
    found = await stream_models(nc, subjects.STREAM_RUNS, subjects.RUNS_COMPLETED, RunCompleted)
    return [c for c in found if c.run_id == run_id]


# --- what the database says (read directly, never through the service or the proxy) -----------------


class Database:
    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(url)

    async def close(self) -> None:
        await self.engine.dispose()

    async def _rows(self, sql: str, **params: object) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(text(sql), params)).all())

    async def chunks_stored(self, run_id: str) -> int:
        rows = await self._rows("SELECT count(*) FROM evidence_chunks WHERE run_id = :r", r=run_id)
        return int(rows[0][0])

    async def finding_ids(self, run_id: str) -> list[str]:
        rows = await self._rows("SELECT finding_id FROM evidence_findings WHERE run_id = :r", r=run_id)
        return [str(r[0]) for r in rows]

    async def distinct_resources(self, run_id: str) -> int:
        rows = await self._rows(
            "SELECT count(*) FROM (SELECT DISTINCT account_id, service, check_id, resource_id "
            "FROM evidence_findings WHERE run_id = :r) AS d",
            r=run_id,
        )
        return int(rows[0][0])

    async def run_state(self, run_id: str) -> str | None:
        rows = await self._rows("SELECT state FROM evidence_runs WHERE run_id = :r", r=run_id)
        return str(rows[0][0]) if rows else None

    async def evidence(self, run_id: str) -> dict[Pair, tuple[str | None, str | None, str | None]]:
        """(key, sha256, version id) of each planned pair's evidence; None while not done."""
        rows = await self._rows(
            "SELECT account_id, service, evidence_key, evidence_sha256, evidence_version_id, evidence_done_at "
            "FROM evidence_pairs WHERE run_id = :r AND planned = :t",
            r=run_id,
            t=True,
        )
        return {(r[0], Service(r[1])): (r[2], r[3], r[4]) if r[5] is not None else (None, None, None) for r in rows}


async def prepare_database(url: str) -> None:
    """Bring the database to the current schema, as an operator would before starting the service."""
    store = EvidenceStore(url)
    try:
        await store.migrate()
    finally:
        await store.close()


class SqliteWriteLock:
    """An SQLite outage: another connection (the sqlite3 module) holds `BEGIN EXCLUSIVE` on the database file.
    In WAL mode readers go on reading; every writer waits for its busy timeout and then fails "database is locked"."""

    def __init__(self, path: str) -> None:
        self._conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        self._closed = False

    async def acquire(self) -> None:
        await asyncio.to_thread(self._conn.execute, "BEGIN EXCLUSIVE")
        assert self._conn.in_transaction

    async def release(self) -> None:
        """Roll back and close (again: a no-op)."""
        if self._closed:
            return
        self._closed = True
        if self._conn.in_transaction:
            await asyncio.to_thread(self._conn.execute, "ROLLBACK")
        self._conn.close()


# --- the bucket ---------------------------------------------------------------------------------------


def create_bucket(endpoint: str) -> Any:
    s3 = boto3_client(endpoint, "s3")
    s3.create_bucket(Bucket=BUCKET)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return s3


@dataclass
class Versions:
    versions: list[tuple[str, str]] = field(default_factory=list)
    delete_markers: int = 0

    def evidence_keys(self) -> list[str]:
        return sorted(key for key, _ in self.versions if key.startswith("evidence/"))

    def manifest_keys(self) -> list[str]:
        return sorted(key for key, _ in self.versions if key.startswith("manifests/"))


def list_versions(s3: Any) -> Versions:
    found = Versions()
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=BUCKET):
        found.versions += [(v["Key"], v["VersionId"]) for v in page.get("Versions", [])]
        found.delete_markers += len(page.get("DeleteMarkers", []))
    return found


def assert_evidence_objects(s3: Any, work: Workload, pairs: Sequence[Pair], stored: dict[Pair, Any]) -> Versions:
    """Every object in the bucket (evidence, manifests, the service's write check) has exactly one version; the
    evidence objects are exactly those of `pairs`, as the database recorded them (key, SHA-256, version id)."""
    found = list_versions(s3)
    assert found.delete_markers == 0
    keys = [key for key, _ in found.versions]
    assert sorted({k for k in keys if keys.count(k) > 1}) == [], "keys with more than one version"
    assert found.evidence_keys() == sorted(work.key(p) for p in pairs), "not exactly the expected evidence objects"
    by_key = dict(found.versions)
    for pair in pairs:
        key, sha256, version_id = stored[pair]
        assert key == work.key(pair)
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == sha256
        assert version_id == by_key[key]
        document = json.loads(body)
        assert document["findings_total"] == sum(len(c.findings) for c in work.chunks[pair])
    return found


# --- the service as a process -------------------------------------------------------------------------


class ServiceProcess:
    """`kushim serve evidence` in a process of its own, logging (JSON) to a file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).with_name("kushim")), "serve", "evidence"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def assert_alive(self) -> None:
        if self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise AssertionError(f"kushim serve evidence exited with {self.proc.returncode}:\n{tail}")

    def kill(self) -> None:
        self.assert_alive()
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def service_env(tmp_path: Path, *, nats_url: str, database_url: str, endpoint: str) -> dict[str, str]:
    """Only what the service needs: never the caller's AWS_* or KUSHIM_* variables."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path / "home"),
        "PYTHONUNBUFFERED": "1",
        "KUSHIM_HOME": str(tmp_path / "kushim-home"),
        "KUSHIM_NATS_URL": nats_url,
        "KUSHIM_DATABASE_URL": database_url,
        "KUSHIM_ACK_WAIT_SECONDS": str(ACK_WAIT),
        "KUSHIM_RETRY_DELAY_SECONDS": str(RETRY_DELAY),
        "KUSHIM_DEADLINE_POLL_SECONDS": "0.5",
        "KUSHIM_SCHEDULE_ENABLED": "false",
        "KUSHIM_LOG_FORMAT": "json",
        "KUSHIM_LOG_LEVEL": "INFO",
        "AWS_S3_BUCKET_NAME": BUCKET,
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }


async def consumer_waiting(nc: NatsClient) -> bool:
    """The evidence findings consumer exists and a subscriber has a pull request waiting on it."""
    try:
        info = await nc.jetstream().consumer_info(subjects.STREAM_FINDINGS, subjects.DURABLE_EVIDENCE_FINDINGS)
    except NotFoundError:
        return False
    return bool(info.num_waiting)


# --- fixtures -----------------------------------------------------------------------------------------


@pytest.fixture
def reliability_settings(e2e_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"ack_wait_seconds": ACK_WAIT, "retry_delay_seconds": RETRY_DELAY, "log_level": "INFO"}
        return e2e_settings(**(values | overrides))

    return make


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    await prepare_database(database_url)
    db = Database(database_url)
    try:
        yield db
    finally:
        await db.close()


def backend(url: str) -> str:
    return make_url(url).get_backend_name()


# --- the proxy itself ---------------------------------------------------------------------------------


async def read_or_reset(reader: asyncio.StreamReader) -> bytes:
    """One read; the end of the stream counts as a reset connection."""
    data = await asyncio.wait_for(reader.read(1), 2)
    if not data:
        raise ConnectionResetError("EOF")
    return data


async def test_proxy_forwards_cuts_and_restores() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])

    async def roundtrip(proxy: TcpProxy) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            writer.write(b"ping")
            await writer.drain()
            return await asyncio.wait_for(reader.read(4), 2)
        finally:
            writer.close()

    async with server, TcpProxy("127.0.0.1", port) as proxy:
        assert await roundtrip(proxy) == b"ping"
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.read(1) == b"x"

        await proxy.cut()
        with pytest.raises(ConnectionError):  # the open connection is reset
            await read_or_reset(reader)
        writer.close()
        with pytest.raises(ConnectionError):  # so is every new one
            assert await roundtrip(proxy) == b""
        assert proxy.refused == 1

        proxy.restore()
        assert await roundtrip(proxy) == b"ping"

        await proxy.cut("blackhole")
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"z")
        with pytest.raises(TimeoutError):  # accepted, swallowed, never answered
            await asyncio.wait_for(reader.read(1), 0.3)
        proxy.restore()  # the swallowed connection is reset
        with pytest.raises(ConnectionError):
            await read_or_reset(reader)
        writer.close()
        assert await roundtrip(proxy) == b"ping"
        assert (proxy.accepted, proxy.forwarded, proxy.refused) == (6, 4, 2)


# --- a. SIGKILL ---------------------------------------------------------------------------------------

KILL_PAIRS: list[Pair] = [
    (ACCOUNT, Service.IAM),
    (ACCOUNT, Service.S3),
    (ACCOUNT, Service.CLOUDTRAIL),
    (OTHER_ACCOUNT, Service.IAM),
]


@pytest.mark.timeout(120)
async def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    database_url: str,
    tmp_path: Path,
    nats_server: EmbeddedNats,
    moto_endpoint: str,
    database: Database,
    reliability_settings: Callable[..., Settings],
) -> None:
    """10,000 findings in 100 chunks; the service is SIGKILLed twice while they are handled (once as soon as the
    first evidence object is in S3, once in the middle of a pair's chunks) and restarted each time."""
    s3 = create_bucket(moto_endpoint)
    work = workload(KILL_PAIRS, per_pair=2_500, per_chunk=100)
    chunks = work.all_chunks()
    assert (len(chunks), len(work.finding_ids())) == (100, 10_000)
    env = service_env(tmp_path, nats_url=nats_server.url, database_url=database_url, endpoint=moto_endpoint)
    run_id = work.run_id
    processes: list[ServiceProcess] = []

    def start() -> ServiceProcess:
        process = ServiceProcess(env, tmp_path / f"evidence-{len(processes) + 1}.log")
        processes.append(process)
        return process

    try:
        async with nats_client(nats_server.url) as nc, Publishing(nats_server.url, reliability_settings()) as pub:
            first = start()

            async def ready() -> bool:
                first.assert_alive()
                return await consumer_waiting(nc)

            await eventually(ready, timeout=20, what="the evidence service to consume")
            await pub.plan(work.plan)
            publishing = asyncio.create_task(pub.chunks(chunks))

            # Kill 1: as soon as the first evidence object exists (its pair's record and ack may not).
            async def first_object() -> bool:
                first.assert_alive()
                return bool(list_versions(s3).evidence_keys())

            await eventually(first_object, timeout=30, interval=0.02, what="the first evidence object")
            first.kill()
            stored_at_kill = [await database.chunks_stored(run_id)]
            recorded_at_kill = sum(key is not None for key, _, _ in (await database.evidence(run_id)).values())
            await publishing
            assert pub.published == 100
            assert 0 < stored_at_kill[0] < 100, stored_at_kill
            acked_at_kill = [(await findings_progress(nc, 100)).acked]
            assert acked_at_kill[0] <= stored_at_kill[0]

            # Kill 2: in the middle of the third pair's chunks.
            second = start()

            async def mid_third_pair() -> bool:
                second.assert_alive()
                return await database.chunks_stored(run_id) >= 60

            await eventually(mid_third_pair, timeout=30, interval=0.02, what="60 chunks stored")
            second.kill()
            stored_at_kill.append(await database.chunks_stored(run_id))
            assert stored_at_kill[1] < 100, stored_at_kill
            acked_at_kill.append((await findings_progress(nc, 100)).acked)
            assert acked_at_kill[1] <= stored_at_kill[1]

            third = start()

            async def completed() -> bool:
                third.assert_alive()
                return bool(await completions(nc, run_id))

            await eventually(completed, timeout=60, what="RunCompleted")
            await eventually(
                lambda: _drained(nc, 100), timeout=30, what="every chunk acked"
            )  # the last redelivery may follow the completion
            progress = await findings_progress(nc, 100)
            done = await completions(nc, run_id)
            third.stop()

        assert [(c.state, c.missing, c.findings_total) for c in done] == [(RunState.COMPLETE, [], 10_000)]
        ids = await database.finding_ids(run_id)
        assert len(ids) == 10_000, f"{len(ids)} finding rows"
        assert set(ids) == work.finding_ids(), "lost or foreign findings"
        assert await database.distinct_resources(run_id) == 10_000
        assert await database.chunks_stored(run_id) == 100
        assert await database.run_state(run_id) == RunState.COMPLETE.value
        stored = await database.evidence(run_id)
        versions = assert_evidence_objects(s3, work, KILL_PAIRS, stored)
        assert len(versions.manifest_keys()) == 2, "one manifest per (run, account)"
        assert progress.acked == 100
        print(
            f"\nmeasured: backend={backend(database_url)} chunks stored/acked at kills={stored_at_kill}/"
            f"{acked_at_kill} evidence recorded at kill 1={recorded_at_kill} deliveries={progress.deliveries} "
            f"redeliveries={progress.redeliveries} finding rows={len(ids)} versions={len(versions.versions)} "
            f"(evidence {len(versions.evidence_keys())}, manifests {len(versions.manifest_keys())})"
        )
    finally:
        for process in processes:
            process.stop()


async def _drained(nc: NatsClient, published: int) -> bool:
    progress = await findings_progress(nc, published)
    return progress.acked == published


# --- b. database outage ---------------------------------------------------------------------------------

OUTAGE_PAIRS: list[Pair] = [(ACCOUNT, Service.IAM), (OTHER_ACCOUNT, Service.S3)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["reset", "blackhole"])
async def test_database_outage_longer_than_ack_wait_acks_nothing_unstored(
    database_url: str,
    database: Database,
    reliability_settings: Callable[..., Settings],
    monkeypatch: pytest.MonkeyPatch,
    mode: Mode,
) -> None:
    """PostgreSQL: for OUTAGE seconds the proxy resets every connection (`reset`) or swallows new ones (`blackhole`,
    a partition). SQLite: another connection holds BEGIN EXCLUSIVE for OUTAGE seconds (the service's busy timeout
    shortened to SQLITE_BUSY_TIMEOUT_MS). Half of the chunks arrive before the outage, half during it."""
    if backend(database_url) == "sqlite" and mode == "blackhole":
        pytest.skip("an SQLite outage is a lock, not a network")
    work = workload(OUTAGE_PAIRS, per_pair=500, per_chunk=25)
    total = len(work.all_chunks())
    before = [c for pair in work.chunks.values() for c in pair[:10]]
    during = [c for pair in work.chunks.values() for c in pair[10:]]
    assert (len(before), len(during)) == (20, 20)
    run_id = work.run_id

    async with contextlib.AsyncExitStack() as stack:
        proxy: TcpProxy | None = None
        lock: SqliteWriteLock | None = None
        service_url = database_url
        if backend(database_url) == "postgresql":
            target = make_url(database_url)
            proxy = await stack.enter_async_context(TcpProxy(target.host or "127.0.0.1", target.port or 5432))
            service_url = target.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        else:
            monkeypatch.setattr(evidence_store, "SQLITE_BUSY_TIMEOUT_MS", SQLITE_BUSY_TIMEOUT_MS)
            path = make_url(database_url).database
            assert path
            lock = SqliteWriteLock(path)
        h = await stack.enter_async_context(running_evidence(reliability_settings(database_url=service_url)))
        # On the way out (a failed assertion included) the outage ends before the service stops.
        if proxy is not None:
            stack.callback(proxy.restore)
        if lock is not None:
            stack.push_async_callback(lock.release)

        await h.plan(work.plan)
        await h.chunks(before)

        async def some_stored() -> bool:
            return await database.chunks_stored(run_id) >= 5

        await eventually(some_stored, what="5 chunks stored")
        if proxy is not None:
            await proxy.cut(mode)
        else:
            assert lock is not None
            await lock.acquire()
        loop = asyncio.get_running_loop()
        started = loop.time()
        stored_at_cut = await database.chunks_stored(run_id)
        await h.chunks(during)

        samples: list[tuple[int, int]] = []
        while loop.time() - started < OUTAGE:
            progress = await findings_progress(h.nc, total)  # first the acks, then the rows: acked <= stored
            stored = await database.chunks_stored(run_id)
            assert progress.acked <= stored, f"{progress.acked} chunks acked but only {stored} stored"
            samples.append((progress.acked, stored))
            await asyncio.sleep(0.1)
        outage = loop.time() - started
        during_outage = await findings_progress(h.nc, total)
        stored_after = await database.chunks_stored(run_id)
        assert stored_after < total, "the outage held nothing back"
        assert during_outage.acked < total, "the outage held nothing back"
        assert during_outage.acked <= stored_after
        refused = proxy.refused if proxy is not None else 0
        if proxy is not None:
            assert proxy.refused > 0, "the service did not try the database during the outage"
            proxy.restore()
        else:
            assert lock is not None
            await lock.release()

        completed = await h.next_completion(timeout=30)
        caught_up = loop.time() - started - outage
        await eventually(lambda: _drained(h.nc, total), what="every chunk acked")
        progress = await findings_progress(h.nc, total)
        assert all(not task.done() for task in h.app._tasks), "a background task of the service died"
        page = await h.report(json.dumps({"run_id": run_id}).encode())
        assert page.ok
        done = await completions(h.nc, run_id)

    assert completed.state is RunState.COMPLETE
    assert [(c.state, c.findings_total) for c in done] == [(RunState.COMPLETE, 1_000)]
    assert progress.redeliveries >= 1, "no delivery failed during the outage: it was not one"
    ids = await database.finding_ids(run_id)
    assert len(ids) == 1_000
    assert set(ids) == work.finding_ids()
    assert await database.chunks_stored(run_id) == total
    assert await database.run_state(run_id) == RunState.COMPLETE.value
    evidence = await database.evidence(run_id)
    assert sorted(evidence) == sorted(OUTAGE_PAIRS)
    assert all(key == work.key(pair) for pair, (key, _, _) in evidence.items())
    print(
        f"\nmeasured: backend={backend(database_url)} mode={mode if proxy else 'lock'} outage={outage:.1f}s "
        f"stored at cut={stored_at_cut} "
        f"acked/stored at end of outage={during_outage.acked}/{stored_after} of {total} "
        f"max acked during outage={max(a for a, _ in samples)} samples={len(samples)} "
        f"connections refused={refused} deliveries={progress.deliveries} redeliveries={progress.redeliveries} "
        f"caught up {caught_up:.1f}s after the outage"
    )


# --- c. S3 outage -----------------------------------------------------------------------------------------

S3_PAIRS: list[Pair] = [(ACCOUNT, Service.IAM), (ACCOUNT, Service.S3), (OTHER_ACCOUNT, Service.CLOUDTRAIL)]


@pytest.mark.timeout(60)
async def test_s3_outage_keeps_each_pairs_last_chunk_unacked_until_its_upload(
    database_url: str,
    moto_endpoint: str,
    database: Database,
    reliability_settings: Callable[..., Settings],
) -> None:
    """moto behind the proxy; every chunk but each pair's last is stored and acked, then S3 is cut and the last
    chunks arrive: they are stored but stay unacked, with no object in the bucket, until S3 is back."""
    s3 = create_bucket(moto_endpoint)
    work = workload(S3_PAIRS, per_pair=100, per_chunk=20)
    last = [pair[-1] for pair in work.chunks.values()]
    rest = [c for pair in work.chunks.values() for c in pair[:-1]]
    total = len(rest) + len(last)
    run_id = work.run_id
    moto = urlsplit(moto_endpoint)

    async with TcpProxy(moto.hostname or "127.0.0.1", moto.port or 80) as proxy:
        settings = reliability_settings(evidence_bucket=BUCKET, aws_endpoint_url=proxy.url, database_url=database_url)
        async with running_evidence(settings) as h:
            await h.plan(work.plan)
            await h.chunks(rest)
            await eventually(lambda: _drained(h.nc, len(rest)), what="every chunk but the last ones acked")
            assert await database.chunks_stored(run_id) == len(rest)

            await proxy.cut()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await h.chunks(last)
            samples = 0
            while loop.time() - started < OUTAGE:
                progress = await findings_progress(h.nc, total)
                assert progress.acked == len(rest), f"{progress.acked - len(rest)} last chunk(s) acked without S3"
                written = list_versions(s3)
                assert written.evidence_keys() == [], "an evidence object was written while S3 was cut"
                assert written.manifest_keys() == [], "a manifest was written while S3 was cut"
                samples += 1
                await asyncio.sleep(0.1)
            outage = loop.time() - started
            stored_during = await database.chunks_stored(run_id)
            evidence_during = await database.evidence(run_id)
            during_outage = await findings_progress(h.nc, total)
            # Handlers run one at a time and each upload attempt retries for seconds: at least one last chunk is
            # stored (and unacked) by now, usually two of three.
            assert len(rest) < stored_during <= total, "no last chunk was stored while S3 was out"
            assert all(key is None for key, _, _ in evidence_during.values()), "evidence recorded without S3"
            assert during_outage.ack_pending + during_outage.pending == len(last)
            assert proxy.refused > 0, "the service did not try S3 during the outage"
            refused = proxy.refused
            proxy.restore()

            completed = await h.next_completion(timeout=30)
            caught_up = loop.time() - started - outage
            await eventually(lambda: _drained(h.nc, total), what="every chunk acked")
            progress = await findings_progress(h.nc, total)
            done = await completions(h.nc, run_id)

    assert completed.state is RunState.COMPLETE
    assert [(c.state, c.missing) for c in done] == [(RunState.COMPLETE, [])]
    assert await database.run_state(run_id) == RunState.COMPLETE.value
    assert set(await database.finding_ids(run_id)) == work.finding_ids()
    stored = await database.evidence(run_id)
    versions = assert_evidence_objects(s3, work, S3_PAIRS, stored)
    assert len(versions.manifest_keys()) == 2, "one manifest per (run, account)"
    print(
        f"\nmeasured: backend={backend(database_url)} outage={outage:.1f}s samples={samples} "
        f"acked during outage={during_outage.acked}/{total} stored={stored_during} connections refused={refused} "
        f"deliveries={progress.deliveries} redeliveries={progress.redeliveries} versions={len(versions.versions)} "
        f"caught up {caught_up:.1f}s after the outage"
    )


# --- d. chunks that never arrive --------------------------------------------------------------------------

DROP_PAIRS: list[Pair] = [
    (ACCOUNT, Service.IAM),
    (ACCOUNT, Service.CLOUDTRAIL),
    (OTHER_ACCOUNT, Service.S3),
    (OTHER_ACCOUNT, Service.IAM),
]


class DroppingInterceptor:
    """Sits in the publish path and drops the chosen chunks: `{pair: {chunk_index, ...}}`."""

    def __init__(self, drop: dict[Pair, set[int]]) -> None:
        self.drop = drop
        self.dropped: list[FindingsReported] = []

    def __call__(self, chunks: Sequence[FindingsReported]) -> list[FindingsReported]:
        passed = []
        for chunk in chunks:
            if chunk.chunk_index in self.drop.get((chunk.account_id, chunk.service), set()):
                self.dropped.append(chunk)
            else:
                passed.append(chunk)
        return passed


@pytest.mark.timeout(60)
async def test_chunks_dropped_at_publish_end_the_run_incomplete_naming_exactly_their_pairs(
    database_url: str,
    moto_endpoint: str,
    database: Database,
    reliability_settings: Callable[..., Settings],
) -> None:
    """Ten chunks of three pairs never reach the stream (a pair's last chunk, four middle ones of another, five
    alternate ones including the first of a third); the fourth pair is whole. The deadline is 3 s away."""
    s3 = create_bucket(moto_endpoint)
    deadline = datetime.now(UTC) + timedelta(seconds=3)
    work = workload(DROP_PAIRS, per_pair=50, per_chunk=5, deadline_at=deadline)
    interceptor = DroppingInterceptor(
        {
            (ACCOUNT, Service.IAM): {9},
            (ACCOUNT, Service.CLOUDTRAIL): {1, 2, 3, 4},
            (OTHER_ACCOUNT, Service.S3): {0, 2, 4, 6, 8},
        }
    )
    affected = {PlannedCheck(account_id=a, service=s) for a, s in interceptor.drop}
    delivered = interceptor(work.all_chunks())
    assert (len(interceptor.dropped), len(delivered)) == (10, 30)
    run_id = work.run_id
    settings = reliability_settings(evidence_bucket=BUCKET, database_url=database_url)

    async with running_evidence(settings) as h:
        await h.plan(work.plan)
        await h.chunks(delivered)
        completed = await h.next_completion(timeout=20)
        finished_at = datetime.now(UTC)
        await eventually(lambda: _drained(h.nc, len(delivered)), what="every delivered chunk acked")
        await asyncio.sleep(1.0)  # five more deadline sweeps: the run must stay INCOMPLETE
        done = await completions(h.nc, run_id)

    assert finished_at >= deadline
    assert completed.state is RunState.INCOMPLETE
    assert len(completed.missing) == len(affected)
    assert set(completed.missing) == affected
    assert [(c.state, len(c.missing)) for c in done] == [(RunState.INCOMPLETE, 3)], "published other completions"
    assert await database.run_state(run_id) == RunState.INCOMPLETE.value
    assert await database.chunks_stored(run_id) == 30
    ids = await database.finding_ids(run_id)
    assert len(ids) == 150
    assert set(ids) == work.finding_ids(delivered)
    stored = await database.evidence(run_id)
    whole = [(OTHER_ACCOUNT, Service.IAM)]
    assert [pair for pair, (key, _, _) in stored.items() if key is not None] == whole
    assert completed.findings_total == 150
    versions = assert_evidence_objects(s3, work, whole, stored)
    print(
        f"\nmeasured: backend={backend(database_url)} dropped={len(interceptor.dropped)} "
        f"missing={sorted((m.account_id, m.service.value) for m in completed.missing)} finding rows={len(ids)} "
        f"versions={len(versions.versions)} (manifests {len(versions.manifest_keys())}) "
        f"completed {(finished_at - deadline).total_seconds():.1f}s after deadline"
    )
