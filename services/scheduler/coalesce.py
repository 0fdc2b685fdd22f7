"""Coalescing: identical run requests (same tenant, accounts, services and regions: the run's *scope*) share the
run in flight instead of scanning again. Everything lives in the JetStream key-value bucket KUSHIM_COALESCE and
every change is a create-only write or a compare-and-set on the key's revision, so any number of scheduler replicas
and redeliveries agree:

- `request.<run id>` (the run id a request would lead is itself a hash of tenant/request_id) records each request's
  decision, durably: `lead` (its own run) or `join` (another run). A request's decision is written before anyone can
  depend on it, and a redelivered request replays it (its messages carry the same Nats-Msg-Ids): one request, one
  run, one RunCompleted. A lead becomes `claimed` once the scope's claim names its run; only an unclaimed lead may
  still turn into a join (no other request can have joined it yet).
- `scope.<sha256 of the scope>` claims the scope for the run in flight, with the run's `deadline_at`. Requests join
  only a *committed* claim (its leader's record says lead, claimed); a claim whose deadline passed more than
  `STALE_GRACE_SECONDS` ago (its completion never came: the evidence service down) or whose leader turned into a
  joiner is dead and is taken over, never joined.
- The scheduler's durable consumers of kushim.runs.completed(.<tenant>) release the claim when the run completes
  (deleting it only while it still names that run): completions published while no scheduler runs are acted on
  when one starts, so a finished run is never joined for long. A request joining in between (the run completed,
  its release not processed yet) is answered at once with the run's result.

Claims are only made after everything that can reject a request (accounts, tenant, region discovery) succeeded,
immediately before the plan is published.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

import structlog
from faststream.nats import NatsBroker
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.scheduler.buckets import open_bucket
from shared import subjects
from shared.messages import Service

log = structlog.get_logger(__name__)

COALESCE_BUCKET = subjects.KV_COALESCE
COALESCE_TTL_SECONDS = 86_400.0
"""Keys are kept a day: a request redelivered within that time replays its decision. Claims end long before
(released by their run's completion, or dead after their deadline); the TTL only bounds what the bucket keeps."""
STALE_GRACE_SECONDS = 60.0
"""A claim is dead this long after its run's deadline (the evidence service finalises a run within seconds of it)."""
COMMIT_WAIT_SECONDS = 5.0
"""How long a request waits for a claim's leader to commit (one key-value write) before it retries later."""
_MAX_ROUNDS = 50
_WRONG_LAST_SEQUENCE = (10071, 10164)


class Role(StrEnum):
    LEAD = "lead"
    JOIN = "join"


@dataclass(frozen=True, slots=True)
class Decision:
    """What a request does: lead its own run (planned at `planned_at`, due at `deadline_at`) or join `run_id`."""

    role: Role
    run_id: str
    scope: str
    planned_at: str | None = None
    deadline_at: str | None = None
    claimed: bool = False

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Decision:
        data = json.loads(raw or b"{}")
        return cls(
            role=Role(data["role"]),
            run_id=str(data["run_id"]),
            scope=str(data["scope"]),
            planned_at=data.get("planned_at"),
            deadline_at=data.get("deadline_at"),
            claimed=bool(data.get("claimed", False)),
        )

    @property
    def planned(self) -> datetime:
        return datetime.fromisoformat(self.planned_at or "")

    @property
    def deadline(self) -> datetime:
        return datetime.fromisoformat(self.deadline_at or "")


@dataclass(frozen=True, slots=True)
class Claim:
    run_id: str
    deadline_at: str
    planned_at: str | None = None  # None: a claim written before the join window existed

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes | None) -> Claim:
        data = json.loads(raw or b"{}")
        planned = data.get("planned_at")
        return cls(run_id=str(data["run_id"]), deadline_at=str(data["deadline_at"]), planned_at=planned)


def scope_key(tenant: str | None, regions: Mapping[str, Sequence[str]], services: Sequence[Service]) -> str:
    """The scope of a run: its tenant, accounts, services and each account's regions, order-independent."""
    scope = {
        "tenant": tenant or "",
        "accounts": sorted(regions),
        "services": sorted(s.value for s in services),
        "regions": {account: sorted(set(names)) for account, names in sorted(regions.items())},
    }
    return hashlib.sha256(json.dumps(scope, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def request_key(run_id: str) -> str:
    return f"request.{run_id}"


def claim_key(scope: str) -> str:
    return f"scope.{scope}"


def _wrong_last(exc: Exception) -> bool:
    return isinstance(exc, KeyWrongLastSequenceError) or (
        isinstance(exc, APIError) and exc.err_code in _WRONG_LAST_SEQUENCE
    )


class Coalescer:
    """Decides, for each request, whether it leads a run or joins the identical one in flight; releases claims."""

    def __init__(
        self,
        broker: NatsBroker,
        *,
        window_seconds: float = 30.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        replicas: int = 1,
    ) -> None:
        """`replicas`: the bucket's copies when this creates it (KUSHIM_STREAM_REPLICAS)."""
        self._broker = broker
        self._replicas = replicas
        self._window = timedelta(seconds=window_seconds)
        self._clock = clock
        self._kv: KeyValue | None = None

    async def bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(
                self._broker,
                COALESCE_BUCKET,
                description="Coalescing: each request's decision (lead or join) and the claim of each scope in flight.",
                ttl=COALESCE_TTL_SECONDS,
                replicas=self._replicas,
            )
        return self._kv

    async def decide(self, *, run_id: str, scope: str, planned_at: datetime, deadline_at: datetime) -> Decision:
        """The request leading `run_id` (its own run) leads it, or joins the run in flight of the same scope. A
        request decided before (a redelivery) gets its recorded decision back, whatever happened since."""
        kv = await self.bucket()
        key = request_key(run_id)
        fresh = Decision(Role.LEAD, run_id, scope, planned_at.isoformat(), deadline_at.isoformat())
        holding = False  # this call made or found a claim naming run_id
        for _ in range(_MAX_ROUNDS):
            try:
                revision = await kv.create(key, fresh.encode())
                current = fresh
            except KeyWrongLastSequenceError:
                entry = await self._entry(kv, key)
                if entry is None:
                    continue
                current, revision = Decision.decode(entry[0]), entry[1]
            if current.role is Role.JOIN:
                if holding:  # another delivery of this request joined first: our claim must not be joined
                    await self._drop(kv, current.scope, run_id)
                return current
            if current.claimed:
                return current  # replay: the plan is (being) published; never claim again (the run may be over)
            # The recorded scope, not the one computed now: a redelivery after the account's regions changed must claim
            # (and later release) the scope its record names.
            holder = await self._claim(kv, current.scope, run_id, current.planned, current.deadline)
            holding = holder == run_id
            decided = replace(current, claimed=True) if holding else Decision(Role.JOIN, holder, current.scope)
            try:
                await kv.update(key, decided.encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another delivery of this request changed its record: follow what it says now
            return decided
        raise TimeoutError(f"could not settle the coalescing decision of {run_id}; retrying")

    async def release(self, run_id: str) -> bool:
        """The run completed: delete its scope's claim if it still names the run. True when a claim was released."""
        kv = await self.bucket()
        entry = await self._entry(kv, request_key(run_id))
        if entry is None:
            return False  # not a coalesced lead (coalescing off, or the record expired)
        decision = Decision.decode(entry[0])
        if decision.role is not Role.LEAD:
            return False
        return await self._drop(kv, decision.scope, run_id)

    async def _claim(self, kv: KeyValue, scope: str, run_id: str, planned_at: datetime, deadline_at: datetime) -> str:
        """Claim the scope for `run_id`; returns the run holding it (`run_id` itself, or a committed run in flight)."""
        key = claim_key(scope)
        mine = Claim(run_id, deadline_at.isoformat(), planned_at.isoformat()).encode()
        give_up = time.monotonic() + COMMIT_WAIT_SECONDS
        for _ in range(_MAX_ROUNDS * 10):
            try:
                await kv.create(key, mine)
                return run_id
            except KeyWrongLastSequenceError:
                pass
            entry = await self._entry(kv, key)
            if entry is None:
                continue  # released in between: create again
            claim, revision = Claim.decode(entry[0]), entry[1]
            if claim.run_id == run_id:
                return run_id  # our own claim (an earlier delivery of this request made it)
            state = await self._state(kv, claim)
            if state == "live":
                return claim.run_id
            if state == "dead":
                try:
                    await kv.update(key, mine, last=revision)
                except KeyWrongLastSequenceError:
                    continue
                log.warning("coalescing_claim_taken_over", run_id=run_id, previous_run_id=claim.run_id)
                return run_id
            if time.monotonic() > give_up:  # its leader stopped between claim and commit: its redelivery commits
                raise TimeoutError(f"the claim of run {claim.run_id} is not committed; retrying")
            await asyncio.sleep(0.02)
        raise TimeoutError(f"could not claim the scope of {run_id}; retrying")

    async def _state(self, kv: KeyValue, claim: Claim) -> str:
        """`live` (joinable), `dead` (stale, or its leader joined another run: take it over) or `pending` (its
        leader has not committed yet)."""
        now = self._clock()
        if datetime.fromisoformat(claim.deadline_at) + timedelta(seconds=STALE_GRACE_SECONDS) < now:
            return "dead"
        if claim.planned_at is None or datetime.fromisoformat(claim.planned_at) + self._window < now:
            # Past the join window: its scans may have read AWS long before this request was made ("I fixed it,
            # check again" must not get the old answer). A new run takes the claim over.
            return "dead"
        entry = await self._entry(kv, request_key(claim.run_id))
        if entry is None:
            return "dead"
        leader = Decision.decode(entry[0])
        if leader.role is not Role.LEAD or leader.run_id != claim.run_id:
            return "dead"
        return "live" if leader.claimed else "pending"

    async def _drop(self, kv: KeyValue, scope: str, run_id: str) -> bool:
        """Delete the scope's claim if (and only while) it names `run_id`."""
        key = claim_key(scope)
        for _ in range(_MAX_ROUNDS):
            entry = await self._entry(kv, key)
            if entry is None or Claim.decode(entry[0]).run_id != run_id:
                return False
            try:
                await kv.delete(key, last=entry[1])
            except Exception as exc:
                if _wrong_last(exc):
                    continue
                raise
            return True
        return False

    @staticmethod
    async def _entry(kv: KeyValue, key: str) -> tuple[bytes | None, int] | None:
        """(value, revision) of a key, None when it does not exist or was deleted."""
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if entry.revision is None:
            return None
        return entry.value, int(entry.revision)
