"""Benchmark of the S3 collection alone: `python -m tests.collector_s3.bench_scan [--buckets 200 1000]`.

For each size N it starts a fresh moto server (in this process as the tests run it, or `--moto process` in a child
process), seeds N buckets with boto3 in a few threads (every tenth in eu-west-1; default encryption none / SSE-S3 /
SSE-KMS / DSSE-KMS in turn, versioning on every third, suspended on every seventh, access logging on every fifth,
a full public access block on every fourth and a partial one on every sixth), then times `collect` (the service's
own entry point, with one `AwsClients` as the service builds it) `--repeat` times and reports the wall time, the
API calls by operation and per bucket, and the findings by status. It also times opening one S3 client, the cost a
client per bucket would multiply.

Not a test: pytest does not collect this file, and importing it does nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from services.collector_s3.app import summarize
from services.collector_s3.checks import CHECKS
from services.collector_s3.collect import collect
from shared.aws import ApiCallCounter, AwsClients
from shared.checks import RunContext, evaluate
from shared.log import configure_logging
from shared.messages import CheckRequested, Service
from shared.settings import Settings

ACCOUNT = "123456789012"  # moto's default account
HOME = "us-east-1"
OTHER = "eu-west-1"
LOG_TARGETS = {HOME: "bench-access-logs-us", OTHER: "bench-access-logs-eu"}
LOG_DELIVERY = "uri=http://acs.amazonaws.com/groups/s3/LogDelivery"
ALGORITHMS: tuple[str | None, ...] = (None, "AES256", "aws:kms", "aws:kms:dsse")


def bucket_region(index: int) -> str:
    return OTHER if index % 10 == 9 else HOME


def _clients(endpoint: str, threads: int) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    config = Config(max_pool_connections=max(10, threads))
    return {
        region: boto3.session.Session().client(
            "s3",
            region_name=region,
            endpoint_url=endpoint,
            aws_access_key_id="bench",
            aws_secret_access_key="bench",  # the moto server's dummy credentials
            config=config,
        )
        for region in (HOME, OTHER)
    }


def _create(s3: Any, name: str, region: str) -> None:
    if region == HOME:
        s3.create_bucket(Bucket=name)
    else:
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": region})


def _seed_bucket(clients: dict[str, Any], index: int) -> None:
    region = bucket_region(index)
    s3, name = clients[region], f"bench-bucket-{index:05d}"
    _create(s3, name, region)
    algorithm = ALGORITHMS[index % len(ALGORITHMS)]
    if algorithm is not None:
        default = {"SSEAlgorithm": algorithm}
        if algorithm != "AES256":
            default["KMSMasterKeyID"] = f"arn:aws:kms:{region}:{ACCOUNT}:key/bench-{index}"
        rule = {"ApplyServerSideEncryptionByDefault": default, "BucketKeyEnabled": algorithm == "aws:kms"}
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [rule]})
    if index % 3 == 0 or index % 7 == 0:
        status = "Enabled" if index % 3 == 0 else "Suspended"
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": status})
    if index % 5 == 0:
        target = {"TargetBucket": LOG_TARGETS[region], "TargetPrefix": f"{name}/"}
        s3.put_bucket_logging(Bucket=name, BucketLoggingStatus={"LoggingEnabled": target})
    if index % 4 == 0 or index % 6 == 0:
        full = index % 4 == 0
        config = {"BlockPublicAcls": True, "IgnorePublicAcls": True, "BlockPublicPolicy": full}
        s3.put_public_access_block(
            Bucket=name, PublicAccessBlockConfiguration={**config, "RestrictPublicBuckets": full}
        )


def seed(endpoint: str, buckets: int, threads: int) -> float:
    """Seed N buckets (the two log-target buckets included); returns the seconds it took."""
    started = time.perf_counter()
    clients = _clients(endpoint, threads)
    for region, target in LOG_TARGETS.items():
        _create(clients[region], target, region)
        clients[region].put_bucket_acl(Bucket=target, GrantWrite=LOG_DELIVERY, GrantReadACP=LOG_DELIVERY)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        list(pool.map(lambda index: _seed_bucket(clients, index), range(buckets - len(LOG_TARGETS))))
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def moto_server(mode: str) -> Iterator[tuple[str, int]]:
    """A fresh moto server and the pid that runs it: this process (`thread`, as the tests run it; werkzeug's
    per-request log line is silenced) or a child process (`process`)."""
    if mode == "thread":
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        moto: Any = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        moto.start()
        try:
            host, port = moto.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            request = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b"")
            with urllib.request.urlopen(request, timeout=30) as response:  # a previous size's state is global
                response.read()
            yield endpoint, os.getpid()
        finally:
            moto.stop()
        return
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
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
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def request() -> CheckRequested:
    return CheckRequested(
        run_id="run-" + "b" * 32,
        request_id="bench-s3",
        account_id=ACCOUNT,
        service=Service.S3,
        regions=[HOME],
        requested_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


async def time_client_opening(aws: AwsClients, times: int) -> tuple[float, float]:
    """Seconds to open and close the first S3 client (which also loads the service model), and the mean of the
    next `times` (what a client per bucket would cost each bucket)."""
    started = time.perf_counter()
    async with aws.client("s3", HOME):
        pass
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(times):
        async with aws.client("s3", HOME):
            pass
    return first, (time.perf_counter() - started) / times


@dataclass(frozen=True)
class Scan:
    seconds: float
    cpu: float  # CPU seconds of this process during the scan (moto's too when it runs in this process)
    moto_cpu: float | None  # CPU seconds of the moto process during the scan, when it runs apart
    calls: dict[str, int]
    statuses: Counter[str]


async def scan_once(aws: AwsClients, settings: Settings, moto_pid: int) -> Scan:
    counter = ApiCallCounter()
    apart = moto_pid != os.getpid()
    moto_before = cpu_seconds(moto_pid) if apart else 0.0
    cpu_before, started = time.process_time(), time.perf_counter()
    snapshot = await collect(aws, request(), counter, settings)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_before
    moto_cpu = cpu_seconds(moto_pid) - moto_before if apart else None
    ctx = RunContext("run-" + "b" * 32, ACCOUNT, datetime.now(UTC), "bench")
    statuses = Counter(f"{f.check_id}:{f.status.value}" for f in evaluate(CHECKS, snapshot, ctx))
    if summarize(snapshot).population != {"buckets": len(snapshot.buckets)}:
        raise RuntimeError("the scan could not list the buckets")
    return Scan(seconds, cpu, moto_cpu, counter.snapshot(), statuses)


def bench(
    sizes: list[int], *, repeat: int, threads: int, concurrency: int, moto: str, log: Callable[[str], None]
) -> None:
    for size in sizes:
        with moto_server(moto) as (endpoint, moto_pid):
            seeded = seed(endpoint, size, threads)
            settings = Settings(
                _env_file=None,
                aws_endpoint_url=endpoint,
                aws_region=HOME,
                aws_access_key_id=SecretStr("bench"),
                aws_secret_access_key=SecretStr("bench"),  # the moto server's dummy credentials
                aws_concurrency=concurrency,
                log_level="WARNING",
            )
            aws = AwsClients(settings)
            first_client, opening = asyncio.run(time_client_opening(aws, 20))
            load = os.getloadavg()[0]
            runs = [asyncio.run(scan_once(aws, settings, moto_pid)) for _ in range(repeat)]
        seconds = [run.seconds for run in runs]
        last = runs[-1]
        total = sum(last.calls.values())
        moto_cpu = "" if last.moto_cpu is None else f", moto process CPU {last.moto_cpu:.1f}s"
        log(
            f"{size} buckets (moto {moto}, concurrency {concurrency}, load average {load:.1f}): seeded in "
            f"{seeded:.1f}s; scan median {statistics.median(seconds):.2f}s "
            f"(runs: {', '.join(f'{s:.2f}' for s in seconds)}); this process CPU {last.cpu:.1f}s{moto_cpu}; "
            f"{total} calls = {total / size:.2f} per bucket; opening an S3 client: first {first_client * 1000:.0f} ms, "
            f"then {opening * 1000:.1f} ms each"
        )
        log(f"  calls: {last.calls}")
        log(f"  findings: {dict(sorted(last.statuses.items()))}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Time the S3 collection on moto.")
    parser.add_argument("--buckets", type=int, nargs="+", default=[200, 1000], help="account sizes (default 200 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="scans per size (default 3)")
    parser.add_argument("--seed-threads", type=int, default=8, help="threads seeding moto (default 8)")
    parser.add_argument("--concurrency", type=int, default=8, help="KUSHIM_AWS_CONCURRENCY (default 8, as shipped)")
    parser.add_argument("--moto", choices=("thread", "process"), default="thread", help="where moto runs")
    args = parser.parse_args(argv)
    configure_logging("WARNING")
    bench(
        args.buckets,
        repeat=args.repeat,
        threads=args.seed_threads,
        concurrency=args.concurrency,
        moto=args.moto,
        log=print,
    )


if __name__ == "__main__":
    main()
