"""The evidence database: runs, their planned (account, service) pairs, received chunks, findings and evidence
documents. One SQLAlchemy 2 async code path for SQLite (aiosqlite) and PostgreSQL (asyncpg).

Every insert is idempotent (`INSERT … ON CONFLICT DO NOTHING` / `DO UPDATE … WHERE`), so a redelivered message
changes nothing. Findings chunks may arrive before their run's plan (different consumers): they are stored anyway.
A run is finalised (COMPLETE / INCOMPLETE) by one conditional UPDATE (`WHERE state = 'RUNNING'`), so two handlers
racing to complete it cannot both win.

SQLite runs in WAL mode with `synchronous=FULL`, and every write transaction starts with `BEGIN IMMEDIATE` (the
write lock is taken up front, so a read-then-write transaction never fails on lock upgrade; a lock held too long
surfaces as "database is locked", a transient error).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

import structlog
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    bindparam,
    case,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import TypeDecorator

from services.evidence import migrate
from shared.controls import StatusCount, control_verdicts
from shared.messages import (
    ControlVerdict,
    DeadLetter,
    Finding,
    FindingsReported,
    PlannedCheck,
    RunCompleted,
    RunJoined,
    RunPlanned,
    RunState,
    Service,
    ServiceResult,
    Soc2Control,
    Status,
)

log = structlog.get_logger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
_READONLY = "kushim_readonly"


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite stores them naive, always in UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: Kushim stores timezone-aware UTC datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = MetaData()

runs = Table(
    "evidence_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("request_id", String(128), nullable=False, index=True),
    Column("requested_by", Text, nullable=False),
    Column("requested_at", UtcDateTime, nullable=False, index=True),
    Column("planned_at", UtcDateTime, nullable=False),
    Column("deadline_at", UtcDateTime, nullable=False),
    Column("state", String(16), nullable=False),
    Column("completed_at", UtcDateTime),
    Column("controls", JSON),
    Column("missing", JSON),
    Column("findings_total", Integer),
    Column("findings_by_status", JSON),
    Column("completion_published", Boolean, nullable=False, default=False),
    Column("tenant", String(64)),
)
Index("ix_evidence_runs_state_deadline", runs.c.state, runs.c.deadline_at)

pairs = Table(
    "evidence_pairs",
    metadata,
    Column("run_id", String(64), nullable=False),
    Column("account_id", String(12), nullable=False),
    Column("service", String(16), nullable=False),
    Column("planned", Boolean, nullable=False, default=False),
    Column("attempt", Integer),
    Column("sealed", Boolean, nullable=False, default=False),
    Column("chunk_count", Integer),
    Column("population", JSON),
    Column("metrics", JSON),
    Column("api_calls", JSON),
    Column("regions", JSON),
    Column("collector_version", String(64)),
    Column("started_at", UtcDateTime),
    Column("finished_at", UtcDateTime),
    Column("evidence_key", Text),
    Column("evidence_sha256", String(64)),
    Column("evidence_size", Integer),
    Column("evidence_location", Text),
    Column("evidence_version_id", Text),
    Column("evidence_done_at", UtcDateTime),
    Column("manifest_sequence", Integer),
    PrimaryKeyConstraint("run_id", "account_id", "service"),
)

chunks = Table(
    "evidence_chunks",
    metadata,
    Column("run_id", String(64), nullable=False),
    Column("account_id", String(12), nullable=False),
    Column("service", String(16), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("chunk_index", Integer, nullable=False),
    Column("chunk_count", Integer, nullable=False),
    Column("finding_count", Integer, nullable=False),
    Column("stored_at", UtcDateTime, nullable=False),
    PrimaryKeyConstraint("run_id", "account_id", "service", "attempt", "chunk_index"),
)

findings = Table(
    "evidence_findings",
    metadata,
    Column("finding_id", String(64), primary_key=True),
    Column("run_id", String(64), nullable=False),
    Column("account_id", String(12), nullable=False),
    Column("service", String(16), nullable=False),
    Column("region", String(64), nullable=False),
    Column("control", String(16), nullable=False),
    Column("check_id", String(128), nullable=False),
    Column("resource_type", String(128), nullable=False),
    Column("resource_arn", Text),
    Column("resource_id", Text, nullable=False),
    Column("status", String(8), nullable=False),
    Column("severity", String(16), nullable=False),
    Column("title", Text, nullable=False),
    Column("summary", Text, nullable=False),
    Column("details", JSON, nullable=False),
    Column("remediation", Text, nullable=False),
    Column("observed_at", UtcDateTime, nullable=False),
    Column("collector_version", String(64), nullable=False),
)
# Leading run_id: serves the per-run report and counts as well as the per-pair evidence document.
Index("ix_evidence_findings_run_id", findings.c.run_id, findings.c.account_id, findings.c.service)

documents = Table(
    "evidence_documents",
    metadata,
    Column("run_id", String(64), nullable=False),
    Column("account_id", String(12), nullable=False),
    Column("service", String(16), nullable=False),
    Column("key", Text, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("location", Text),
    Column("version_id", Text),
    PrimaryKeyConstraint("run_id", "account_id", "service"),
)

# One manifest per (run, account) lists that account's evidence objects of the run, and the SHA-256 of the account's
# previous manifest: a hash chain. (account_id, previous_sha256) is unique, so two manifests can never claim the same
# predecessor (a fork), whatever the locking; the first manifest of an account names GENESIS_SHA256.
manifests = Table(
    "evidence_manifests",
    metadata,
    Column("account_id", String(12), nullable=False),
    Column("sequence", Integer, nullable=False),
    Column("run_id", String(64), nullable=False, index=True),
    Column("key", Text, nullable=False, unique=True),
    Column("sha256", String(64), nullable=False),
    Column("previous_sha256", String(64), nullable=False),
    Column("size", Integer, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("location", Text),
    Column("version_id", Text),
    Column("uploaded_at", UtcDateTime),
    PrimaryKeyConstraint("account_id", "sequence"),
    UniqueConstraint("account_id", "previous_sha256", name="uq_evidence_manifests_predecessor"),
)

run_requests = Table(
    "evidence_run_requests",
    metadata,
    Column("run_id", String(64), nullable=False),
    Column("request_id", String(128), nullable=False, index=True),
    Column("tenant", String(64)),
    Column("requested_by", Text, nullable=False),
    Column("joined_at", UtcDateTime, nullable=False),
    Column("published_state", String(16)),
    PrimaryKeyConstraint("run_id", "request_id"),
)
"""Requests coalesced into a run in flight (RunJoined). Each is owed the run's RunCompleted under its own request_id
whenever the run is final in a state other than `published_state` (the state last published to it)."""

chain_heads = Table(
    "evidence_chain_heads",
    metadata,
    Column("account_id", String(12), primary_key=True),
    Column("sequence", Integer, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("key", Text),
    Column("updated_at", UtcDateTime, nullable=False),
)

accounts = Table(
    "evidence_accounts",
    metadata,
    Column("account_id", String(12), primary_key=True),
    Column("name", Text, nullable=False),
    Column("access", String(32), nullable=False),
    Column("registered", Boolean, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)
"""A mirror of the account registry for reporting (the file stays the source of truth); removed accounts are kept
with registered = false, so old runs still show their names."""

dead_letters = Table(
    "evidence_dead_letters",
    metadata,
    Column("letter_id", String(64), primary_key=True),
    Column("consumer", String(64), nullable=False),
    Column("subject", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("stream_sequence", BigInteger),
    Column("num_delivered", Integer, nullable=False),
    Column("payload_excerpt", Text, nullable=False),
    Column("dead_lettered_at", UtcDateTime, nullable=False, index=True),
    Column("stored_at", UtcDateTime, nullable=False),
)

PAIR_KEY = ("run_id", "account_id", "service")
_PAIR_METADATA = (
    "attempt",
    "chunk_count",
    "population",
    "metrics",
    "api_calls",
    "regions",
    "collector_version",
    "started_at",
    "finished_at",
)
_FINAL_STATES = (RunState.COMPLETE.value, RunState.INCOMPLETE.value)
_STATUS_RANK = case((findings.c.status == Status.FAIL.value, 0), (findings.c.status == Status.ERROR.value, 1), else_=2)


@dataclass(frozen=True, slots=True)
class PairKey:
    run_id: str
    account_id: str
    service: Service


@dataclass(frozen=True, slots=True)
class PairProgress:
    """Where one (run, account, service) stands after a chunk was stored."""

    chunk_count: int
    received: int
    evidence_done: bool

    @property
    def all_received(self) -> bool:
        return self.received >= self.chunk_count


@dataclass(frozen=True, slots=True)
class PairMaterial:
    """Everything an evidence document is built from: the run's identity and dates, the pair's summary, findings."""

    run_id: str
    request_id: str
    requested_at: datetime
    account_id: str
    service: Service
    collector_version: str
    population: dict[str, int]
    metrics: dict[str, float]
    api_calls: dict[str, int]
    regions: list[str]
    started_at: datetime
    finished_at: datetime
    findings: list[dict[str, Any]]
    """Each finding as JSON (the shape of `Finding.model_dump(mode="json")`), read without re-validation: a
    document of 5,000 findings is built in a third of the time. A test holds the two shapes equal."""


@dataclass(frozen=True, slots=True)
class StoredRun:
    run_id: str
    request_id: str
    requested_by: str
    requested_at: datetime
    state: RunState
    completed_at: datetime | None
    controls: dict[Soc2Control, ControlVerdict]
    missing: list[PlannedCheck]


@dataclass(frozen=True, slots=True)
class RunRow:
    run: StoredRun
    accounts: list[str]
    findings_total: int
    findings_by_status: dict[str, int]


@dataclass(frozen=True, slots=True)
class ResourceStatus:
    status: Status
    control: Soc2Control
    region: str


@dataclass(frozen=True, slots=True)
class ManifestObjectRow:
    service: Service
    key: str
    sha256: str
    size: int
    version_id: str | None


@dataclass(frozen=True, slots=True)
class ManifestDraft:
    """What a manifest states, decided inside the transaction that advances the account's chain."""

    account_id: str
    sequence: int
    run_id: str
    request_id: str
    requested_at: datetime
    supplements: bool
    objects: list[ManifestObjectRow]
    missing_services: list[Service]
    population: dict[str, dict[str, int]]
    previous_sha256: str
    previous_key: str | None


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    account_id: str
    sequence: int
    run_id: str
    key: str
    sha256: str
    body: bytes
    requested_at: datetime
    location: str | None
    version_id: str | None


@dataclass(frozen=True, slots=True)
class ChainHead:
    account_id: str
    sequence: int
    sha256: str
    key: str | None


class ChainConflict(Exception):
    """The account's chain head moved during the transaction (another writer won): retry."""


ManifestBuilder = Callable[[ManifestDraft], tuple[str, bytes, str]]
"""Builds a manifest's (key, bytes, sha256) from its draft (services.evidence.manifest)."""


class EvidenceStore:
    """The evidence database. Construction does no I/O; `migrate()` connects and creates the tables."""

    def __init__(self, url: str) -> None:
        parsed = make_url(url)
        self._dialect = parsed.get_backend_name()
        if self._dialect not in ("sqlite", "postgresql"):
            raise ValueError(f"unsupported database {self._dialect!r}: use sqlite+aiosqlite or postgresql+asyncpg")
        in_file = self._dialect == "sqlite" and parsed.database not in (None, "", ":memory:")
        self._sqlite_path = Path(parsed.database) if in_file and parsed.database else None
        if self._dialect == "sqlite":
            self._engine = create_async_engine(parsed, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            _configure_sqlite(self._engine)
        else:
            self._engine = create_async_engine(parsed, pool_pre_ping=True)
        self._reader = self._engine.execution_options(**{_READONLY: True})
        self._statements = _ChunkStatements.build(self._insert)

    @property
    def engine(self) -> AsyncEngine:
        return self._engine

    @property
    def dialect(self) -> str:
        return self._dialect

    async def migrate(self) -> None:
        """Bring the schema to this Kushim's revision (`kushim db upgrade`; the embedded stacks do it themselves)."""
        if self._sqlite_path is not None:
            self._sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        await migrate.upgrade(self._engine)
        log.info("evidence_store_ready", dialect=self._dialect)

    async def check_schema(self) -> None:
        """Raise `SchemaError` unless the database is at this Kushim's schema revision (what `serve` requires)."""
        if self._sqlite_path is not None and not self._sqlite_path.exists():
            raise migrate.SchemaError(
                f"the evidence database {self._sqlite_path} does not exist: run `kushim db upgrade` first"
            )
        await migrate.check(self._engine)
        log.info("evidence_store_ready", dialect=self._dialect)

    async def close(self) -> None:
        await self._engine.dispose()

    def _insert(self, table: Table) -> Any:
        """The dialect's INSERT, which has `on_conflict_do_nothing` / `on_conflict_do_update`."""
        if self._dialect == "postgresql":
            return postgresql.insert(table)
        return sqlite.insert(table)

    # --- writes -------------------------------------------------------------------------------

    async def save_plan(self, plan: RunPlanned) -> None:
        """Store the run and mark its expected pairs as planned (a pair may already exist from an early chunk)."""
        expected = sorted({(p.account_id, p.service.value) for p in plan.expected})
        async with self._engine.begin() as conn:
            await conn.execute(
                self._insert(runs)
                .values(
                    run_id=plan.run_id,
                    request_id=plan.request_id,
                    requested_by=plan.requested_by,
                    requested_at=plan.requested_at,
                    planned_at=plan.planned_at,
                    deadline_at=plan.deadline_at,
                    state=RunState.RUNNING.value,
                    completion_published=False,
                    tenant=plan.tenant,
                )
                .on_conflict_do_nothing(index_elements=["run_id"])
            )
            stmt = self._insert(pairs)
            stmt = stmt.on_conflict_do_update(index_elements=list(PAIR_KEY), set_={"planned": True})
            await conn.execute(
                stmt,
                [{"run_id": plan.run_id, "account_id": a, "service": s, "planned": True} for a, s in expected],
            )

    async def save_chunk(self, chunk: FindingsReported, now: datetime) -> PairProgress:
        """Store one chunk in one transaction: its findings, its chunk row and the pair's summary (first wins)."""
        key = {"run_id": chunk.run_id, "account_id": chunk.account_id, "service": chunk.service.value}
        async with self._engine.begin() as conn:
            await conn.execute(
                self._statements.pair_upsert,
                {
                    **key,
                    "planned": False,
                    "sealed": False,
                    "attempt": chunk.attempt,
                    "chunk_count": chunk.chunk_count,
                    "population": chunk.population,
                    "metrics": chunk.metrics,
                    "api_calls": chunk.api_calls,
                    "regions": chunk.regions,
                    "collector_version": chunk.collector_version,
                    "started_at": chunk.started_at,
                    "finished_at": chunk.finished_at,
                },
            )
            await conn.execute(
                self._statements.chunk_insert,
                {
                    **key,
                    "attempt": chunk.attempt,
                    "chunk_index": chunk.chunk_index,
                    "chunk_count": chunk.chunk_count,
                    "finding_count": len(chunk.findings),
                    "stored_at": now,
                },
            )
            if chunk.findings:
                await conn.execute(self._statements.findings_insert, [_finding_row(f) for f in chunk.findings])
            progress = await self._progress(conn, key)
            if progress.all_received:
                await conn.execute(update(pairs).where(_pair_where(pairs, key)).values(sealed=True))
            return progress

    async def _progress(self, conn: AsyncConnection, key: Mapping[str, str]) -> PairProgress:
        pair = (await conn.execute(self._statements.progress, dict(key))).one()
        return PairProgress(pair.chunk_count, int(pair.received or 0), pair.evidence_done_at is not None)

    async def save_evidence(
        self, pair: PairKey, *, key: str, body: bytes, sha256: str, location: str, version_id: str | None, now: datetime
    ) -> None:
        """Keep the document in the database and record where it lives; the first record wins."""
        ident = {"run_id": pair.run_id, "account_id": pair.account_id, "service": pair.service.value}
        async with self._engine.begin() as conn:
            await conn.execute(
                self._insert(documents)
                .values(
                    **ident,
                    key=key,
                    sha256=sha256,
                    size=len(body),
                    body=body,
                    created_at=now,
                    location=location,
                    version_id=version_id,
                )
                .on_conflict_do_nothing(index_elements=list(PAIR_KEY))
            )
            await conn.execute(
                update(pairs)
                .where(_pair_where(pairs, ident), pairs.c.evidence_done_at.is_(None))
                .values(
                    evidence_key=key,
                    evidence_sha256=sha256,
                    evidence_size=len(body),
                    evidence_location=location,
                    evidence_version_id=version_id,
                    evidence_done_at=now,
                )
            )

    async def finalize_run(
        self, run_id: str, now: datetime, *, deadline_passed: bool, gating: Mapping[str, bool]
    ) -> RunState | None:
        """COMPLETE when every planned pair has its evidence; INCOMPLETE when the deadline passed first; an
        INCOMPLETE run whose missing results arrive later (after an outage or a backlog) becomes COMPLETE.

        Returns the new state, or None when the run is unknown, already final, or still waiting. When another
        writer changed the state in between (the deadline sweep made it INCOMPLETE while this handler completed its
        last pair), the evaluation runs again on the new state, so that an INCOMPLETE run with nothing missing any
        more becomes COMPLETE at once.
        """
        for _ in range(3):
            outcome = await self._finalize_once(run_id, now, deadline_passed=deadline_passed, gating=gating)
            if outcome != "raced":
                return outcome
        return None

    async def _finalize_once(
        self, run_id: str, now: datetime, *, deadline_passed: bool, gating: Mapping[str, bool]
    ) -> RunState | Literal["raced"] | None:
        async with self._engine.begin() as conn:
            state = await conn.scalar(select(runs.c.state).where(runs.c.run_id == run_id))
            if state not in (RunState.RUNNING.value, RunState.INCOMPLETE.value):
                return None
            rows = (
                await conn.execute(
                    select(pairs.c.account_id, pairs.c.service, pairs.c.evidence_done_at)
                    .where(pairs.c.run_id == run_id, pairs.c.planned.is_(True))
                    .order_by(pairs.c.account_id, pairs.c.service)
                )
            ).all()
            missing = [
                PlannedCheck(account_id=r.account_id, service=Service(r.service))
                for r in rows
                if r.evidence_done_at is None
            ]
            if missing and (state == RunState.INCOMPLETE.value or not deadline_passed):
                return None  # still waiting, or INCOMPLETE and still missing something
            counts = await self._status_counts(conn, run_id)
            verdicts = control_verdicts(counts, {Service(r.service) for r in rows}, missing, gating)
            by_status = {s.value: 0 for s in Status}
            for row in counts:
                by_status[row.status.value] += row.count
            new_state = RunState.INCOMPLETE if missing else RunState.COMPLETE
            result = await conn.execute(
                update(runs)
                # Only from the state read above: a concurrent finalisation makes this update match nothing.
                # INCOMPLETE -> COMPLETE happens when the missing results arrive late (after an outage).
                .where(runs.c.run_id == run_id, runs.c.state == state)
                .values(
                    state=new_state.value,
                    completed_at=now,
                    controls={c.value: v.model_dump(mode="json") for c, v in sorted(verdicts.items())},
                    missing=[m.model_dump(mode="json") for m in missing],
                    findings_total=sum(by_status.values()),
                    findings_by_status=by_status,
                    completion_published=False,
                )
            )
            return new_state if result.rowcount == 1 else "raced"

    @staticmethod
    async def _status_counts(conn: AsyncConnection, run_id: str) -> list[StatusCount]:
        rows = await conn.execute(
            select(findings.c.check_id, findings.c.status, func.count().label("n"))
            .where(findings.c.run_id == run_id)
            .group_by(findings.c.check_id, findings.c.status)
            .order_by(findings.c.check_id, findings.c.status)
        )
        return [StatusCount(r.check_id, Status(r.status), int(r.n)) for r in rows]

    async def mark_published(self, run_id: str, state: RunState | None = None) -> None:
        """The run's RunCompleted is published; with `state`, only while the run is still in that state (a run that
        changed state meanwhile, INCOMPLETE -> COMPLETE, still owes the new one)."""
        query = update(runs).where(runs.c.run_id == run_id)
        if state is not None:
            query = query.where(runs.c.state == state.value)
        async with self._engine.begin() as conn:
            await conn.execute(query.values(completion_published=True))

    # --- requests coalesced into runs in flight -----------------------------------------------

    async def save_join(self, joined: RunJoined, published: RunState | None = None) -> None:
        """Record a request that joined a run (idempotent; the run may not be stored yet). `published`: the run's
        RunCompleted in that state was already sent to it (a request joining a final run is answered first)."""
        insert = self._insert(run_requests).values(
            run_id=joined.run_id,
            request_id=joined.request_id,
            tenant=joined.tenant,
            requested_by=joined.requested_by,
            joined_at=joined.joined_at,
            published_state=published.value if published is not None else None,
        )
        if published is None:
            insert = insert.on_conflict_do_nothing(index_elements=["run_id", "request_id"])
        else:
            insert = insert.on_conflict_do_update(
                index_elements=["run_id", "request_id"], set_={"published_state": published.value}
            )
        async with self._engine.begin() as conn:
            await conn.execute(insert)

    async def joined_state(self, run_id: str, request_id: str) -> tuple[bool, RunState | None]:
        """(whether the request's join is recorded, the run state last published to it)."""
        query = select(run_requests.c.published_state).where(
            run_requests.c.run_id == run_id, run_requests.c.request_id == request_id
        )
        async with self._reader.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is None:
            return False, None
        return True, RunState(row.published_state) if row.published_state else None

    async def owed_joiners(self, run_id: str) -> list[tuple[str, str | None]]:
        """(request_id, tenant) of the requests that joined this final run and are owed its current RunCompleted."""
        query = (
            select(run_requests.c.request_id, run_requests.c.tenant)
            .select_from(run_requests.join(runs, runs.c.run_id == run_requests.c.run_id))
            .where(run_requests.c.run_id == run_id, runs.c.state.in_(_FINAL_STATES), _owed_joiner())
            .order_by(run_requests.c.request_id)
        )
        async with self._reader.connect() as conn:
            return [(r.request_id, r.tenant) for r in (await conn.execute(query)).all()]

    async def mark_joiners_published(self, run_id: str, request_ids: list[str], state: RunState) -> None:
        async with self._engine.begin() as conn:
            for start in range(0, len(request_ids), 500):
                await conn.execute(
                    update(run_requests)
                    .where(
                        run_requests.c.run_id == run_id,
                        run_requests.c.request_id.in_(request_ids[start : start + 500]),
                    )
                    .values(published_state=state.value)
                )

    # --- dead letters -------------------------------------------------------------------------

    async def save_dead_letter(self, letter: DeadLetter, now: datetime) -> bool:
        """Keep a dead letter (idempotent: the same letter delivered twice is one row). True when it is new."""
        ident = "|".join(
            (letter.consumer, letter.subject, str(letter.stream_sequence), letter.reason, letter.payload_excerpt)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(
                self._insert(dead_letters)
                .values(
                    letter_id=hashlib.sha256(ident.encode()).hexdigest(),
                    consumer=letter.consumer,
                    subject=letter.subject,
                    reason=letter.reason,
                    stream_sequence=letter.stream_sequence,
                    num_delivered=letter.num_delivered or 0,
                    payload_excerpt=letter.payload_excerpt,
                    dead_lettered_at=letter.dead_lettered_at,
                    stored_at=now,
                )
                .on_conflict_do_nothing(index_elements=["letter_id"])
            )
            return bool(result.rowcount)

    async def dead_letter_rows(self, consumer: str | None = None) -> list[DeadLetter]:
        query = select(dead_letters).order_by(dead_letters.c.dead_lettered_at, dead_letters.c.letter_id)
        if consumer is not None:
            query = query.where(dead_letters.c.consumer == consumer)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            DeadLetter(
                consumer=r.consumer,
                subject=r.subject,
                reason=r.reason,
                stream_sequence=r.stream_sequence,
                num_delivered=r.num_delivered,
                payload_excerpt=r.payload_excerpt,
                dead_lettered_at=r.dead_lettered_at,
            )
            for r in rows
        ]

    # --- manifests and their hash chain ---------------------------------------------------------

    async def append_manifests(
        self, run_id: str, now: datetime, build: ManifestBuilder, *, genesis: str, in_database_only: bool
    ) -> list[ManifestRecord]:
        """Once the run is final (COMPLETE or INCOMPLETE): for each account with evidence objects that no manifest
        lists yet, append a manifest to the account's chain. One transaction per account: the chain head is locked
        (PostgreSQL: SELECT … FOR UPDATE; SQLite: BEGIN IMMEDIATE) and advanced with a conditional UPDATE, and
        (account_id, previous_sha256) is unique, so concurrent writers cannot fork the chain.

        `in_database_only`: no bucket; the manifest is recorded as stored ("database") at once.
        """
        async with self._reader.connect() as conn:
            run = (
                await conn.execute(
                    select(runs.c.state, runs.c.request_id, runs.c.requested_at).where(runs.c.run_id == run_id)
                )
            ).one_or_none()
            if run is None or run.state not in _FINAL_STATES:
                return []
            accounts = list(
                (
                    await conn.scalars(
                        select(pairs.c.account_id)
                        .where(
                            pairs.c.run_id == run_id,
                            pairs.c.planned.is_(True),
                            pairs.c.evidence_done_at.is_not(None),
                            pairs.c.manifest_sequence.is_(None),
                        )
                        .distinct()
                        .order_by(pairs.c.account_id)
                    )
                ).all()
            )
        appended = []
        for account_id in accounts:
            record = await self._append_manifest(
                run_id, account_id, run.request_id, run.requested_at, now, build, genesis, in_database_only
            )
            if record is not None:
                appended.append(record)
        return appended

    async def _append_manifest(
        self,
        run_id: str,
        account_id: str,
        request_id: str,
        requested_at: datetime,
        now: datetime,
        build: ManifestBuilder,
        genesis: str,
        in_database_only: bool,
    ) -> ManifestRecord | None:
        async with self._engine.begin() as conn:
            await conn.execute(
                self._insert(chain_heads)
                .values(account_id=account_id, sequence=0, sha256=genesis, key=None, updated_at=now)
                .on_conflict_do_nothing(index_elements=["account_id"])
            )
            head = (
                await conn.execute(select(chain_heads).where(chain_heads.c.account_id == account_id).with_for_update())
            ).one()
            rows = (
                await conn.execute(
                    select(pairs)
                    .where(pairs.c.run_id == run_id, pairs.c.account_id == account_id, pairs.c.planned.is_(True))
                    .order_by(pairs.c.service)
                )
            ).all()
            new = [r for r in rows if r.evidence_done_at is not None and r.manifest_sequence is None]
            if not new:
                return None  # another writer listed them first
            earlier = any(r.manifest_sequence is not None for r in rows)
            sequence = int(head.sequence) + 1
            draft = ManifestDraft(
                account_id=account_id,
                sequence=sequence,
                run_id=run_id,
                request_id=request_id,
                requested_at=requested_at,
                supplements=earlier,
                objects=[
                    ManifestObjectRow(
                        Service(r.service),
                        r.evidence_key,
                        r.evidence_sha256,
                        int(r.evidence_size),
                        r.evidence_version_id,
                    )
                    for r in new
                ],
                missing_services=[Service(r.service) for r in rows if r.evidence_done_at is None],
                population={r.service: dict(r.population or {}) for r in new},
                previous_sha256=head.sha256,
                previous_key=head.key,
            )
            key, body, sha256 = build(draft)
            try:
                await conn.execute(
                    manifests.insert().values(
                        account_id=account_id,
                        sequence=sequence,
                        run_id=run_id,
                        key=key,
                        sha256=sha256,
                        previous_sha256=head.sha256,
                        size=len(body),
                        body=body,
                        created_at=now,
                        location="database" if in_database_only else None,
                        uploaded_at=now if in_database_only else None,
                    )
                )
            except IntegrityError as exc:  # (account, previous) or (account, sequence) taken: another writer won
                raise ChainConflict(f"the manifest chain of account {account_id} moved; retry") from exc
            moved = await conn.execute(
                update(chain_heads)
                .where(chain_heads.c.account_id == account_id, chain_heads.c.sequence == head.sequence)
                .values(sequence=sequence, sha256=sha256, key=key, updated_at=now)
            )
            if moved.rowcount != 1:
                raise ChainConflict(f"the manifest chain of account {account_id} moved; retry")
            await conn.execute(
                update(pairs)
                .where(
                    pairs.c.run_id == run_id,
                    pairs.c.account_id == account_id,
                    pairs.c.service.in_([r.service for r in new]),
                )
                .values(manifest_sequence=sequence)
            )
        log.info("manifest_appended", run_id=run_id, account_id=account_id, sequence=sequence, key=key, sha256=sha256)
        return ManifestRecord(
            account_id,
            sequence,
            run_id,
            key,
            sha256,
            body,
            requested_at,
            "database" if in_database_only else None,
            None,
        )

    async def manifests_sealed(self, run_id: str) -> bool:
        """Every evidence object of the run is listed in a manifest, and every such manifest is stored (uploaded, or
        kept in the database when there is no bucket)."""
        unlisted = select(pairs.c.run_id).where(
            pairs.c.run_id == run_id,
            pairs.c.planned.is_(True),
            pairs.c.evidence_done_at.is_not(None),
            pairs.c.manifest_sequence.is_(None),
        )
        unstored = select(manifests.c.run_id).where(manifests.c.run_id == run_id, manifests.c.uploaded_at.is_(None))
        async with self._reader.connect() as conn:
            pending = (await conn.execute(select(unlisted.exists() | unstored.exists()))).scalar_one()
        return not pending

    async def pending_manifests(self, run_id: str | None = None) -> list[ManifestRecord]:
        """Manifests not yet uploaded (all runs, or one), in chain order."""
        query = (
            select(manifests, runs.c.requested_at)
            .select_from(manifests.join(runs, runs.c.run_id == manifests.c.run_id))
            .where(manifests.c.uploaded_at.is_(None))
        )
        if run_id is not None:
            query = query.where(manifests.c.run_id == run_id)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query.order_by(manifests.c.account_id, manifests.c.sequence))).all()
        return [_manifest_record(r._mapping) for r in rows]

    async def mark_manifest_uploaded(
        self, account_id: str, sequence: int, *, location: str, version_id: str | None, now: datetime
    ) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(
                update(manifests)
                .where(
                    manifests.c.account_id == account_id,
                    manifests.c.sequence == sequence,
                    manifests.c.uploaded_at.is_(None),
                )
                .values(location=location, version_id=version_id, uploaded_at=now)
            )

    async def manifest_records(self, account_id: str | None = None) -> list[ManifestRecord]:
        """Every manifest in chain order (per account)."""
        query = select(manifests, runs.c.requested_at).select_from(
            manifests.join(runs, runs.c.run_id == manifests.c.run_id)
        )
        if account_id is not None:
            query = query.where(manifests.c.account_id == account_id)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query.order_by(manifests.c.account_id, manifests.c.sequence))).all()
        return [_manifest_record(r._mapping) for r in rows]

    async def chain_heads(self) -> dict[str, ChainHead]:
        async with self._reader.connect() as conn:
            rows = (await conn.execute(select(chain_heads))).all()
        return {r.account_id: ChainHead(r.account_id, int(r.sequence), r.sha256, r.key) for r in rows}

    async def stored_objects(self, account_id: str | None = None, location: str | None = None) -> dict[str, bytes]:
        """Evidence documents and manifests kept in the database, by key (verification without a bucket);
        `location="database"`: only those that never went to a bucket."""
        result: dict[str, bytes] = {}
        async with self._reader.connect() as conn:
            for table in (documents, manifests):
                query = select(table.c.key, table.c.body)
                if account_id is not None:
                    query = query.where(table.c.account_id == account_id)
                if location is not None:
                    query = query.where(table.c.location == location)
                for row in await conn.execute(query):
                    result[row.key] = bytes(row.body)
        return result

    async def runs_without_manifests(self) -> list[str]:
        """Final runs with evidence that no manifest lists yet (a crash between finalising and sealing)."""
        query = (
            select(pairs.c.run_id)
            .select_from(pairs.join(runs, runs.c.run_id == pairs.c.run_id))
            .where(
                runs.c.state.in_(_FINAL_STATES),
                pairs.c.planned.is_(True),
                pairs.c.evidence_done_at.is_not(None),
                pairs.c.manifest_sequence.is_(None),
            )
            .group_by(pairs.c.run_id, runs.c.requested_at)
            .order_by(runs.c.requested_at, pairs.c.run_id)
        )
        async with self._reader.connect() as conn:
            return [str(r) for r in (await conn.scalars(query)).all()]

    async def open_run_ids(self) -> set[str]:
        """Runs not final yet (their evidence is not in a manifest until they are)."""
        query = select(runs.c.run_id).where(runs.c.state.not_in(_FINAL_STATES))
        async with self._reader.connect() as conn:
            return {str(r) for r in (await conn.scalars(query)).all()}

    async def unlisted_evidence_keys(self) -> set[str]:
        """Evidence keys of planned pairs not yet in any manifest (the run is open, or about to be sealed). Evidence of
        a pair no plan listed is never sealed, so verification reports it."""
        query = select(pairs.c.evidence_key).where(
            pairs.c.evidence_key.is_not(None), pairs.c.manifest_sequence.is_(None), pairs.c.planned.is_(True)
        )
        async with self._reader.connect() as conn:
            return {str(k) for k in (await conn.scalars(query)).all()}

    # --- reads --------------------------------------------------------------------------------

    async def ready_pairs(self, run_id: str) -> list[PairKey]:
        """Pairs of a run whose chunks are all stored and whose evidence is not yet done."""
        join = and_(
            *(getattr(chunks.c, k) == getattr(pairs.c, k) for k in PAIR_KEY),
            chunks.c.attempt == pairs.c.attempt,
            chunks.c.chunk_index < pairs.c.chunk_count,
        )
        query = (
            select(pairs.c.account_id, pairs.c.service)
            .select_from(pairs.join(chunks, join))
            .where(pairs.c.run_id == run_id, pairs.c.evidence_done_at.is_(None))
            .group_by(pairs.c.account_id, pairs.c.service, pairs.c.chunk_count)
            .having(func.count() >= pairs.c.chunk_count)
            .order_by(pairs.c.account_id, pairs.c.service)
        )
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [PairKey(run_id, r.account_id, Service(r.service)) for r in rows]

    async def pair_material(self, pair: PairKey) -> PairMaterial | None:
        """What the pair's evidence document is built from; None while the run's plan is not stored."""
        ident = {"run_id": pair.run_id, "account_id": pair.account_id, "service": pair.service.value}
        async with self._reader.connect() as conn:
            run = (
                await conn.execute(select(runs.c.request_id, runs.c.requested_at).where(runs.c.run_id == pair.run_id))
            ).one_or_none()
            if run is None:
                return None
            meta = (await conn.execute(select(pairs).where(_pair_where(pairs, ident)))).one()
            rows = await conn.execute(
                select(findings)
                .where(_pair_where(findings, ident))
                .order_by(findings.c.check_id, findings.c.resource_id, findings.c.finding_id)
            )
            found = [finding_json(r._mapping) for r in rows]
        return PairMaterial(
            run_id=pair.run_id,
            request_id=run.request_id,
            requested_at=run.requested_at,
            account_id=pair.account_id,
            service=pair.service,
            collector_version=meta.collector_version,
            population=dict(meta.population or {}),
            metrics=dict(meta.metrics or {}),
            api_calls=dict(meta.api_calls or {}),
            regions=list(meta.regions or []),
            started_at=meta.started_at,
            finished_at=meta.finished_at,
            findings=found,
        )

    async def overdue_runs(self, now: datetime) -> list[str]:
        query = (
            select(runs.c.run_id)
            .where(runs.c.state == RunState.RUNNING.value, runs.c.deadline_at <= now)
            .order_by(runs.c.deadline_at)
        )
        async with self._reader.connect() as conn:
            return list((await conn.scalars(query)).all())

    async def planned_at_of(self, run_id: str) -> datetime | None:
        """When the run was planned (None for an unknown run)."""
        async with self._reader.connect() as conn:
            value = await conn.scalar(select(runs.c.planned_at).where(runs.c.run_id == run_id))
        return cast(datetime | None, value)

    async def deadline_of(self, run_id: str) -> datetime:
        async with self._reader.connect() as conn:
            value = await conn.scalar(select(runs.c.deadline_at).where(runs.c.run_id == run_id))
        if value is None:
            raise KeyError(run_id)
        return cast(datetime, value)

    async def unpublished_runs(self) -> list[str]:
        """Final runs that still owe a RunCompleted: to their own request, or to a request that joined them."""
        owes_joiner = (
            select(run_requests.c.run_id)
            .select_from(run_requests.join(runs, runs.c.run_id == run_requests.c.run_id))
            .where(runs.c.state.in_(_FINAL_STATES), _owed_joiner())
            .distinct()
        )
        query = (
            select(runs.c.run_id)
            .where(
                runs.c.state.in_(_FINAL_STATES),
                or_(runs.c.completion_published.is_(False), runs.c.run_id.in_(owes_joiner)),
            )
            .order_by(runs.c.completed_at)
        )
        async with self._reader.connect() as conn:
            return list((await conn.scalars(query)).all())

    async def pending_completion(self, run_id: str, *, published_too: bool = False) -> RunCompleted | None:
        """The RunCompleted of a finalised run whose completion was not yet published (with `published_too`: also
        when it was), rebuilt from the row."""
        query = select(runs).where(runs.c.run_id == run_id, runs.c.state.in_(_FINAL_STATES))
        if not published_too:
            query = query.where(runs.c.completion_published.is_(False))
        async with self._reader.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        if row is None:
            return None
        return RunCompleted(
            run_id=row.run_id,
            request_id=row.request_id,
            state=RunState.COMPLETE if row.state == RunState.COMPLETE.value else RunState.INCOMPLETE,
            controls=row.controls or {},
            missing=row.missing or [],
            findings_total=row.findings_total or 0,
            findings_by_status=row.findings_by_status or {},
            completed_at=row.completed_at,
            tenant=row.tenant,
        )

    async def sync_accounts(self, registered: dict[str, tuple[str, str]], now: datetime) -> int:
        """Mirror the registry (account id -> (name, access kind)); returns the rows written or changed."""
        changed = 0
        async with self._engine.begin() as conn:
            rows = {r.account_id: r for r in (await conn.execute(select(accounts))).all()}
            for account_id, (name, access) in sorted(registered.items()):
                row = rows.get(account_id)
                if row is None:
                    await conn.execute(
                        accounts.insert().values(
                            account_id=account_id, name=name, access=access, registered=True, updated_at=now
                        )
                    )
                elif (row.name, row.access, row.registered) != (name, access, True):
                    await conn.execute(
                        accounts.update()
                        .where(accounts.c.account_id == account_id)
                        .values(name=name, access=access, registered=True, updated_at=now)
                    )
                else:
                    continue
                changed += 1
            for account_id, row in rows.items():
                if account_id not in registered and row.registered:
                    await conn.execute(
                        accounts.update()
                        .where(accounts.c.account_id == account_id)
                        .values(registered=False, updated_at=now)
                    )
                    changed += 1
        return changed

    async def account_names(self) -> dict[str, str]:
        async with self._reader.connect() as conn:
            return {r.account_id: r.name for r in (await conn.execute(select(accounts.c.account_id, accounts.c.name)))}

    async def find_run(
        self, *, run_id: str | None = None, request_id: str | None = None, account_id: str | None = None
    ) -> StoredRun | None:
        """A run by id, by request id (the run it led, or the run it joined), or the latest one (optionally among runs
        that planned `account_id`)."""
        query = select(runs)
        if run_id is not None:
            query = query.where(runs.c.run_id == run_id)
        if request_id is not None:
            joined = select(run_requests.c.run_id).where(run_requests.c.request_id == request_id)
            query = query.where(or_(runs.c.request_id == request_id, runs.c.run_id.in_(joined)))
        if account_id is not None:
            query = query.where(
                select(pairs.c.run_id)
                .where(pairs.c.run_id == runs.c.run_id, pairs.c.account_id == account_id, pairs.c.planned.is_(True))
                .exists()
            )
        query = query.order_by(runs.c.requested_at.desc(), runs.c.planned_at.desc(), runs.c.run_id.desc()).limit(1)
        async with self._reader.connect() as conn:
            row = (await conn.execute(query)).one_or_none()
        return None if row is None else _stored_run(row._mapping)

    async def list_runs(
        self,
        *,
        account_id: str | None = None,
        limit: int = 20,
        before: datetime | None = None,
        before_run_id: str | None = None,
    ) -> list[RunRow]:
        """Runs, newest first (requested_at, then run_id): each with the accounts it planned and its findings counts
        (final runs). (`before`, `before_run_id`) is the last run of the previous page: a keyset cursor, so runs
        requested at the same instant are neither skipped nor repeated."""
        query = select(runs)
        if account_id is not None:
            query = query.where(
                select(pairs.c.run_id)
                .where(pairs.c.run_id == runs.c.run_id, pairs.c.account_id == account_id, pairs.c.planned.is_(True))
                .exists()
            )
        if before is not None and before_run_id is not None:
            query = query.where(
                or_(runs.c.requested_at < before, and_(runs.c.requested_at == before, runs.c.run_id < before_run_id))
            )
        elif before is not None:
            query = query.where(runs.c.requested_at < before)
        query = query.order_by(runs.c.requested_at.desc(), runs.c.run_id.desc()).limit(limit)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
            ids = [r.run_id for r in rows]
            planned = (
                await conn.execute(
                    select(pairs.c.run_id, pairs.c.account_id)
                    .where(pairs.c.run_id.in_(ids), pairs.c.planned.is_(True))
                    .distinct()
                    .order_by(pairs.c.run_id, pairs.c.account_id)
                )
            ).all()
        accounts: dict[str, list[str]] = {}
        for p in planned:
            accounts.setdefault(p.run_id, []).append(p.account_id)
        return [
            RunRow(
                run=_stored_run(r._mapping),
                accounts=accounts.get(r.run_id, []),
                findings_total=int(r.findings_total or 0),
                findings_by_status=dict(r.findings_by_status or {}),
            )
            for r in rows
        ]

    async def resource_statuses(self, run_id: str, account_id: str) -> dict[tuple[str, str], ResourceStatus]:
        """(check_id, resource_id) → status, control and region of one account's findings in one run."""
        query = select(
            findings.c.check_id, findings.c.resource_id, findings.c.status, findings.c.control, findings.c.region
        ).where(findings.c.run_id == run_id, findings.c.account_id == account_id)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {
            (r.check_id, r.resource_id): ResourceStatus(Status(r.status), Soc2Control(r.control), r.region)
            for r in rows
        }

    async def evidence_services(self, run_id: str, account_id: str) -> set[Service]:
        """The services of the account whose evidence the run holds (all their chunks stored)."""
        query = select(pairs.c.service).where(
            pairs.c.run_id == run_id, pairs.c.account_id == account_id, pairs.c.evidence_done_at.is_not(None)
        )
        async with self._reader.connect() as conn:
            return {Service(s) for s in (await conn.scalars(query)).all()}

    async def service_results(self, run_id: str, account_id: str | None = None) -> list[ServiceResult]:
        """One result per planned pair of the run: its summary and where its evidence lives."""
        query = select(pairs).where(pairs.c.run_id == run_id, pairs.c.planned.is_(True))
        if account_id is not None:
            query = query.where(pairs.c.account_id == account_id)
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query.order_by(pairs.c.account_id, pairs.c.service))).all()
        return [
            ServiceResult(
                account_id=r.account_id,
                service=Service(r.service),
                complete=r.evidence_done_at is not None,
                population=r.population or {},
                metrics=r.metrics or {},
                api_calls=r.api_calls or {},
                evidence_key=r.evidence_key,
                evidence_sha256=r.evidence_sha256,
                evidence_location=r.evidence_location,
            )
            for r in rows
        ]

    async def findings_page(
        self, run_id: str, *, account_id: str | None, offset: int, limit: int
    ) -> tuple[int, list[Finding]]:
        """The total and one slice of a run's findings: FAIL, ERROR, PASS, then check_id and resource_id."""
        where = [findings.c.run_id == run_id]
        if account_id is not None:
            where.append(findings.c.account_id == account_id)
        query = (
            select(findings)
            .where(*where)
            .order_by(
                _STATUS_RANK,
                findings.c.check_id,
                findings.c.resource_id,
                findings.c.account_id,
                findings.c.finding_id,
            )
            .offset(offset)
            .limit(limit)
        )
        async with self._reader.connect() as conn:
            total = await conn.scalar(select(func.count()).select_from(findings).where(*where))
            rows = await conn.execute(query)
            page = [_finding(r._mapping) for r in rows]
        return int(total or 0), page

    async def count_rows(self, run_id: str) -> dict[str, int]:
        """Rows per table for one run (operators' sanity checks and tests)."""
        result: dict[str, int] = {}
        async with self._reader.connect() as conn:
            for table in (runs, pairs, chunks, findings, documents, manifests):
                n = await conn.scalar(select(func.count()).select_from(table).where(table.c.run_id == run_id))
                result[table.name] = int(n or 0)
        return result

    async def evidence_body(self, pair: PairKey) -> bytes | None:
        ident = {"run_id": pair.run_id, "account_id": pair.account_id, "service": pair.service.value}
        async with self._reader.connect() as conn:
            body = await conn.scalar(select(documents.c.body).where(_pair_where(documents, ident)))
        return bytes(body) if body is not None else None


@dataclass(frozen=True, slots=True)
class _ChunkStatements:
    """The statements of `save_chunk`, built once per store (building them per chunk cost ~3 ms of ~20)."""

    progress: Any
    pair_upsert: Any
    chunk_insert: Any
    findings_insert: Any

    @classmethod
    def build(cls, insert: Callable[[Table], Any]) -> _ChunkStatements:
        upsert = insert(pairs)
        upsert = upsert.on_conflict_do_update(
            index_elements=list(PAIR_KEY),
            set_={name: upsert.excluded[name] for name in _PAIR_METADATA},
            # The first chunk sets the pair's summary; a later scan attempt (an earlier one failed part-way)
            # replaces it until one attempt's set is complete (sealed): that set is the pair's evidence.
            where=or_(
                pairs.c.chunk_count.is_(None),
                and_(pairs.c.sealed.is_(False), pairs.c.attempt < upsert.excluded.attempt),
            ),
        )
        # One round trip: the pair's row and the count of its current attempt's stored chunks.
        received = (
            select(func.count())
            .select_from(chunks)
            .where(
                *(chunks.c[name] == pairs.c[name] for name in PAIR_KEY),
                chunks.c.attempt == pairs.c.attempt,
                chunks.c.chunk_index < pairs.c.chunk_count,
            )
            .scalar_subquery()
        )
        progress = select(pairs.c.chunk_count, pairs.c.evidence_done_at, received.label("received")).where(
            *(pairs.c[name] == bindparam(name) for name in PAIR_KEY)
        )
        return cls(
            progress=progress,
            pair_upsert=upsert,
            chunk_insert=insert(chunks).on_conflict_do_nothing(index_elements=[*PAIR_KEY, "attempt", "chunk_index"]),
            findings_insert=insert(findings).on_conflict_do_nothing(index_elements=["finding_id"]),
        )


def _owed_joiner() -> Any:
    """A joined request (row of evidence_run_requests joined with its run) not yet sent the run's current state."""
    return or_(run_requests.c.published_state.is_(None), run_requests.c.published_state != runs.c.state)


def _pair_where(table: Table, key: Mapping[str, str]) -> Any:
    return and_(*(table.c[name] == key[name] for name in PAIR_KEY))


def _finding_row(finding: Finding) -> dict[str, Any]:
    return {
        "finding_id": finding.finding_id,
        "run_id": finding.run_id,
        "account_id": finding.account_id,
        "service": finding.service.value,
        "region": finding.region,
        "control": finding.control.value,
        "check_id": finding.check_id,
        "resource_type": finding.resource_type,
        "resource_arn": finding.resource_arn,
        "resource_id": finding.resource_id,
        "status": finding.status.value,
        "severity": finding.severity.value,
        "title": finding.title,
        "summary": finding.summary,
        "details": finding.details,
        "remediation": finding.remediation,
        "observed_at": finding.observed_at,
        "collector_version": finding.collector_version,
    }


def _stored_run(row: Mapping[Any, Any]) -> StoredRun:
    return StoredRun(
        run_id=row["run_id"],
        request_id=row["request_id"],
        requested_by=row["requested_by"],
        requested_at=row["requested_at"],
        state=RunState(row["state"]),
        completed_at=row["completed_at"],
        controls={Soc2Control(k): ControlVerdict.model_validate(v) for k, v in (row["controls"] or {}).items()},
        missing=[PlannedCheck.model_validate(m) for m in row["missing"] or []],
    )


def _manifest_record(row: Mapping[Any, Any]) -> ManifestRecord:
    return ManifestRecord(
        account_id=row["account_id"],
        sequence=int(row["sequence"]),
        run_id=row["run_id"],
        key=row["key"],
        sha256=row["sha256"],
        body=bytes(row["body"]),
        requested_at=row["requested_at"],
        location=row["location"],
        version_id=row["version_id"],
    )


def json_time(value: datetime) -> str:
    """A UTC datetime as pydantic writes it in JSON mode (`2026-03-14T23:31:01.5Z` style: 'Z', microseconds only
    when non-zero)."""
    text = value.astimezone(UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def finding_json(row: Mapping[Any, Any]) -> dict[str, Any]:
    """A findings row as `Finding.model_dump(mode="json")` would give it (values were validated on the way in)."""
    return {
        "finding_id": row["finding_id"],
        "run_id": row["run_id"],
        "account_id": row["account_id"],
        "region": row["region"],
        "service": row["service"],
        "control": row["control"],
        "check_id": row["check_id"],
        "resource_type": row["resource_type"],
        "resource_arn": row["resource_arn"],
        "resource_id": row["resource_id"],
        "status": row["status"],
        "severity": row["severity"],
        "title": row["title"],
        "summary": row["summary"],
        "details": row["details"],
        "remediation": row["remediation"],
        "observed_at": json_time(row["observed_at"]),
        "collector_version": row["collector_version"],
    }


def _finding(row: Mapping[Any, Any]) -> Finding:
    return Finding.model_validate(dict(row))


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, synchronous=FULL and a busy timeout on every connection; BEGIN IMMEDIATE for write transactions."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # SQLAlchemy emits BEGIN itself (below)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        readonly = conn.get_execution_options().get(_READONLY, False)
        conn.exec_driver_sql("BEGIN" if readonly else "BEGIN IMMEDIATE")
