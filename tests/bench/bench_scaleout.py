"""Horizontal scale-out of the collectors, every service in its own process: `python -m tests.bench.bench_scaleout`.

The issue's scale test. Once:

1. moto's server in a child process behind a request counter (`tests/bench/moto_counting.py`), seeded with
   `--accounts` member accounts (20) reached by sts:AssumeRole, each alike: `--users` IAM users (30), `--buckets`
   S3 buckets (10, mixed encryption and versioning) and `--trails` CloudTrail trails (1, logging);
2. a latency proxy in front of it (`tests/proxy.py` with `delay=`, in a thread of this process, its CPU time read
   per thread): every AWS request waits `--delay` seconds (50 ms) before it is forwarded. moto answers each request
   with `Connection: close`, so each request is a connection of its own; the delay is per request either way (the
   proxy holds every client turn, keep-alive or not), and the benchmark checks that the proxy held as many requests
   as moto answered;
3. the account registry: the `--accounts` accounts, each with an AssumeRole access.

Then for each replica count R of `--replicas` (1,2,4), on a fresh nats-server and a fresh evidence database (SQLite
in a temporary folder; PostgreSQL when KUSHIM_TEST_POSTGRES_DSN is set: a database created for the count and dropped
after), with `KUSHIM_AWS_CONCURRENCY=--concurrency` (4) per scan:

4. starts one `kushim serve scheduler`, one `kushim serve evidence` and R `kushim serve collector-<service>` processes
   for each of iam, s3 and cloudtrail (3R collectors), the replicas of a collector sharing its one durable consumer;
   waits until every replica has a pull request waiting;
5. runs `--warmup` unmeasured runs (1), then `--repeat` measured runs (3): one RunRequested over every registered
   account and all three services (accounts x 3 checks), timed from the request to its RunCompleted;
6. for each run reads: its wall time and throughput (checks per second); each process's CPU time (/proc/<pid>/stat;
   the proxy's thread alone) and the whole machine's (/proc/stat), as % of the run's wall time; the AWS requests
   moto answered; and that every check ran exactly once: in the evidence database every (account, service) pair of
   the run is present once, sealed, from attempt 1 with all its chunks and no chunk of another attempt; the
   collectors' consumers delivered each CheckRequested once (consumer sequence up by the number of accounts, nothing
   redelivered or pending); each replica's log says how many scans it reported (the work split).

No evidence bucket is set (evidence stays in the database): the AWS requests are the collectors' scans and their
AssumeRole / GetCallerIdentity. It prints Markdown tables (per replica count: the median run, the speed-up over the
first count, CPU; where the CPU went; the scans) and the CPU floor: the benchmarked processes' CPU seconds per run
over the machine's CPUs, the shortest run this machine allows for the work whatever the replica count. With
`--json PATH` it writes everything as JSON. A run that is not COMPLETE, an unexpected ERROR finding (moto does
not implement CloudTrail LookupEvents, so `cloudtrail.recent_activity` is ERROR), or a check not run exactly once is a
problem: exit 1. The issue's throughput target (the largest replica count at least `TARGET_SPEEDUP` = 3x the
throughput of the first) is reported, not enforced, unless `--strict-target` (exit 2 when missed).

Every process started here (moto, nats-servers, services) is stopped on the way out: after the last run, on a
failure, on Ctrl-C and on SIGTERM (only a SIGKILL of the benchmark itself leaves them behind). Settings come from
arguments only (the user's AWS_* / KUSHIM_* environment is never passed on). Not a test: pytest does not collect this
file, and importing it does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from services.cli.client import KushimClient
from shared import subjects
from shared.accounts import Account, AssumeRoleAccess, add_accounts
from shared.embedded import start_nats
from shared.messages import RunState, Service, Status
from tests.bench.moto_counting import counting_moto, fetch_calls, reset_calls
from tests.bench.procs import process_cpu, status_kib, thread_cpu
from tests.bench.stack import ServiceProcess, base_env, start_service, stop_services, wait_ready, watched
from tests.bench.tables import markdown_table
from tests.proxy import TcpProxy

REGION = "us-east-1"
ROLE = "KushimAudit"
SEED_KEY = "bench-seed"
DUMMY_SECRET = "bench-secret"  # moto accepts any credentials
FIRST_ACCOUNT = 200_000_000_001
COLLECTORS: dict[str, Service] = {
    "collector-iam": Service.IAM,
    "collector-s3": Service.S3,
    "collector-cloudtrail": Service.CLOUDTRAIL,
}
ALLOWED_ERROR_CHECKS = frozenset({"cloudtrail.recent_activity"})
"""moto does not implement CloudTrail LookupEvents (HTTP 500): recent activity cannot be read, the check is ERROR."""
TARGET_SPEEDUP = 3.0
"""The issue's target: 4 replicas of each collector >= 3x the throughput of 1."""
POSTGRES_ENV = "KUSHIM_TEST_POSTGRES_DSN"
RUN_TIMEOUT_SECONDS = 900.0
RUN_DEADLINE_SECONDS = 800.0
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 30.0


# ---------------------------------------------------------------------------------------------
# The accounts
# ---------------------------------------------------------------------------------------------


def account_ids(n: int) -> list[str]:
    return [str(FIRST_ACCOUNT + i) for i in range(n)]


def role_arn(account: str) -> str:
    return f"arn:aws:iam::{account}:role/{ROLE}"


def _hub_sts(endpoint: str) -> Any:
    import boto3  # the `demo` extra (moto) brings boto3

    return boto3.client(
        "sts",
        region_name=REGION,
        endpoint_url=endpoint,
        aws_access_key_id=SEED_KEY,
        aws_secret_access_key=DUMMY_SECRET,
    )


def _member_clients(endpoint: str, account: str) -> dict[str, Any]:
    """boto3 clients inside a member account of moto (an assumed role there)."""
    import boto3

    creds = _hub_sts(endpoint).assume_role(RoleArn=role_arn(account), RoleSessionName="bench-seed")["Credentials"]
    session = boto3.session.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
        region_name=REGION,
    )
    return {service: session.client(service, endpoint_url=endpoint) for service in ("iam", "s3", "cloudtrail")}


def bucket_names(account: str, buckets: int) -> list[str]:
    return [f"bench-{account}-{index:03d}" for index in range(buckets)]  # S3 bucket names are global in moto


def seed_account(endpoint: str, account: str, *, users: int, buckets: int, trails: int) -> None:
    """One member account: users (every 3rd with a console password, every 4th with an access key), buckets (every
    other one encrypted, every 3rd versioned) and logging trails writing to its first bucket."""
    clients = _member_clients(endpoint, account)
    iam, s3, cloudtrail = clients["iam"], clients["s3"], clients["cloudtrail"]
    for index in range(users):
        name = f"bench-user-{index:03d}"
        iam.create_user(UserName=name)
        if index % 3 == 0:
            iam.create_login_profile(UserName=name, Password="Bench-Passw0rd-Not-Real!")  # moto only
        if index % 4 == 0:
            iam.create_access_key(UserName=name)
    for index, bucket in enumerate(bucket_names(account, buckets)):
        s3.create_bucket(Bucket=bucket)
        if index % 2 == 0:
            rule = {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
            s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={"Rules": [rule]})
        if index % 3 == 0:
            s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    for index in range(trails):
        name = f"bench-trail-{index}"
        cloudtrail.create_trail(Name=name, S3BucketName=bucket_names(account, buckets)[0], IsMultiRegionTrail=True)
        cloudtrail.start_logging(Name=name)


def seed_accounts(endpoint: str, accounts: Sequence[str], *, users: int, buckets: int, trails: int) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=min(8, len(accounts)), thread_name_prefix="seed") as pool:
        futures = [
            pool.submit(seed_account, endpoint, account, users=users, buckets=buckets, trails=trails)
            for account in accounts
        ]
        for future in futures:
            future.result()
    return time.perf_counter() - started


def write_registry(path: Path, accounts: Sequence[str]) -> None:
    entries = [
        Account(
            id=account,
            name=f"bench-{account[-3:]}",
            access=AssumeRoleAccess(
                kind="assume_role", role_arn=role_arn(account), external_id=f"kushim-bench-{account}"
            ),
        )
        for account in accounts
    ]
    add_accounts(path, entries)


# ---------------------------------------------------------------------------------------------
# The latency proxy, in a thread with its own event loop
# ---------------------------------------------------------------------------------------------


class ProxyThread:
    """`TcpProxy(delay=...)` in front of moto, served by a thread of this process (its CPU time is that thread's)."""

    def __init__(self, target: str, delay: float) -> None:
        parts = urlsplit(target)
        self._proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 80, delay=delay)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="latency-proxy", daemon=True)
        self.native_id = 0

    def _serve(self) -> None:
        self.native_id = threading.get_native_id()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._proxy.start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._proxy.stop())
        self._loop.close()

    def __enter__(self) -> ProxyThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise RuntimeError(f"the latency proxy did not start: {self._error}") from self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)

    @property
    def url(self) -> str:
        return self._proxy.url

    def counts(self) -> tuple[int, int]:
        """(connections accepted, requests held) since start."""
        return self._proxy.accepted, self._proxy.delayed

    def cpu(self) -> float | None:
        return thread_cpu(os.getpid(), self.native_id)


# ---------------------------------------------------------------------------------------------
# The services, one process each
# ---------------------------------------------------------------------------------------------


def reported_scans(svc: ServiceProcess, run_id: str) -> int:
    """`scan_reported` lines of this run in a replica's (JSON) log: checks it scanned and published."""
    count = 0
    with contextlib.suppress(OSError), svc.log_file.open(errors="replace") as log:
        for line in log:
            if '"scan_reported"' in line and run_id in line:
                with contextlib.suppress(ValueError):
                    event = json.loads(line)
                    count += event.get("event") == "scan_reported" and event.get("run_id") == run_id
    return count


def service_env(
    name: str,
    *,
    home: Path,
    nats_url: str,
    endpoint: str,
    database_url: str,
    registry: Path,
    concurrency: int,
) -> dict[str, str]:
    """The environment of one `kushim serve` process: `base_env` with the account registry, JSON logs. Collectors
    log at INFO (one line per scan started and reported: the work split); the others at WARNING."""
    settings = {
        "KUSHIM_DATABASE_URL": database_url,
        "KUSHIM_ACCOUNTS_FILE": str(registry),
        "KUSHIM_AWS_CONCURRENCY": str(concurrency),
        "KUSHIM_RUN_DEADLINE_SECONDS": str(RUN_DEADLINE_SECONDS),
        "KUSHIM_LOG_LEVEL": "INFO" if name.startswith("collector-") else "WARNING",
        "KUSHIM_LOG_FORMAT": "json",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": f"bench-{name}",  # the hub's credentials; member accounts by AssumeRole
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
    }
    return base_env(home, nats_url=nats_url, region=REGION, settings=settings)


# ---------------------------------------------------------------------------------------------
# The evidence database
# ---------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def evidence_database(tmp: Path, label: str) -> AsyncIterator[str]:
    """A fresh, migrated evidence database: SQLite in `tmp`, or a new PostgreSQL database when POSTGRES_ENV is set
    (dropped on exit)."""
    from services.cli.stack import migrate_database
    from shared.settings import Settings

    dsn = os.environ.get(POSTGRES_ENV)
    if not dsn:
        url = f"sqlite+aiosqlite:///{tmp / f'evidence-{label}.db'}"
        await migrate_database(Settings(_env_file=None, database_url=url, home=tmp))
        yield url
        return
    from tests.bench.bench_evidence import postgres_database

    async with postgres_database(dsn) as url:
        await migrate_database(Settings(_env_file=None, database_url=url, home=tmp))
        yield url


@dataclass
class OnceCheck:
    """What the evidence database says about one run's pairs."""

    pairs: int
    missing: list[str]
    not_first_attempt: list[str]
    unsealed: list[str]
    chunk_mismatch: list[str]
    other_attempt_chunks: int
    findings: int
    scan_seconds: dict[str, list[float]]
    """Per service: each pair's scan time (the collector's started_at -> finished_at)."""

    def problems(self) -> list[str]:
        out = []
        for label, items in (
            ("missing pairs", self.missing),
            ("pairs not from attempt 1", self.not_first_attempt),
            ("unsealed pairs", self.unsealed),
            ("pairs whose stored chunks differ from their chunk_count", self.chunk_mismatch),
        ):
            if items:
                out.append(f"{label}: {', '.join(items[:5])}" + (" ..." if len(items) > 5 else ""))
        if self.other_attempt_chunks:
            out.append(f"{self.other_attempt_chunks} chunks of an attempt other than 1")
        return out


def _seconds(start: Any, end: Any) -> float | None:
    if start is None or end is None:
        return None
    a = start if isinstance(start, datetime) else datetime.fromisoformat(str(start))
    b = end if isinstance(end, datetime) else datetime.fromisoformat(str(end))
    return (b - a).total_seconds()


async def check_once(database_url: str, run_id: str, accounts: Sequence[str]) -> OnceCheck:
    """Every (account, service) pair of the run exactly once: present, sealed, attempt 1, every chunk of attempt 1
    stored and none of another attempt (a second scan of a check is a second attempt: its delivery count)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            pair_rows = (
                await conn.execute(
                    text(
                        "SELECT account_id, service, attempt, sealed, chunk_count, started_at, finished_at,"
                        " (SELECT COUNT(*) FROM evidence_chunks c WHERE c.run_id = p.run_id"
                        "  AND c.account_id = p.account_id AND c.service = p.service AND c.attempt = 1)"
                        " FROM evidence_pairs p WHERE p.run_id = :run"
                    ),
                    {"run": run_id},
                )
            ).all()
            other = await conn.scalar(
                text("SELECT COUNT(*) FROM evidence_chunks WHERE run_id = :run AND attempt <> 1"), {"run": run_id}
            )
            findings = await conn.scalar(
                text("SELECT COUNT(*) FROM evidence_findings WHERE run_id = :run"), {"run": run_id}
            )
    finally:
        await engine.dispose()
    seen: Counter[tuple[str, str]] = Counter()
    check = OnceCheck(0, [], [], [], [], int(other or 0), int(findings or 0), {})
    for account, service, attempt, sealed, chunk_count, started, finished, first_chunks in pair_rows:
        pair = f"{account}/{service}"
        seen[(account, service)] += 1
        if attempt != 1:
            check.not_first_attempt.append(f"{pair} (attempt {attempt})")
        if not sealed:
            check.unsealed.append(pair)
        if chunk_count is None or int(first_chunks) != int(chunk_count):
            check.chunk_mismatch.append(f"{pair} ({first_chunks} of {chunk_count})")
        scan = _seconds(started, finished)
        if scan is not None:
            check.scan_seconds.setdefault(service, []).append(scan)
    check.pairs = sum(seen.values())
    expected = {(account, service.value) for account in accounts for service in COLLECTORS.values()}
    check.missing = sorted(f"{a}/{s}" for a, s in expected - set(seen))
    check.missing += sorted(f"{a}/{s} (x{n})" for (a, s), n in seen.items() if n != 1 or (a, s) not in expected)
    return check


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all CPUs (/proc/stat)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return (total - idle) / ticks, total / ticks


@dataclass
class ConsumerDelta:
    """A collector's durable consumer over one run: deliveries (its consumer sequence's growth: a redelivery counts
    again) and what it still held at the end."""

    deliveries: int
    redelivered: int
    ack_pending: int
    pending: int


@dataclass
class RunResult:
    label: str
    run_id: str
    wall_seconds: float
    state: str
    checks: int
    findings: int
    error_checks: dict[str, int]
    aws_requests: int
    """Requests moto answered during the run (every caller; AssumeRole and GetCallerIdentity included)."""
    aws_requests_by_operation: dict[str, int]
    proxy_connections: int
    proxy_delayed: int
    cpu_seconds: dict[str, float]
    """Each process during the run (`proxy`: its thread; `bench`: this process without the proxy thread)."""
    machine_busy_seconds: float
    machine_cpu_seconds: float
    """Wall time x CPUs: the most the machine could have done."""
    scans_by_replica: dict[str, int]
    consumers: dict[str, ConsumerDelta]
    once: OnceCheck
    problems: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.checks / self.wall_seconds

    def collectors_cpu(self) -> float:
        return sum(seconds for name, seconds in self.cpu_seconds.items() if name.startswith("collector-"))


async def consumer_state(url: str) -> dict[str, Any]:
    import nats

    nc = await nats.connect(url, connect_timeout=5)
    try:
        js = nc.jetstream()
        return {
            name: await js.consumer_info(subjects.STREAM_CHECKS, subjects.collector_durable(service))
            for name, service in COLLECTORS.items()
        }
    finally:
        await nc.close()


def _cpu(pids: dict[str, int], proxy: ProxyThread) -> dict[str, float | None]:
    values = {name: process_cpu(pid) for name, pid in pids.items()}
    values["proxy"] = proxy.cpu()
    return values


async def one_run(
    label: str,
    *,
    url: str,
    moto_endpoint: str,
    proxy: ProxyThread,
    services: Sequence[ServiceProcess],
    pids: dict[str, int],
    database_url: str,
    accounts: Sequence[str],
) -> RunResult:
    request_id = f"bench-scaleout-{label}-{uuid.uuid4().hex[:8]}"
    consumers_before = await consumer_state(url)
    reset_calls(moto_endpoint)
    proxy_before = proxy.counts()
    client = await KushimClient.connect(url)
    try:
        cpu0 = _cpu(pids, proxy)
        machine0 = machine_cpu()
        t0 = time.perf_counter()
        run_id = await watched(client.run_and_wait(request_id, timeout=RUN_TIMEOUT_SECONDS), services)
        wall = time.perf_counter() - t0
        machine1 = machine_cpu()
        cpu1 = _cpu(pids, proxy)
        proxy_after = proxy.counts()
        calls = fetch_calls(moto_endpoint)
        report = await client.report(run_id=run_id)
    finally:
        await client.close()
    consumers_after = await consumer_state(url)
    cpu = {
        name: round(after - before, 3)
        for name, before in cpu0.items()
        if before is not None and (after := cpu1.get(name)) is not None
    }
    if "bench" in cpu and "proxy" in cpu:
        cpu["bench"] = round(cpu["bench"] - cpu["proxy"], 3)
    by_operation: Counter[str] = Counter()
    for row in calls["calls"]:
        by_operation[f"{row['service']}:{row['operation']}"] += row["count"]
    errors: Counter[str] = Counter(f.check_id for f in report.findings if f.status is Status.ERROR)
    consumers = {}
    for name, after in consumers_after.items():
        before = consumers_before[name]
        consumers[name] = ConsumerDelta(
            deliveries=after.delivered.consumer_seq - before.delivered.consumer_seq,
            redelivered=after.num_redelivered,
            ack_pending=after.num_ack_pending,
            pending=after.num_pending,
        )
    once = await check_once(database_url, run_id, accounts)
    run = RunResult(
        label=label,
        run_id=run_id,
        wall_seconds=wall,
        state=report.run.state.value,
        checks=len(accounts) * len(COLLECTORS),
        findings=len(report.findings),
        error_checks=dict(sorted(errors.items())),
        aws_requests=int(calls["total"]),
        aws_requests_by_operation=dict(by_operation.most_common()),
        proxy_connections=proxy_after[0] - proxy_before[0],
        proxy_delayed=proxy_after[1] - proxy_before[1],
        cpu_seconds=cpu,
        machine_busy_seconds=round(machine1[0] - machine0[0], 3),
        machine_cpu_seconds=round(wall * (os.cpu_count() or 1), 3),
        scans_by_replica={svc.name: reported_scans(svc, run_id) for svc in services if svc.service in COLLECTORS},
        consumers=consumers,
        once=once,
    )
    run.problems = run_problems(run, len(accounts))
    return run


def run_problems(run: RunResult, accounts: int) -> list[str]:
    problems = []
    if run.state != RunState.COMPLETE.value:
        problems.append(f"state {run.state}")
    unexpected = {check: n for check, n in run.error_checks.items() if check not in ALLOWED_ERROR_CHECKS}
    if unexpected:
        problems.append(f"ERROR findings {unexpected}")
    problems += run.once.problems()
    if run.once.findings != run.findings:
        problems.append(f"{run.once.findings} findings in the database, {run.findings} in the report")
    for name, delta in run.consumers.items():
        if delta.deliveries != accounts:
            problems.append(f"{name}: {delta.deliveries} deliveries of CheckRequested, not {accounts}")
        if delta.redelivered or delta.ack_pending or delta.pending:
            problems.append(
                f"{name}: {delta.redelivered} redelivered, {delta.ack_pending} unacked, {delta.pending} left"
            )
    for collector in COLLECTORS:
        scans = sum(n for name, n in run.scans_by_replica.items() if name.startswith(f"{collector}-"))
        if scans != accounts:
            problems.append(f"{collector}: its replicas logged {scans} scans, not {accounts}")
    if run.proxy_delayed != run.aws_requests:
        problems.append(f"the proxy held {run.proxy_delayed} requests, moto answered {run.aws_requests}")
    return problems


# ---------------------------------------------------------------------------------------------
# One replica count
# ---------------------------------------------------------------------------------------------


@dataclass
class ReplicaResult:
    replicas: int
    start_seconds: float
    warmup: list[RunResult]
    runs: list[RunResult]
    peak_rss_kib: dict[str, int]
    stop_codes: dict[str, int | None]
    problems: list[str]

    def median_run(self) -> RunResult:
        ordered = sorted(self.runs, key=lambda run: run.wall_seconds)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def median_seconds(self) -> float:
        return statistics.median(run.wall_seconds for run in self.runs)

    @property
    def throughput(self) -> float:
        return self.runs[0].checks / self.median_seconds


async def bench_replicas(
    replicas: int,
    *,
    tmp: Path,
    moto_endpoint: str,
    moto_pid: int,
    proxy: ProxyThread,
    registry: Path,
    accounts: Sequence[str],
    concurrency: int,
    warmup: int,
    repeat: int,
) -> ReplicaResult:
    home = tmp / f"replicas-{replicas}"
    (home / "home").mkdir(parents=True, exist_ok=True)
    nats = start_nats(home / "jetstream")
    services: list[ServiceProcess] = []
    stop_codes: dict[str, int | None] = {}
    try:
        async with evidence_database(tmp, f"r{replicas}") as database_url:
            started = time.perf_counter()

            def env(name: str) -> dict[str, str]:
                return service_env(
                    name,
                    home=home,
                    nats_url=nats.url,
                    endpoint=proxy.url,
                    database_url=database_url,
                    registry=registry,
                    concurrency=concurrency,
                )

            try:
                services.append(start_service("evidence", env("evidence"), home))
                for collector in COLLECTORS:
                    for index in range(replicas):
                        name = f"{collector}-{index + 1}"
                        services.append(start_service(collector, env(name), home, name=name))
                services.append(start_service("scheduler", env("scheduler"), home))
                pulls = {subjects.collector_durable(service): replicas for service in COLLECTORS.values()}
                await wait_ready(nats.url, services, READY_TIMEOUT_SECONDS, pulls)
                start_seconds = time.perf_counter() - started
                print(f"  {len(services)} processes ready in {start_seconds:.1f}s", file=sys.stderr)
                pids = {svc.name: svc.pid for svc in services} | {
                    "moto": moto_pid,
                    "nats-server": nats.process.pid,
                    "bench": os.getpid(),
                }
                results: list[RunResult] = []
                for index in range(warmup + repeat):
                    measured = index >= warmup
                    label = f"r{replicas}-{'run' if measured else 'warmup'}{index - warmup if measured else index}"
                    run = await one_run(
                        label,
                        url=nats.url,
                        moto_endpoint=moto_endpoint,
                        proxy=proxy,
                        services=services,
                        pids=pids,
                        database_url=database_url,
                        accounts=accounts,
                    )
                    results.append(run)
                    print(
                        f"  {'run' if measured else 'warm-up'} {label}: {run.wall_seconds:.2f}s, "
                        f"{run.throughput:.2f} checks/s, {run.aws_requests} AWS requests, collectors CPU "
                        f"{100 * run.collectors_cpu() / run.wall_seconds:.0f}%, moto "
                        f"{100 * run.cpu_seconds.get('moto', 0) / run.wall_seconds:.0f}%, machine "
                        f"{100 * run.machine_busy_seconds / run.machine_cpu_seconds:.0f}% busy, {run.state}"
                        + (f"; PROBLEMS: {run.problems}" if run.problems else ""),
                        file=sys.stderr,
                    )
                peaks = {svc.name: peak for svc in services if (peak := status_kib(svc.pid, "VmHWM")) is not None}
            finally:
                stop_codes = {
                    name: stats.returncode for name, stats in stop_services(services, STOP_TIMEOUT_SECONDS).items()
                }
    finally:
        nats.stop()
    problems = [f"{run.label}: {problem}" for run in results for problem in run.problems]
    problems += [
        f"{name} did not stop cleanly on SIGTERM (exit {code})"
        for name, code in stop_codes.items()
        if code not in (0, -signal.SIGTERM)
    ]
    return ReplicaResult(
        replicas=replicas,
        start_seconds=start_seconds,
        warmup=results[:warmup],
        runs=results[warmup:],
        peak_rss_kib=peaks,
        stop_codes=stop_codes,
        problems=problems,
    )


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _pct(seconds: float, wall: float) -> str:
    return f"{100 * seconds / wall:.0f}"


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def main_table(results: Sequence[ReplicaResult], accounts: int) -> str:
    base = results[0]
    header = (
        "| replicas per collector (processes) | run to RunCompleted, median (s) | runs (s) | checks/s "
        f"| speed-up vs {base.replicas} | collectors' CPU, sum (% of one CPU) | per collector process (%) | moto (%) "
        f"| machine busy (% of its {os.cpu_count()} CPUs) | AWS requests | every check exactly once |"
    )
    lines: list[str] = []
    for result in results:
        run = result.median_run()
        wall = run.wall_seconds
        per_process = " / ".join(
            f"{name.removeprefix('collector-')} {_pct(seconds, wall)}"
            for name, seconds in sorted(run.cpu_seconds.items())
            if name.startswith("collector-")
        )
        once = all(not r.problems for r in result.runs)
        split = " ".join(
            f"{collector.removeprefix('collector-')} "
            + "/".join(str(n) for name, n in sorted(run.scans_by_replica.items()) if name.startswith(f"{collector}-"))
            for collector in COLLECTORS
        )
        lines.append(
            f"| {result.replicas} ({3 * result.replicas} + 2) | {result.median_seconds:.2f} "
            f"| {', '.join(f'{r.wall_seconds:.2f}' for r in result.runs)} | {result.throughput:.2f} "
            f"| {result.throughput / base.throughput:.2f}x | {_pct(run.collectors_cpu(), wall)} | {per_process} "
            f"| {_pct(run.cpu_seconds.get('moto', 0.0), wall)} "
            f"| {100 * run.machine_busy_seconds / run.machine_cpu_seconds:.0f} | {run.aws_requests} "
            f"| {'yes' if once else '**no**'}: {run.once.pairs}/{accounts * 3} pairs, attempt 1; scans per "
            f"replica {split} |"
        )
    return markdown_table(header, lines, left=(-1,))


def _per_request(seconds: float, run: RunResult) -> str:
    return f"{1000 * seconds / run.aws_requests:.1f}" if run.aws_requests else "-"


CPU_COLUMNS = ("collectors", "moto", "proxy", "nats-server", "evidence", "scheduler", "bench")


def cpu_table(results: Sequence[ReplicaResult]) -> str:
    """Where the machine's CPU went during the median run: each part's CPU time as % of one CPU (the machine has
    `os.cpu_count()` CPUs: 100% x CPUs is everything), the rest of the machine (other processes) and idle."""
    cpus = os.cpu_count() or 1
    header = (
        "| replicas | "
        + " | ".join(f"{name} (%)" for name in CPU_COLUMNS)
        + f" | other processes (%) | machine busy (% of {cpus * 100}) | idle (%) "
        "| CPU per AWS request: collectors / moto / proxy (ms) "
        f"| CPU of the benchmarked processes per run (s) | floor on {cpus} CPUs (s) |"
    )
    lines: list[str] = []
    for result in results:
        run = result.median_run()
        wall = run.wall_seconds
        parts = {name: run.cpu_seconds.get(name, 0.0) for name in CPU_COLUMNS if name != "collectors"}
        parts["collectors"] = run.collectors_cpu()
        ours = sum(parts.values())
        other = max(0.0, run.machine_busy_seconds - ours)
        idle = max(0.0, run.machine_cpu_seconds - run.machine_busy_seconds)
        lines.append(
            f"| {result.replicas} | "
            + " | ".join(_pct(parts[name], wall) for name in CPU_COLUMNS)
            + f" | {_pct(other, wall)} | {_pct(run.machine_busy_seconds, wall)} | {_pct(idle, wall)} "
            f"| {_per_request(parts['collectors'], run)} / {_per_request(parts['moto'], run)} "
            f"/ {_per_request(parts['proxy'], run)} | {ours:.1f} | {ours / cpus:.1f} |"
        )
    return markdown_table(header, lines)


def cpu_floor(result: ReplicaResult) -> float:
    """The shortest run this machine allows for this work: the benchmarked processes' CPU seconds in the median run
    (this script's driver excluded) over the machine's CPUs, even with no other process and perfect overlap."""
    run = result.median_run()
    ours = sum(seconds for name, seconds in run.cpu_seconds.items() if name != "bench")
    return ours / (os.cpu_count() or 1)


def scan_table(results: Sequence[ReplicaResult]) -> str:
    """Per collector: one scan's time (median over the run's accounts, the median run) and the scans' sum / replicas
    (the run's lower bound if the work were split evenly and nothing else took time)."""
    header = (
        "| replicas | "
        + " | ".join(f"{service.value}: scan median (s) / sum÷replicas (s)" for service in COLLECTORS.values())
        + " | AssumeRole requests | AWS requests per run |"
    )
    lines: list[str] = []
    for result in results:
        run = result.median_run()
        cells = []
        for service in COLLECTORS.values():
            scans = run.once.scan_seconds.get(service.value, [])
            cells.append(f"{_median(scans):.2f} / {sum(scans) / result.replicas:.1f}")
        assume = run.aws_requests_by_operation.get("sts:AssumeRole", 0)
        lines.append(f"| {result.replicas} | " + " | ".join(cells) + f" | {assume} | {run.aws_requests} |")
    return markdown_table(header, lines)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _replica_counts(value: str) -> list[int]:
    try:
        counts = [int(part) for part in value.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of counts: {value!r}") from exc
    if not counts or any(count < 1 or count > 16 for count in counts):
        raise argparse.ArgumentTypeError("replica counts between 1 and 16")
    return counts


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_scaleout",
        description="Collector scale-out: 1, 2, 4 replicas of each collector over many accounts behind AWS latency.",
    )
    parser.add_argument("--accounts", type=int, default=20, help="member accounts (default 20)")
    parser.add_argument("--users", type=int, default=30, help="IAM users per account (default 30)")
    parser.add_argument("--buckets", type=int, default=10, help="S3 buckets per account (default 10)")
    parser.add_argument("--trails", type=int, default=1, help="CloudTrail trails per account (default 1)")
    parser.add_argument("--delay", type=float, default=0.05, help="seconds added to every AWS request (default 0.05)")
    parser.add_argument("--concurrency", type=int, default=4, help="KUSHIM_AWS_CONCURRENCY per scan (default 4)")
    parser.add_argument("--replicas", type=_replica_counts, default=[1, 2, 4], help="replica counts (default 1,2,4)")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured runs per replica count (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per replica count (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write the results as JSON to this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, SQLite databases)")
    parser.add_argument(
        "--strict-target", action="store_true", help=f"exit 2 when the largest count is < {TARGET_SPEEDUP}x the first"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.accounts <= 500 or args.users < 0 or args.buckets < 1 or args.trails < 0:
        parser.error("--accounts 1..500, --users >= 0, --buckets >= 1, --trails >= 0")
    if args.delay < 0 or not 1 <= args.concurrency <= 64 or args.warmup < 0 or args.repeat < 1:
        parser.error("--delay >= 0, --concurrency 1..64, --warmup >= 0, --repeat >= 1")
    return args


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds every `finally`: processes are stopped, folders removed


@contextlib.contextmanager
def _temporary(keep: bool) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="kushim-bench-scaleout-"))
    try:
        yield tmp
    finally:
        if keep:
            print(f"logs and databases kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


async def _bench(args: argparse.Namespace, tmp: Path, accounts: list[str]) -> dict[str, Any]:
    with contextlib.ExitStack() as stack:
        moto = stack.enter_context(counting_moto(tmp / "moto"))
        print(
            f"seeding {len(accounts)} accounts ({args.users} users, {args.buckets} buckets, {args.trails} trails "
            "each) ...",
            file=sys.stderr,
        )
        seed_seconds = await asyncio.to_thread(
            seed_accounts, moto.endpoint, accounts, users=args.users, buckets=args.buckets, trails=args.trails
        )
        print(f"seeded in {seed_seconds:.1f}s", file=sys.stderr)
        registry = tmp / "accounts.toml"
        write_registry(registry, accounts)
        proxy = stack.enter_context(ProxyThread(moto.endpoint, args.delay))
        results: list[ReplicaResult] = []
        for replicas in args.replicas:
            print(
                f"{replicas} replica(s) of each collector: {args.warmup} warm-up + {args.repeat} runs ...",
                file=sys.stderr,
            )
            results.append(
                await bench_replicas(
                    replicas,
                    tmp=tmp,
                    moto_endpoint=moto.endpoint,
                    moto_pid=moto.pid,
                    proxy=proxy,
                    registry=registry,
                    accounts=accounts,
                    concurrency=args.concurrency,
                    warmup=args.warmup,
                    repeat=args.repeat,
                )
            )
        moto_rss = status_kib(moto.pid, "VmHWM")
    return {"seed_seconds": seed_seconds, "results": results, "moto_peak_rss_kib": moto_rss}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    accounts = account_ids(args.accounts)
    started = time.perf_counter()
    try:
        with _temporary(args.keep) as tmp:
            outcome = asyncio.run(_bench(args, tmp, accounts))
    except KeyboardInterrupt:
        print("interrupted: every process started was stopped", file=sys.stderr)
        return 130
    results: list[ReplicaResult] = outcome["results"]
    total = time.perf_counter() - started
    problems = [f"{r.replicas} replicas: {problem}" for r in results for problem in r.problems]
    base, last = results[0], results[-1]
    speedup = last.throughput / base.throughput
    met = speedup >= TARGET_SPEEDUP
    database = "PostgreSQL" if os.environ.get(POSTGRES_ENV) else "SQLite"
    print(
        f"{len(accounts)} accounts x 3 services = {len(accounts) * 3} checks per run; {args.users} IAM users, "
        f"{args.buckets} S3 buckets, {args.trails} trail(s) per account; +{args.delay * 1000:.0f} ms per AWS request; "
        f"KUSHIM_AWS_CONCURRENCY={args.concurrency}; {database}; "
        f"{os.cpu_count()} CPUs; median of {args.repeat} runs after {args.warmup} warm-up"
    )
    print()
    print(main_table(results, len(accounts)))
    print()
    print("Where the CPU went (median run; % of one CPU over the run's wall time):")
    print()
    print(cpu_table(results))
    print()
    print("Scans (median run; from the evidence database's started_at/finished_at):")
    print()
    print(scan_table(results))
    print()
    print(
        f"target: {last.replicas} replicas >= {TARGET_SPEEDUP:.0f}x the throughput of {base.replicas}: "
        f"{speedup:.2f}x, {'met' if met else 'MISSED'}; total benchmark time {total:.0f}s"
    )
    held = last.median_run()
    print(
        f"latency: in the median run of {last.replicas} replicas the proxy held {held.proxy_delayed} requests "
        f"{args.delay * 1000:.0f} ms each, on {held.proxy_connections} connections; moto answered "
        f"{held.aws_requests} requests"
    )
    floor = cpu_floor(last)
    print(
        f"CPU floor: with {last.replicas} replicas the benchmarked processes used {floor * (os.cpu_count() or 1):.1f} "
        f"CPU seconds per run: on {os.cpu_count()} CPUs no such run can take less than {floor:.1f}s, i.e. at most "
        f"{base.median_seconds / floor:.2f}x the throughput of {base.replicas} replica(s) on this machine"
    )
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if args.json is not None:
        document = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "arguments": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
            "database": database,
            "cpus": os.cpu_count(),
            "seed_seconds": outcome["seed_seconds"],
            "moto_peak_rss_kib": outcome["moto_peak_rss_kib"],
            "results": [
                asdict(result) | {"median_seconds": result.median_seconds, "throughput": result.throughput}
                for result in results
            ],
            "speedup": speedup,
            "target_speedup": TARGET_SPEEDUP,
            "target_met": met,
            "problems": problems,
            "total_seconds": total,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    if problems:
        return 1
    return 2 if args.strict_target and not met else 0


if __name__ == "__main__":
    sys.exit(main())
