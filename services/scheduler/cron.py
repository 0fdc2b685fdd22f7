"""The schedule: one RunRequested per cron slot, however many scheduler replicas run and whenever they run.

- Every replica computes the same slots (cron expression in `KUSHIM_SCHEDULE_TIMEZONE`, daylight saving included).
- A slot is claimed durably before it is published: a create-only key in the JetStream key-value bucket
  `KUSHIM_SCHEDULE` (`slot.<yyyymmddThhmmZ>`). Exactly one replica's create succeeds; the others see the key and
  skip the slot, even a replica that catches up hours later, long after the stream's de-duplication window.
- The claimer then publishes with a slot-derived `Nats-Msg-Id` (a retry is a duplicate, not a second run) and marks
  the claim published. A claimer that died between claim and publish leaves an unpublished claim: after
  `STALE_CLAIM_SECONDS` another replica takes it over (a compare-and-set on the key's revision) and publishes.
- Catch-up: at start, the latest slot before now is run once if it is at most `KUSHIM_SCHEDULE_CATCH_UP_SECONDS`
  old and nobody claimed it; older missed slots are never run (no burst of stale runs after an outage).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog
from croniter import croniter
from faststream.nats import NatsBroker
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.scheduler.buckets import open_bucket
from shared import subjects
from shared.accounts import Account, Registry
from shared.messages import RunRequested
from shared.nats import publish_durable
from shared.settings import Settings

log = structlog.get_logger(__name__)

SCHEDULE_BUCKET = subjects.KV_SCHEDULE
CLAIM_TTL_SECONDS = 40 * 86_400.0
"""Claims are kept 40 days: longer than any catch-up window."""
STALE_CLAIM_SECONDS = 120.0


def _repeated_wall_time(slot: datetime, zone: ZoneInfo) -> bool:
    """True for the second occurrence of a local time that happens twice (the hour clocks go back): cron runs once."""
    local = slot.astimezone(zone).replace(tzinfo=None)
    hour_before = (slot - timedelta(hours=1)).astimezone(zone).replace(tzinfo=None)
    return local == hour_before


def next_slot(expression: str, after: datetime, timezone: str = "UTC") -> datetime:
    """The first slot strictly after `after`, in UTC (the expression read in `timezone`, each wall time once)."""
    zone = ZoneInfo(timezone)
    slot = croniter(expression, after.astimezone(zone)).get_next(datetime).astimezone(UTC)
    while _repeated_wall_time(slot, zone):
        slot = croniter(expression, slot.astimezone(zone)).get_next(datetime).astimezone(UTC)
    return slot


def previous_slot(expression: str, before: datetime, timezone: str = "UTC") -> datetime:
    """The latest slot at or before `before`, in UTC (each wall time once)."""
    zone = ZoneInfo(timezone)
    local = before.astimezone(zone)
    if croniter.match(expression, local.replace(second=0, microsecond=0)) and local.second == 0 == local.microsecond:
        slot = local.astimezone(UTC)
    else:
        slot = croniter(expression, local).get_prev(datetime).astimezone(UTC)
    while _repeated_wall_time(slot, zone):
        slot = croniter(expression, slot.astimezone(zone)).get_prev(datetime).astimezone(UTC)
    return slot


def group_id(expression: str, timezone: str) -> str:
    """Names the schedule of accounts that have their own (registry `schedule` / `timezone`): stable across
    replicas and restarts, so their slot claims and request ids agree."""
    return hashlib.sha256(f"{expression}|{timezone}".encode()).hexdigest()[:10]


def slot_request_id(slot: datetime, group: str | None = None) -> str:
    stamp = f"{slot.astimezone(UTC):%Y%m%dT%H%MZ}"
    return f"schedule-{group}-{stamp}" if group else f"schedule-{stamp}"


def slot_key(slot: datetime, group: str | None = None) -> str:
    stamp = f"{slot.astimezone(UTC):%Y%m%dT%H%MZ}"
    return f"slot.{group}.{stamp}" if group else f"slot.{stamp}"


def scheduled_request(slot: datetime, group: str | None = None, accounts: list[str] | None = None) -> RunRequested:
    return RunRequested(
        request_id=slot_request_id(slot, group),
        requested_by="kushim-scheduler",
        requested_at=slot,
        accounts=sorted(accounts) if accounts else None,
    )


class SlotClaims(Protocol):
    """Durable, create-only claims of schedule slots."""

    async def claim(self, slot: datetime, now: datetime, *, existing_only: bool = False) -> bool:
        """True when this replica owns the slot and must publish it (a new claim, or a stale one taken over; with
        `existing_only`, only a stale claim taken over)."""

    async def published(self, slot: datetime, now: datetime) -> None: ...


class KvSlotClaims:
    """Slot claims in the JetStream key-value bucket KUSHIM_SCHEDULE."""

    def __init__(
        self, broker: NatsBroker, owner: str | None = None, group: str | None = None, replicas: int = 1
    ) -> None:
        """`replicas`: the bucket's copies when this creates it (KUSHIM_STREAM_REPLICAS)."""
        self._broker = broker
        self._owner = owner or f"{socket.gethostname()}-{id(self):x}"
        self._group = group
        self._replicas = replicas
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await open_bucket(
                self._broker,
                SCHEDULE_BUCKET,
                description="Claimed schedule slots (one run per slot).",
                ttl=CLAIM_TTL_SECONDS,
                replicas=self._replicas,
            )
        return self._kv

    def _value(self, now: datetime, *, published: bool) -> bytes:
        record = {"owner": self._owner, "at": now.isoformat(), "published": published}
        return json.dumps(record, sort_keys=True).encode()

    async def claim(self, slot: datetime, now: datetime, *, existing_only: bool = False) -> bool:
        kv = await self._bucket()
        key = slot_key(slot, self._group)
        if not existing_only:
            try:
                await kv.create(key, self._value(now, published=False))
                return True
            except KeyWrongLastSequenceError:
                pass
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return False  # never claimed: nobody ran it on time, and adopting is not catching up
        record = json.loads(entry.value or b"{}")
        if record.get("published"):
            return False
        if record.get("owner") == self._owner:
            return True  # our own claim: our publish failed, this is the retry
        claimed_at = datetime.fromisoformat(record.get("at", now.isoformat()))
        if (now - claimed_at).total_seconds() < STALE_CLAIM_SECONDS:
            return False  # another replica is publishing it right now
        try:  # its claimer died before publishing: take the claim over, unless another replica just did
            await kv.update(key, self._value(now, published=False), last=entry.revision)
        except KeyWrongLastSequenceError:
            return False
        log.warning("schedule_claim_taken_over", slot=slot.isoformat(), previous_owner=record.get("owner"))
        return True

    async def published(self, slot: datetime, now: datetime) -> None:
        kv = await self._bucket()
        await kv.put(slot_key(slot, self._group), self._value(now, published=True))


class CronLoop:
    def __init__(
        self,
        *,
        broker: NatsBroker,
        expression: str,
        timezone: str = "UTC",
        claims: SlotClaims | None = None,
        catch_up_seconds: float = 0.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        retry_seconds: float = 5.0,
        catch_up_at_start: bool = True,
        group: str | None = None,
        accounts: Callable[[], list[str] | None] = lambda: None,
        replicas: int = 1,
    ) -> None:
        self._broker = broker
        self._expression = expression
        self._timezone = timezone
        self._group = group
        self._accounts = accounts
        self._claims = claims or KvSlotClaims(broker, group=group, replicas=replicas)
        self._catch_up = timedelta(seconds=catch_up_seconds)
        self._catch_up_at_start = catch_up_at_start
        self._clock = clock
        self._retry_seconds = retry_seconds

    async def publish_slot(self, slot: datetime, *, existing_only: bool = False) -> bool:
        """Claim the slot and publish its RunRequested; False when another replica owns it (or, for an account
        schedule, no account follows it any more). `existing_only`: only take over a claim whose claimer died."""
        accounts = self._accounts()
        if accounts is not None and not accounts:
            log.info("scheduled_slot_without_accounts", slot=slot.isoformat(), schedule=self._expression)
            return False
        if not await self._claims.claim(slot, self._clock(), existing_only=existing_only):
            log.debug("scheduled_slot_claimed_elsewhere", slot=slot.isoformat())
            return False
        request = scheduled_request(slot, self._group, accounts)
        ack = await publish_durable(
            self._broker,
            subjects.RUNS_REQUESTED,
            request,
            msg_id=request.request_id,
            stream=subjects.STREAM_RUNS,
        )
        await self._claims.published(slot, self._clock())
        log.info("scheduled_run_requested", request_id=request.request_id, duplicate=bool(ack.duplicate))
        return True

    def missed_slot(self, now: datetime) -> datetime | None:
        """The latest slot before now, if it is within the catch-up window."""
        if self._catch_up <= timedelta(0):
            return None
        slot = previous_slot(self._expression, now, self._timezone)
        return slot if now - slot <= self._catch_up else None

    async def _run_slot(self, slot: datetime) -> None:
        while True:
            try:
                await self.publish_slot(slot)
                return
            except Exception as exc:
                # Same slot again (its claim and id make a retry safe): a broker restart at 02:00 must not skip a day.
                log.error("scheduled_publish_failed", slot=slot.isoformat(), error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._retry_seconds)

    async def run(self) -> None:
        now = self._clock()
        missed = self.missed_slot(now) if self._catch_up_at_start else None
        if missed is not None:
            log.info("schedule_catching_up", slot=missed.isoformat(), late_seconds=(now - missed).total_seconds())
            await self._run_slot(missed)
        slot = next_slot(self._expression, now, self._timezone)
        log.info(
            "schedule_armed",
            schedule=self._expression,
            timezone=self._timezone,
            group=self._group or "default",
            next_run=slot.isoformat(),
        )
        while True:
            wait = (slot - self._clock()).total_seconds()
            if wait > 0:
                await asyncio.sleep(min(wait, 60.0))
                await self._adopt_orphan()
                continue
            await self._run_slot(slot)
            slot = next_slot(self._expression, slot, self._timezone)

    async def _adopt_orphan(self) -> None:
        """About once a minute: a recent slot whose claimer died before publishing is taken over (the claim is stale
        after STALE_CLAIM_SECONDS); a published or live claim costs one key-value read."""
        missed = self.missed_slot(self._clock())
        if missed is None:
            return
        try:
            await self.publish_slot(missed, existing_only=True)
        except Exception as exc:
            log.warning("schedule_orphan_check_failed", slot=missed.isoformat(), error=f"{type(exc).__name__}: {exc}")


class Schedules:
    """Every schedule in force: the default one (`KUSHIM_SCHEDULE`) and one per distinct `schedule` / `timezone` of
    registered accounts. Each runs as its own CronLoop; the set is re-read every `refresh_seconds`, so an account
    added to or moved in the registry follows its new schedule without a restart. A scheduled run covers exactly
    the accounts following that schedule at the slot (without a registry: the account of the credentials)."""

    def __init__(
        self,
        *,
        broker: NatsBroker,
        settings: Settings,
        registry: Callable[[], Registry | None],
        refresh_seconds: float = 60.0,
    ) -> None:
        self._broker = broker
        self._settings = settings
        self._registry = registry
        self._refresh_seconds = refresh_seconds
        self._running: dict[str | None, tuple[str, str]] = {}

    def _schedule_of(self, account: Account) -> tuple[str, str]:
        return (account.schedule or self._settings.schedule, account.timezone or self._settings.schedule_timezone)

    def _group_of(self, schedule: tuple[str, str]) -> str | None:
        default = (self._settings.schedule, self._settings.schedule_timezone)
        return None if schedule == default else group_id(*schedule)

    def groups(self) -> dict[str | None, tuple[str, str]]:
        """Schedule group (None: the default) -> (cron expression, time zone)."""
        wanted: dict[str | None, tuple[str, str]] = {None: (self._settings.schedule, self._settings.schedule_timezone)}
        registry = self._registry()
        for account in registry.accounts if registry is not None else []:
            schedule = self._schedule_of(account)
            wanted[self._group_of(schedule)] = schedule
        return wanted

    def accounts_of(self, group: str | None) -> list[str] | None:
        """The accounts a group's slot covers now; None: every account (no registry, default schedule)."""
        registry = self._registry()
        if registry is None:
            return None if group is None else []
        return sorted(a.id for a in registry.accounts if self._group_of(self._schedule_of(a)) == group)

    @property
    def running(self) -> dict[str | None, tuple[str, str]]:
        """The schedule groups whose loops run now."""
        return dict(self._running)

    def _loop(self, group: str | None, expression: str, timezone: str, *, catch_up: bool = True) -> CronLoop:
        """A group's loop. Groups that appear on a registry refresh do not catch up: an account moved to a schedule
        whose latest slot has just passed was checked on its old one, and waits for the next slot."""
        return CronLoop(
            broker=self._broker,
            expression=expression,
            timezone=timezone,
            catch_up_seconds=self._settings.schedule_catch_up_seconds,
            catch_up_at_start=catch_up,
            group=group,
            accounts=lambda: self.accounts_of(group),
            replicas=self._settings.stream_replicas,
        )

    async def run(self) -> None:
        tasks: dict[str | None, asyncio.Task[None]] = {}
        first = True  # the groups in force at start catch up on a missed slot; later ones do not
        try:
            while True:
                try:
                    wanted = self.groups()
                except Exception as exc:  # an unreadable registry keeps the schedules in force
                    log.error("schedules_refresh_failed", error=f"{type(exc).__name__}: {exc}")
                    wanted = dict(self._running)
                for group in [g for g in tasks if g not in wanted or tasks[g].done()]:
                    task = tasks.pop(group)
                    task.cancel()
                    if task.done() and not task.cancelled() and task.exception() is not None:
                        log.error("schedule_loop_crashed", group=group or "default", error=str(task.exception()))
                    elif group not in wanted:
                        log.info("schedule_removed", group=group)
                for group, (expression, timezone) in wanted.items():
                    if group not in tasks:
                        loop = self._loop(group, expression, timezone, catch_up=first)
                        tasks[group] = asyncio.create_task(loop.run())
                first = False
                self._running = {g: wanted[g] for g in tasks}
                await asyncio.sleep(self._refresh_seconds)
        finally:
            for task in tasks.values():
                task.cancel()
            await asyncio.gather(*tasks.values(), return_exceptions=True)
