"""A collector replica dies mid-scan: its in-flight check is not lost, and nothing is reported twice.

Two `kushim serve collector-iam` processes share the collector's durable consumer; the evidence service and the
scheduler run in the test's process, on a real nats-server, moto's server (three member accounts reached by
AssumeRole) and SQLite. A proxy in front of moto holds every AWS request `DELAY` seconds, so a scan lasts seconds.
Once both replicas are inside a scan (each logged `scan_started` for its account and not yet `scan_reported`, and
the consumer has two messages awaiting acks), one replica is SIGKILLed: it never acks, never publishes. After
`ack_wait` the server redelivers its message to the survivor, which scans that account again (attempt 2), and the
run completes COMPLETE with every account's findings stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from nats.aio.client import Client as NatsClient

from services.cli.client import KushimClient
from services.cli.stack import running_stack
from services.collector_iam.app import SPEC as IAM_SPEC
from shared import subjects
from shared.accounts import add_account
from shared.embedded import EmbeddedNats
from shared.messages import FindingsReported, RunState, Service
from shared.settings import Settings
from tests.bench.procs import kushim_command
from tests.helpers import eventually, nats_client, stream_models
from tests.proxy import TcpProxy
from tests.test_multi_account import member_client, role_account

ACCOUNTS = ("310000000001", "310000000002", "310000000003")
USERS = ("ana", "ben")
ACK_WAIT_SECONDS = 3.0
DELAY = 0.4
"""Seconds the proxy holds each AWS request. A scan after `scan_started` makes at least four sequential calls
(GenerateCredentialReport twice, GetCredentialReport, GetAccountSummary): over a second, against a 50 ms poll."""
RUN_TIMEOUT = 45.0
DURABLE = subjects.collector_durable(Service.IAM)


def user_name(account: str, user: str) -> str:
    return f"{user}-{account[-2:]}"


def seed(endpoint: str) -> None:
    for account in ACCOUNTS:
        iam = member_client(endpoint, account, "iam")
        for user in USERS:
            iam.create_user(UserName=user_name(account, user))


def generic(account: str, resource_id: str) -> str:
    """A resource id with the account's own names taken out, to compare accounts seeded alike."""
    resource_id = resource_id.replace(account, "<account>")
    for user in USERS:
        resource_id = resource_id.replace(user_name(account, user), user)
    return resource_id


def replica_env(settings: Settings, *, nats_url: str, endpoint: str, home: Path) -> dict[str, str]:
    """The environment of one `kushim serve collector-iam`: the test's (dummy AWS credentials, no KUSHIM_*) plus
    the same ack_wait as the in-process services (whoever declares the consumer last sets it)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("KUSHIM_")}
    env.update(
        {
            "KUSHIM_NATS_URL": nats_url,
            "KUSHIM_HOME": str(home),
            "KUSHIM_ACCOUNTS_FILE": str(settings.registry_path),
            "KUSHIM_ACK_WAIT_SECONDS": str(settings.ack_wait_seconds),
            "KUSHIM_RETRY_DELAY_SECONDS": str(settings.retry_delay_seconds),
            "KUSHIM_SCHEDULE_ENABLED": "false",
            "KUSHIM_LOG_LEVEL": "INFO",
            "KUSHIM_LOG_FORMAT": "json",
            "KUSHIM_HTTP_PORT": "0",  # no probe/metrics server (two replicas on one machine)
            "AWS_ENDPOINT_URL": endpoint,
        }
    )
    return env


class Replica:
    """One collector process, its log (JSON lines on stderr) read for the scans it started and reported."""

    def __init__(self, name: str, env: dict[str, str], log_file: Path, cwd: Path) -> None:
        self.name = name
        self.log_file = log_file
        with log_file.open("wb") as log:
            self.process = subprocess.Popen(
                kushim_command("collector-iam"), stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(cwd)
            )

    def events(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        with contextlib.suppress(OSError):
            for line in self.log_file.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    if isinstance(event, dict):
                        lines.append(event)
        return lines

    def scans(self, event: str) -> Counter[str]:
        """Accounts by how many times this replica logged `event` (scan_started, scan_reported) for them."""
        return Counter(str(e.get("account_id")) for e in self.events() if e.get("event") == event)

    def open_scans(self) -> list[str]:
        """Accounts this replica started scanning and has not reported."""
        return sorted((self.scans("scan_started") - self.scans("scan_reported")).elements())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_file.read_text(errors="replace")[-3000:]
        return ""


@contextlib.contextmanager
def replicas(n: int, env: dict[str, str], tmp_path: Path) -> Iterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for i in range(n):
            started.append(Replica(f"iam-{i}", env, tmp_path / f"collector-iam-{i}.log", tmp_path))
        yield started
    finally:
        for replica in started:
            replica.stop()


def stored_pairs(database: Path, run_id: str) -> dict[str, tuple[int, bool, int]]:
    """account -> (attempt, sealed, chunk_count) of the run's IAM pairs in the evidence database."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT account_id, attempt, sealed, chunk_count FROM evidence_pairs WHERE run_id = ? AND service = ?",
            (run_id, Service.IAM.value),
        ).fetchall()
    return {account: (attempt, bool(sealed), chunk_count) for account, attempt, sealed, chunk_count in rows}


@dataclass
class MidScan:
    """Two collector replicas, each inside a scan of the run `run` (a task ending with its run id)."""

    replicas: tuple[Replica, Replica]
    run: asyncio.Task[str]
    client: KushimClient
    nc: NatsClient
    database: Path
    proxy: TcpProxy


@contextlib.asynccontextmanager
async def two_replicas_mid_scan(
    e2e_settings: Callable[..., Settings],
    nats_server: EmbeddedNats,
    moto_endpoint: str,
    tmp_path: Path,
    *,
    ack_wait: float,
    replica_settings: dict[str, str] | None = None,
) -> AsyncIterator[MidScan]:
    """The three accounts seeded and registered, moto behind the proxy, the evidence service and the scheduler in
    this process, two `kushim serve collector-iam` replicas (`replica_settings`: more of their environment); a run
    over the accounts started, and yielded once both replicas are inside a scan (each logged `scan_started` for its
    account and not yet `scan_reported`, and the consumer has two messages awaiting acks)."""
    seed(moto_endpoint)
    registry = tmp_path / "accounts.toml"
    for account in ACCOUNTS:
        add_account(registry, role_account(account, f"member-{account[-2:]}"))
    database = tmp_path / "evidence.db"
    moto = urlsplit(moto_endpoint)
    async with TcpProxy(moto.hostname or "127.0.0.1", moto.port or 80, delay=DELAY) as proxy:
        settings = e2e_settings(
            accounts_file=registry,
            database_url=f"sqlite+aiosqlite:///{database}",
            ack_wait_seconds=ack_wait,
            retry_delay_seconds=0.2,
            log_level="WARNING",
        )
        env = replica_env(settings, nats_url=nats_server.url, endpoint=proxy.url, home=tmp_path / "replica-home")
        env.update(replica_settings or {})
        async with (
            running_stack(settings, services=["evidence", "scheduler"], migrate=True) as stack,
            nats_client(stack.url) as nc,
        ):
            js = nc.jetstream()
            with replicas(2, env, tmp_path) as (first, second):

                async def both_pulling() -> bool:
                    dead = [r for r in (first, second) if r.process.poll() is not None]
                    assert not dead, f"{dead[0].name} exited: {dead[0].log_tail()}"
                    with contextlib.suppress(Exception):  # not declared yet
                        return ((await js.consumer_info(subjects.STREAM_CHECKS, DURABLE)).num_waiting or 0) >= 2
                    return False

                await eventually(both_pulling, timeout=30, interval=0.1, what="both replicas pulling")
                client = await KushimClient.connect(stack.url)
                run = asyncio.create_task(
                    client.run_and_wait("two-replicas", services=[Service.IAM], timeout=RUN_TIMEOUT)
                )
                try:

                    async def both_inside_a_scan() -> bool:
                        if run.done():  # its exception, if it failed
                            raise AssertionError(f"the run ended before both replicas were scanning: {run.result()}")
                        if not (first.open_scans() and second.open_scans()):
                            return False
                        info = await js.consumer_info(subjects.STREAM_CHECKS, DURABLE)
                        return int(info.num_ack_pending) >= 2

                    await eventually(both_inside_a_scan, timeout=20, interval=0.05, what="both replicas scanning")
                    yield MidScan((first, second), run, client, nc, database, proxy)
                finally:
                    run.cancel()
                    with contextlib.suppress(BaseException):
                        await run
                    await client.close()


async def test_a_killed_replicas_check_is_redelivered_to_the_other_and_the_run_completes(
    e2e_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str, tmp_path: Path
) -> None:
    async with two_replicas_mid_scan(
        e2e_settings, nats_server, moto_endpoint, tmp_path, ack_wait=ACK_WAIT_SECONDS
    ) as mid:
        victim, survivor = mid.replicas
        (killed_account,) = victim.open_scans()
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(timeout=10)
        run_id = await asyncio.wait_for(mid.run, RUN_TIMEOUT + 5)
        report = await mid.client.report(run_id=run_id)
        info = await mid.nc.jetstream().consumer_info(subjects.STREAM_CHECKS, DURABLE)
        survivor_started = survivor.scans("scan_started")
        survivor_reported = survivor.scans("scan_reported")
        chunks = await stream_models(mid.nc, subjects.STREAM_FINDINGS, "kushim.findings.>", FindingsReported)
        database, proxy = mid.database, mid.proxy
    assert proxy.delayed > 0

    # The run is complete; the victim reported nothing, the survivor scanned and reported every account once (the
    # killed replica's account on its redelivery), and nothing stayed pending.
    assert report.run.state is RunState.COMPLETE
    assert victim.process.returncode == -signal.SIGKILL
    assert victim.scans("scan_started") == Counter([killed_account])
    assert victim.scans("scan_reported") == Counter()
    assert survivor_reported == survivor_started == Counter(ACCOUNTS)
    assert info.delivered.consumer_seq == len(ACCOUNTS) + 1  # three deliveries and one redelivery
    assert info.delivered.stream_seq == len(ACCOUNTS)
    assert info.num_ack_pending == 0
    assert info.num_pending == 0

    # The killed replica's check was redelivered: its account's findings are attempt 2's, published once; every
    # other account's are attempt 1's. No attempt's chunks were published twice or mixed with another's.
    by_pair: dict[str, list[FindingsReported]] = {}
    for chunk in chunks:
        assert chunk.run_id == run_id
        by_pair.setdefault(chunk.account_id, []).append(chunk)
    assert sorted(by_pair) == sorted(ACCOUNTS)
    for account, pair_chunks in by_pair.items():
        expected_attempt = 2 if account == killed_account else 1
        assert {c.attempt for c in pair_chunks} == {expected_attempt}, account
        assert sorted(c.chunk_index for c in pair_chunks) == list(range(pair_chunks[0].chunk_count)), account
    pairs = stored_pairs(database, run_id)
    assert pairs == {
        account: (2 if account == killed_account else 1, True, len(by_pair[account])) for account in ACCOUNTS
    }

    # Every account's findings, stored once: IAM checks' findings about its root user and its users, the same set
    # for the killed replica's account as for the others (seeded alike, each scanned once without a failure).
    findings_by_account: dict[str, list[tuple[str, str]]] = {}
    for finding in report.findings:
        findings_by_account.setdefault(finding.account_id, []).append((finding.check_id, finding.resource_id))
    assert len({f.finding_id for f in report.findings}) == len(report.findings)
    assert sorted(findings_by_account) == sorted(ACCOUNTS)
    reported = {account: sum(len(c.findings) for c in by_pair[account]) for account in ACCOUNTS}
    expected_checks = {check.info.id for check in IAM_SPEC.checks}
    shapes = set()
    for account, found in findings_by_account.items():
        assert len(found) == len(set(found)) == reported[account], account
        assert {check for check, _ in found} <= expected_checks, account
        users = {resource.removeprefix("user/") for _, resource in found if resource.startswith("user/")}
        assert users == {user_name(account, user) for user in USERS}, account
        shapes.add(frozenset((check, generic(account, resource)) for check, resource in found))
    assert len(shapes) == 1, "the accounts, seeded alike, do not have the same findings"
