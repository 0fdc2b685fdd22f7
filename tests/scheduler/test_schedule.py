"""Schedules on a real nats-server: one run per slot across replicas and across time (durable slot claims in the
KUSHIM_SCHEDULE key-value bucket), takeover of a claim whose owner died, catch-up of the latest missed slot only,
and time zones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from faststream.nats import NatsBroker
from nats.aio.client import Client as NatsClient
from nats.js.errors import KeyNotFoundError

from services.scheduler.cron import (
    SCHEDULE_BUCKET,
    STALE_CLAIM_SECONDS,
    CronLoop,
    Schedules,
    group_id,
    next_slot,
    previous_slot,
    slot_key,
)
from shared import subjects
from shared.accounts import Account, RegistryFile, add_account, remove_account
from shared.embedded import EmbeddedNats
from shared.nats import declare_topology, make_broker
from shared.settings import Settings
from tests.helpers import nats_client, stream_payloads, until

SLOT = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@pytest.fixture
async def nc(nats_server: EmbeddedNats, settings: Settings) -> AsyncIterator[NatsClient]:
    async with nats_client(nats_server.url) as client:
        await declare_topology(client.jetstream(), settings)
        yield client


async def _requests(nc: NatsClient) -> list[str]:
    payloads = await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_REQUESTED)
    return [json.loads(p)["request_id"] for p in payloads]


def _fixed(moment: datetime) -> Callable[[], datetime]:
    return lambda: moment


async def test_one_run_per_slot_across_replicas_and_after_the_dedupe_window(
    nats_server: EmbeddedNats, make_settings: Callable[..., Settings], nc: NatsClient
) -> None:
    settings = make_settings(nats_url=nats_server.url, duplicate_window_seconds=1)
    await declare_topology(nc.jetstream(), settings)  # a 1 s de-duplication window
    brokers = [make_broker(nats_server.url, name=f"replica-{i}", settings=settings) for i in range(3)]
    for broker in brokers:
        await broker.connect()
    try:
        loops = [CronLoop(broker=b, expression="0 2 * * *") for b in brokers]
        published = await asyncio.gather(loops[0].publish_slot(SLOT), loops[1].publish_slot(SLOT))
        assert sorted(published) == [False, True]
        await asyncio.sleep(1.5)  # past the stream's de-duplication window: only the claim stops a second run
        assert await loops[2].publish_slot(SLOT) is False
        assert await _requests(nc) == ["schedule-20261127T0200Z"]
        entry = await (await nc.jetstream().key_value(SCHEDULE_BUCKET)).get(slot_key(SLOT))
        assert json.loads(entry.value or b"{}")["published"] is True
    finally:
        for broker in brokers:
            await broker.stop()


async def test_a_claim_whose_owner_died_is_taken_over_and_a_live_one_is_not(
    nats_server: EmbeddedNats, settings: Settings, nc: NatsClient
) -> None:
    broker = make_broker(nats_server.url, name="replica", settings=settings)
    await broker.connect()
    try:
        kv = await broker.key_value(SCHEDULE_BUCKET)
        now = datetime.now(UTC)
        fresh = {"owner": "other", "at": now.isoformat(), "published": False}
        await kv.create(slot_key(SLOT), json.dumps(fresh).encode())
        loop = CronLoop(broker=broker, expression="0 2 * * *")
        assert await loop.publish_slot(SLOT) is False  # the other replica is publishing it right now
        stale = {"owner": "dead", "at": (now - timedelta(seconds=STALE_CLAIM_SECONDS + 1)).isoformat()}
        await kv.put(slot_key(SLOT), json.dumps(stale | {"published": False}).encode())
        assert await loop.publish_slot(SLOT) is True
        assert await _requests(nc) == ["schedule-20261127T0200Z"]
    finally:
        await broker.stop()


async def test_catch_up_runs_the_latest_missed_slot_once_and_never_older_ones(
    nats_server: EmbeddedNats, settings: Settings, nc: NatsClient
) -> None:
    hourly = "0 * * * *"
    loop = CronLoop(broker=None, expression=hourly, catch_up_seconds=6 * 3600)  # type: ignore[arg-type]
    down_until = datetime(2026, 11, 27, 5, 30, tzinfo=UTC)  # down since 00:10: five slots missed
    assert loop.missed_slot(down_until) == datetime(2026, 11, 27, 5, 0, tzinfo=UTC)
    short = CronLoop(broker=None, expression=hourly, catch_up_seconds=20 * 60)  # type: ignore[arg-type]
    assert short.missed_slot(down_until) is None  # 30 minutes late is outside a 20-minute window
    daily = CronLoop(broker=None, expression="0 2 * * *", catch_up_seconds=6 * 3600)  # type: ignore[arg-type]
    assert daily.missed_slot(datetime(2026, 11, 29, 1, 0, tzinfo=UTC)) is None  # 23 h late
    none = CronLoop(broker=None, expression="0 2 * * *", catch_up_seconds=0)  # type: ignore[arg-type]
    assert none.missed_slot(datetime(2026, 11, 27, 2, 5, tzinfo=UTC)) is None

    # Two replicas come back at 02:30 and 02:40: the 02:00 run happens once.
    brokers = [make_broker(nats_server.url, name=f"late-{i}", settings=settings) for i in range(2)]
    for broker in brokers:
        await broker.connect()
    try:
        for i, broker in enumerate(brokers):
            clock = datetime(2026, 11, 27, 2, 30 + 10 * i, tzinfo=UTC)
            late = CronLoop(broker=broker, expression="0 2 * * *", catch_up_seconds=6 * 3600, clock=_fixed(clock))
            task = asyncio.create_task(late.run())
            await asyncio.sleep(0.5)  # catch-up happens before the loop waits for the next slot
            task.cancel()
        assert await _requests(nc) == ["schedule-20261127T0200Z"]
    finally:
        for broker in brokers:
            await broker.stop()


def test_schedules_follow_their_time_zone_and_its_daylight_saving() -> None:
    winter = next_slot("0 2 * * *", datetime(2026, 1, 10, 12, 0, tzinfo=UTC), "Europe/Berlin")
    summer = next_slot("0 2 * * *", datetime(2026, 7, 10, 12, 0, tzinfo=UTC), "Europe/Berlin")
    assert winter == datetime(2026, 1, 11, 1, 0, tzinfo=UTC)  # 02:00 CET
    assert summer == datetime(2026, 7, 11, 0, 0, tzinfo=UTC)  # 02:00 CEST
    assert next_slot("0 2 * * *", datetime(2026, 1, 10, 12, 0, tzinfo=UTC)) == datetime(2026, 1, 11, 2, 0, tzinfo=UTC)


def test_unknown_time_zone_is_refused(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ValueError, match="not an IANA time zone"):
        make_settings(schedule_timezone="Mars/Olympus")


class _FailingOnce(NatsBroker):
    """A broker whose first publish fails (a NATS leader election at 02:00)."""

    failures = 1

    async def publish(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("nats restarting (injected)")
        return await super().publish(*args, **kwargs)


async def test_a_publish_that_fails_after_the_claim_is_retried_by_the_claimer(
    nats_server: EmbeddedNats, nc: NatsClient
) -> None:
    broker = _FailingOnce(nats_server.url)
    await broker.connect()
    try:
        loop = CronLoop(broker=broker, expression="0 2 * * *", retry_seconds=0)
        await asyncio.wait_for(loop._run_slot(SLOT), timeout=10)
        assert broker.failures == 0
        assert await _requests(nc) == ["schedule-20261127T0200Z"]
    finally:
        await broker.stop()


async def test_another_replica_adopts_a_slot_whose_claimer_died(
    nats_server: EmbeddedNats, settings: Settings, nc: NatsClient
) -> None:
    """The claimer died after claiming (no publish): a running replica's minute check takes the slot over once the
    claim is stale."""
    broker = make_broker(nats_server.url, name="survivor", settings=settings)
    await broker.connect()
    try:
        kv = await broker.key_value(SCHEDULE_BUCKET)
        died_at = SLOT + timedelta(seconds=30)  # the claim is 9.5 minutes old at the survivor's clock
        claim = {"owner": "dead", "at": died_at.isoformat(), "published": False}
        await kv.create(slot_key(SLOT), json.dumps(claim).encode())
        survivor = CronLoop(
            broker=broker,
            expression="0 2 * * *",
            catch_up_seconds=6 * 3600,
            clock=_fixed(SLOT + timedelta(minutes=10)),
        )
        await survivor._adopt_orphan()
        await survivor._adopt_orphan()  # published now: nothing more
        assert await _requests(nc) == ["schedule-20261127T0200Z"]
    finally:
        await broker.stop()


def test_the_hour_that_happens_twice_runs_once_and_the_missing_hour_runs_after_it() -> None:
    """Europe/Berlin, 2026-10-25: 02:00-03:00 happens twice (CEST, then CET); 2026-03-29: 02:00-03:00 never happens."""
    expression = "30 2 * * *"
    autumn = [datetime(2026, 10, 24, 12, 0, tzinfo=UTC)]
    for _ in range(3):
        autumn.append(next_slot(expression, autumn[-1], "Europe/Berlin"))
    assert autumn[1:] == [
        datetime(2026, 10, 25, 0, 30, tzinfo=UTC),  # 02:30 CEST, once
        datetime(2026, 10, 26, 1, 30, tzinfo=UTC),  # 02:30 CET the next day
        datetime(2026, 10, 27, 1, 30, tzinfo=UTC),
    ]
    assert previous_slot(expression, datetime(2026, 10, 25, 2, 0, tzinfo=UTC), "Europe/Berlin") == autumn[1]
    spring = next_slot(expression, datetime(2026, 3, 28, 12, 0, tzinfo=UTC), "Europe/Berlin")
    assert spring.date() == datetime(2026, 3, 29, tzinfo=UTC).date()  # the day still gets its run


async def test_accounts_with_their_own_schedule_run_on_it_once_per_slot(
    nats_server: EmbeddedNats, make_settings: Callable[..., Settings], nc: NatsClient, tmp_path: Path
) -> None:
    registry = tmp_path / "accounts.toml"
    add_account(registry, Account(id="111111111111", name="default-schedule"))
    for account in ("222222222222", "333333333333"):
        add_account(registry, Account(id=account, name=account, schedule="0 5 * * *", timezone="Europe/Berlin"))
    settings = make_settings(nats_url=nats_server.url, accounts_file=registry)
    view = RegistryFile(registry)
    group = group_id("0 5 * * *", "Europe/Berlin")
    brokers = [make_broker(nats_server.url, name=f"replica-{i}", settings=settings) for i in range(2)]
    for broker in brokers:
        await broker.connect()
    try:
        replicas = [Schedules(broker=b, settings=settings, registry=view.current) for b in brokers]
        assert replicas[0].groups() == {None: ("0 2 * * *", "UTC"), group: ("0 5 * * *", "Europe/Berlin")}
        assert replicas[0].accounts_of(None) == ["111111111111"]
        assert replicas[0].accounts_of(group) == ["222222222222", "333333333333"]

        berlin_five = datetime(2026, 11, 27, 4, 0, tzinfo=UTC)  # 05:00 in Berlin (CET, UTC+1)
        assert next_slot("0 5 * * *", berlin_five - timedelta(minutes=1), "Europe/Berlin") == berlin_five
        loops = [r._loop(group, "0 5 * * *", "Europe/Berlin") for r in replicas]
        won = await asyncio.gather(*(loop.publish_slot(berlin_five) for loop in loops))
        assert sorted(won) == [False, True]
        # The default schedule's slot at the same instant is a different claim and a different run.
        assert await replicas[1]._loop(None, "0 2 * * *", "UTC").publish_slot(berlin_five) is True

        payloads = await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_REQUESTED)
        requests = {json.loads(p)["request_id"]: json.loads(p)["accounts"] for p in payloads}
        assert requests == {
            f"schedule-{group}-20261127T0400Z": ["222222222222", "333333333333"],
            "schedule-20261127T0400Z": ["111111111111"],
        }
        kv = await nc.jetstream().key_value(SCHEDULE_BUCKET)
        assert (await kv.get(slot_key(berlin_five, group))).value

        # Every account leaves the group: its next slot runs nothing (and claims nothing).
        remove_account(registry, "222222222222")
        remove_account(registry, "333333333333")
        later = berlin_five + timedelta(days=1)
        assert await loops[0].publish_slot(later) is False
        assert len(await stream_payloads(nc, subjects.STREAM_RUNS, subjects.RUNS_REQUESTED)) == 2
        assert replicas[0].groups() == {None: ("0 2 * * *", "UTC")}
    finally:
        for broker in brokers:
            await broker.stop()


async def test_schedules_follow_the_registry_without_a_restart(
    nats_server: EmbeddedNats, make_settings: Callable[..., Settings], nc: NatsClient, tmp_path: Path
) -> None:
    registry = tmp_path / "accounts.toml"
    add_account(registry, Account(id="111111111111", name="a"))
    settings = make_settings(nats_url=nats_server.url, accounts_file=registry, schedule_catch_up_seconds=0)
    broker = make_broker(nats_server.url, name="scheduler", settings=settings)
    await broker.connect()
    schedules = Schedules(
        broker=broker, settings=settings, registry=RegistryFile(registry).current, refresh_seconds=0.05
    )
    task = asyncio.create_task(schedules.run())
    try:
        await asyncio.sleep(0.2)
        assert set(schedules.running) == {None}
        add_account(registry, Account(id="222222222222", name="b", schedule="30 1 * * *"))
        os.utime(registry, ns=(2, 2))  # a new modification time even on a coarse clock
        await until(lambda: len(schedules.running) == 2)
        remove_account(registry, "222222222222")
        os.utime(registry, ns=(3, 3))
        await until(lambda: set(schedules.running) == {None})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broker.stop()


async def test_an_account_moved_to_a_schedule_whose_slot_just_passed_waits_for_the_next_one(
    nats_server: EmbeddedNats, make_settings: Callable[..., Settings], nc: NatsClient, tmp_path: Path
) -> None:
    """Groups that appear on a registry refresh do not catch up (the account was checked on its old schedule), and
    the once-a-minute orphan check only takes over claims whose claimer died: it never creates one for a slot nobody
    claimed in time."""
    registry = tmp_path / "accounts.toml"
    add_account(registry, Account(id="111111111111", name="a"))
    settings = make_settings(nats_url=nats_server.url, accounts_file=registry, schedule_catch_up_seconds=6 * 3600)
    broker = make_broker(nats_server.url, name="scheduler", settings=settings)
    await broker.connect()
    view = RegistryFile(registry)
    schedules = Schedules(broker=broker, settings=settings, registry=view.current, refresh_seconds=0.05)
    task = asyncio.create_task(schedules.run())
    try:
        await until(lambda: set(schedules.running) == {None})
        minute = (datetime.now(UTC).minute - 1) % 60  # hourly, its latest slot a minute ago
        add_account(registry, Account(id="222222222222", name="b", schedule=f"{minute} * * * *"))
        await until(lambda: len(schedules.running) == 2)
        await asyncio.sleep(0.5)
        assert await _requests(nc) == []

        group = group_id(f"{minute} * * * *", "UTC")
        loop = schedules._loop(group, f"{minute} * * * *", "UTC")
        missed = loop.missed_slot(datetime.now(UTC))
        assert missed is not None
        assert await loop.publish_slot(missed, existing_only=True) is False
        kv = await nc.jetstream().key_value(SCHEDULE_BUCKET)
        with pytest.raises(KeyNotFoundError):
            await kv.get(slot_key(missed, group))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await broker.stop()
