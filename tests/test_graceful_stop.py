"""A collector replica told to stop (SIGTERM: Kubernetes scaling down, a rollout) mid-scan loses nothing.

As in `test_replica_failover.py`: two `kushim serve collector-iam` processes on one durable consumer, the evidence
service and the scheduler in the test's process, a real nats-server, moto's server (three AssumeRole accounts)
behind a proxy holding every AWS request, SQLite. Once both replicas are inside a scan, one gets SIGTERM:

- within KUSHIM_SHUTDOWN_GRACE_SECONDS it finishes its scan, publishes, acks, and exits 0: nothing is delivered
  twice;
- past it, it hands the scan back (a nack without delay) and exits 0: the other replica takes it at once (delivery
  2), long before `ack_wait` would have redelivered it.

Either way the run completes COMPLETE with every account's findings stored once.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared import subjects
from shared.embedded import EmbeddedNats
from shared.messages import FindingsReported, RunState
from shared.settings import Settings
from tests.helpers import stream_models
from tests.test_replica_failover import ACCOUNTS, DURABLE, RUN_TIMEOUT, Replica, stored_pairs, two_replicas_mid_scan


@dataclass
class Outcome:
    run_state: RunState
    stopped: Replica
    other: Replica
    stopped_account: str
    seconds_to_complete: float  # from the SIGTERM to the run's RunCompleted
    deliveries: int  # the consumer's deliveries, redeliveries included
    pending: tuple[int, int]  # (ack pending, pending) after the run
    attempts: dict[str, set[int]]  # account -> attempts of its published findings chunks
    pairs: dict[str, tuple[int, bool, int]]


async def sigterm_mid_scan(
    e2e_settings: Callable[..., Settings],
    nats_server: EmbeddedNats,
    moto_endpoint: str,
    tmp_path: Path,
    *,
    grace: float,
    ack_wait: float,
) -> Outcome:
    """Run over the three accounts; SIGTERM one replica once both are inside a scan; wait for the run's end."""
    async with two_replicas_mid_scan(
        e2e_settings,
        nats_server,
        moto_endpoint,
        tmp_path,
        ack_wait=ack_wait,
        replica_settings={"KUSHIM_SHUTDOWN_GRACE_SECONDS": str(grace)},
    ) as mid:
        stopped, other = mid.replicas
        (stopped_account,) = stopped.open_scans()
        stopped.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        run_id = await asyncio.wait_for(mid.run, RUN_TIMEOUT + 5)
        seconds = time.monotonic() - signalled
        report = await mid.client.report(run_id=run_id)
        await asyncio.to_thread(stopped.process.wait, 30)
        info = await mid.nc.jetstream().consumer_info(subjects.STREAM_CHECKS, DURABLE)
        chunks = await stream_models(mid.nc, subjects.STREAM_FINDINGS, "kushim.findings.>", FindingsReported)
    attempts: dict[str, set[int]] = {}
    for chunk in chunks:
        assert chunk.run_id == run_id
        attempts.setdefault(chunk.account_id, set()).add(chunk.attempt)
    return Outcome(
        run_state=report.run.state,
        stopped=stopped,
        other=other,
        stopped_account=stopped_account,
        seconds_to_complete=seconds,
        deliveries=int(info.delivered.consumer_seq or 0),
        pending=(int(info.num_ack_pending or 0), int(info.num_pending or 0)),
        attempts=attempts,
        pairs=stored_pairs(mid.database, run_id),
    )


def events(replica: Replica, name: str) -> list[dict[str, Any]]:
    return [event for event in replica.events() if event.get("event") == name]


async def test_a_stopping_replica_finishes_its_scan_within_the_grace(
    e2e_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str, tmp_path: Path
) -> None:
    outcome = await sigterm_mid_scan(e2e_settings, nats_server, moto_endpoint, tmp_path, grace=30.0, ack_wait=3.0)
    assert outcome.run_state is RunState.COMPLETE
    assert outcome.stopped.process.returncode == 0
    # The stopped replica reported the scan it was in (nothing handed back); each check was delivered once.
    assert outcome.stopped.scans("scan_reported") == outcome.stopped.scans("scan_started")
    assert outcome.stopped_account in outcome.stopped.scans("scan_reported")
    assert not events(outcome.stopped, "message_handed_back")
    assert outcome.deliveries == len(ACCOUNTS)
    assert outcome.pending == (0, 0)
    assert outcome.attempts == {account: {1} for account in ACCOUNTS}
    assert {account: pair[:2] for account, pair in outcome.pairs.items()} == {a: (1, True) for a in ACCOUNTS}
    assert Counter(outcome.stopped.scans("scan_reported")) + Counter(outcome.other.scans("scan_reported")) == Counter(
        ACCOUNTS
    )


async def test_past_the_grace_a_stopping_replica_hands_its_scan_back_at_once(
    e2e_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str, tmp_path: Path
) -> None:
    ack_wait = 30.0
    outcome = await sigterm_mid_scan(e2e_settings, nats_server, moto_endpoint, tmp_path, grace=0.2, ack_wait=ack_wait)
    assert outcome.run_state is RunState.COMPLETE
    assert outcome.stopped.process.returncode == 0
    # The stopped replica published nothing for the scan it was in and handed the message back (delivery 1 of 5).
    assert outcome.stopped_account not in outcome.stopped.scans("scan_reported")
    (handed_back,) = events(outcome.stopped, "message_handed_back")
    assert handed_back["account_id"] == outcome.stopped_account
    assert handed_back["delivery"] == 1
    # The other replica scanned it right away (delivery 2), not after ack_wait.
    assert outcome.seconds_to_complete < ack_wait / 2
    assert outcome.other.scans("scan_reported")[outcome.stopped_account] == 1
    assert outcome.deliveries == len(ACCOUNTS) + 1
    assert outcome.pending == (0, 0)
    assert outcome.attempts[outcome.stopped_account] == {2}
    assert outcome.pairs[outcome.stopped_account][:2] == (2, True)
    assert {account: pair[:2] for account, pair in outcome.pairs.items() if account != outcome.stopped_account} == {
        a: (1, True) for a in ACCOUNTS if a != outcome.stopped_account
    }
