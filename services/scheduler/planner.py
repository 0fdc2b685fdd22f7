"""Turns a RunRequested into a RunPlanned and one CheckRequested per (account, service)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import structlog
from faststream.nats import NatsBroker, NatsMessage

from services.scheduler.coalesce import Coalescer, Role, scope_key
from shared import subjects
from shared.consume import Delivery, Rejected
from shared.credentials import AccountAccess
from shared.messages import (
    CheckRequested,
    PlannedCheck,
    RunJoined,
    RunPlanned,
    RunRejected,
    RunRequested,
    Service,
    run_id_for,
)
from shared.nats import MAX_RUN_REQUEST_BYTES, publish_durable
from shared.settings import Settings

log = structlog.get_logger(__name__)

RegionResolver = Callable[[str], Awaitable[list[str]]]


class Planner:
    def __init__(
        self,
        *,
        broker: NatsBroker,
        settings: Settings,
        access: AccountAccess,
        regions: RegionResolver,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        coalescer: Coalescer | None = None,
    ) -> None:
        """`coalescer`: identical requests join the run in flight (None: every request plans its own run)."""
        self._broker = broker
        self._coalescer = coalescer
        self._settings = settings
        self._access = access
        self._regions = regions
        self._clock = clock

    async def _accounts(self, request: RunRequested, tenant: str | None) -> list[str]:
        """The accounts the request may scan; Rejected (before any scan) for an account it may not."""
        known = await self._access.known_accounts()
        asked = sorted(set(request.accounts)) if request.accounts else None
        if tenant is None:
            accounts = asked if asked is not None else sorted(known)
            unknown = [a for a in accounts if a not in known]
            if unknown:
                raise Rejected(
                    f"account(s) {', '.join(unknown)} are not registered with this Kushim "
                    f"(registered: {', '.join(sorted(known))}); nothing was scanned"
                )
            return accounts
        registry = self._access.registry()
        entry = registry.tenant(tenant) if registry is not None else None
        if entry is None:
            raise Rejected(f"tenant {tenant} is not in the account registry; nothing was scanned")
        allowed = set(entry.accounts) & known
        accounts = asked if asked is not None else sorted(allowed)
        outside = [a for a in accounts if a not in allowed]
        if outside:
            # A tenant is not told which accounts exist beyond its own allow-list.
            raise Rejected(
                f"account(s) {', '.join(outside)} are not on tenant {tenant}'s allow-list; nothing was scanned"
            )
        if not accounts:
            raise Rejected(f"tenant {tenant} has no registered account on its allow-list; nothing was scanned")
        return accounts

    async def handle(self, request: RunRequested, delivery: Delivery, msg: NatsMessage) -> None:
        tenant = subjects.tenant_of(delivery.subject)
        accounts = await self._accounts(request, tenant)
        services = sorted(set(request.services), key=list(Service).index) if request.services else list(Service)
        # A tenant's request id is its own namespace: two tenants choosing the same id get two runs.
        run_id = run_id_for(f"{tenant}/{request.request_id}" if tenant else request.request_id)
        regions = {account: await self._regions(account) for account in accounts}
        planned_at = self._clock()
        expected = [PlannedCheck(account_id=a, service=s) for a in accounts for s in services]
        plan = RunPlanned(
            run_id=run_id,
            request_id=request.request_id,
            requested_by=request.requested_by,
            requested_at=request.requested_at,
            planned_at=planned_at,
            deadline_at=planned_at + timedelta(seconds=self._settings.run_deadline_seconds),
            expected=expected,
            tenant=tenant,
        )
        checks = [
            CheckRequested(
                run_id=run_id,
                request_id=request.request_id,
                account_id=pair.account_id,
                service=pair.service,
                regions=regions[pair.account_id],
                requested_at=request.requested_at,
            )
            for pair in expected
        ]
        if self._coalescer is not None:
            # Nothing can reject the request any more (accounts, regions, messages all valid): claim or join now.
            decision = await self._coalescer.decide(
                run_id=run_id,
                scope=scope_key(tenant, regions, services),
                planned_at=plan.planned_at,
                deadline_at=plan.deadline_at,
            )
            if decision.role is Role.JOIN:
                await self._join(request, tenant, decision.run_id)
                return
            # A redelivered leader republishes the plan it decided first (same times, same Nats-Msg-Id).
            plan = plan.model_copy(update={"planned_at": decision.planned, "deadline_at": decision.deadline})
        # Every message is built before any is published. A redelivered request republishes with the same ids:
        # the streams' duplicate window drops the copies.
        await publish_durable(
            self._broker, subjects.RUNS_PLANNED, plan, msg_id=f"planned:{run_id}", stream=subjects.STREAM_RUNS
        )
        for check in checks:
            await publish_durable(
                self._broker,
                subjects.checks_subject(check.service),
                check,
                msg_id=f"check:{run_id}:{check.account_id}:{check.service.value}",
                stream=subjects.STREAM_CHECKS,
            )
        log.info(
            "run_planned",
            run_id=run_id,
            request_id=request.request_id,
            accounts=len(accounts),
            tenant=tenant,
            services=[s.value for s in services],
            checks=len(expected),
        )

    async def _join(self, request: RunRequested, tenant: str | None, run_id: str) -> None:
        """No second scan: the identical run in flight answers this request too (its RunCompleted, this id)."""
        joined = RunJoined(
            run_id=run_id,
            request_id=request.request_id,
            tenant=tenant,
            requested_by=request.requested_by,
            joined_at=self._clock(),
        )
        await publish_durable(
            self._broker,
            subjects.RUNS_JOINED,
            joined,
            msg_id=f"joined:{run_id}:{request.request_id}",
            stream=subjects.STREAM_RUNS,
        )
        log.info("run_joined", run_id=run_id, request_id=request.request_id, tenant=tenant)

    async def rejected(self, body: bytes, reason: str, delivery: Delivery) -> None:
        """Answer a refused request on kushim.runs.rejected (a tenant's on kushim.runs.rejected.<tenant>), echoing
        its request_id when it can be read."""
        request_id = _request_id_of(body)
        tenant = subjects.tenant_of(delivery.subject)
        rejection = RunRejected(request_id=request_id, reason=reason, rejected_at=self._clock())
        msg_id = f"rejected:{tenant or ''}:{hashlib.sha256(body).hexdigest()[:32]}"
        await publish_durable(
            self._broker, subjects.rejected_subject(tenant), rejection, msg_id=msg_id, stream=subjects.STREAM_RUNS
        )


_LEADING_REQUEST_ID = re.compile(rb'"request_id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9._:@-]{0,127})"')


def _request_id_of(body: bytes) -> str | None:
    if len(body) > MAX_RUN_REQUEST_BYTES:  # an oversized body is not parsed; its id is looked for at its start
        match = _LEADING_REQUEST_ID.search(body[:4096])
        return match.group(1).decode() if match else None
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if isinstance(data, dict):
        value = data.get("request_id")
        if isinstance(value, str) and 0 < len(value) <= 128:
            return value
    return None
