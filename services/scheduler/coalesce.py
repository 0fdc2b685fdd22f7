"""Coalescing: identical run requests (same accounts and services) while a run for them is in flight share that
run instead of scanning again. Claims live in the JetStream key-value bucket KUSHIM_COALESCE:

- `req.<hash of accounts and services>` → the run in flight (create-only: one leader, however many scheduler
  replicas race); `run.<run_id>` → that hash, so that the run's completion can release the claim.
- When a run completes (its first RunCompleted), the scheduler deletes both keys; the next identical request starts
  a new run. A missed completion is cleaned up by the bucket's TTL.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Sequence

import structlog
from faststream.nats import NatsBroker
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from shared.messages import Service

log = structlog.get_logger(__name__)

COALESCE_BUCKET = "KUSHIM_COALESCE"
COALESCE_TTL_SECONDS = 6 * 3600.0
"""A claim whose completion was never seen expires after this (far longer than a run's deadline)."""


def coalesce_key(accounts: Sequence[str], services: Sequence[Service]) -> str:
    scope = json.dumps({"accounts": sorted(accounts), "services": sorted(s.value for s in services)})
    return hashlib.sha256(scope.encode()).hexdigest()[:40]


class Coalescer:
    def __init__(self, broker: NatsBroker) -> None:
        self._broker = broker
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._broker.key_value(
                COALESCE_BUCKET,
                description="Runs in flight, by scope (identical requests join).",
                ttl=COALESCE_TTL_SECONDS,
            )
        return self._kv

    async def leader(self, scope: str, run_id: str) -> str:
        """The run that requests of this scope share: `run_id` itself when it leads (or already led), else the run
        in flight that it joins."""
        kv = await self._bucket()
        key = f"req.{scope}"
        try:
            await kv.create(key, run_id.encode())
        except KeyWrongLastSequenceError:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:  # released between our create and get: lead a new run
                await kv.put(key, run_id.encode())
            else:
                return (entry.value or b"").decode() or run_id
        await kv.put(f"run.{run_id}", scope.encode())
        return run_id

    async def release(self, run_id: str) -> None:
        """The run completed: identical requests from now on start a new run."""
        kv = await self._bucket()
        try:
            scope = (await kv.get(f"run.{run_id}")).value
        except KeyNotFoundError:
            return
        key = f"req.{(scope or b'').decode()}"
        try:
            entry = await kv.get(key)
            if (entry.value or b"").decode() == run_id:
                await kv.delete(key, last=entry.revision)
        except (KeyNotFoundError, KeyWrongLastSequenceError):
            pass  # already released, or already another run's
        with contextlib.suppress(KeyNotFoundError):
            await kv.delete(f"run.{run_id}")
        log.info("coalescing_released", run_id=run_id)
