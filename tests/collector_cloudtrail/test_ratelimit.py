"""LookupEvents pacing: the token bucket on a fake clock, then request times seen at a local CloudTrail stub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import pytest

from services.collector_cloudtrail.app import spec_with_limiters
from services.collector_cloudtrail.checks import CHECKS
from services.collector_cloudtrail.collect import collect
from services.collector_cloudtrail.ratelimit import LookupLimiters, TokenBucket
from shared.aws import ApiCallCounter, AwsClients
from shared.checks import RunContext, evaluate
from shared.messages import CheckRequested, Service, Status
from shared.settings import Settings
from tests.collector_cloudtrail.cloudtrail_stub import CloudTrailStub, Reply, Seen, gaps, throttled
from tests.conftest import MOTO_ACCOUNT

# A request is answered after it arrived, and the next one leaves 1/rate after that answer: the gaps seen at the
# stub hold exactly; the tolerance only absorbs float rounding.
JITTER = 0.001


class FakeClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


# --- the bucket, on a fake clock -------------------------------------------------------------------


async def test_bucket_spaces_requests_by_one_over_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, clock=clock, sleep=clock.sleep)
    taken = []
    for _ in range(5):
        await bucket.acquire()
        taken.append(clock.now)
    assert taken == pytest.approx([100.0, 100.5, 101.0, 101.5, 102.0])


async def test_bucket_queues_concurrent_waiters_in_order() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4.0, clock=clock, sleep=clock.sleep)
    order: list[tuple[int, float]] = []

    async def one(i: int) -> None:
        await bucket.acquire()
        order.append((i, clock.now))

    await asyncio.gather(*(one(i) for i in range(6)))
    assert [i for i, _ in order] == list(range(6))
    assert gaps([t for _, t in order]) == pytest.approx([0.25] * 5)


async def test_an_idle_bucket_refills_only_up_to_its_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2.0, burst=2, clock=clock, sleep=clock.sleep)
    clock.now += 60  # a minute idle: still only two tokens
    taken = []
    for _ in range(4):
        await bucket.acquire()
        taken.append(clock.now)
    assert taken == pytest.approx([160.0, 160.0, 160.5, 161.0])


async def test_a_cancelled_waiter_takes_no_token() -> None:
    bucket = TokenBucket(5.0)  # the real clock: the waiter is cancelled while it sleeps
    await bucket.acquire()
    waiter = asyncio.create_task(bucket.acquire())
    await asyncio.sleep(0.05)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.sleep(0.2)  # the token the waiter wanted is there again
    loop = asyncio.get_running_loop()
    started = loop.time()
    await bucket.acquire()
    assert loop.time() - started < 0.05


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1.0, burst=0.5)


def test_one_bucket_per_account_and_region() -> None:
    limiters = LookupLimiters(2.0)
    assert limiters.bucket("111111111111", "us-east-1") is limiters.bucket("111111111111", "us-east-1")
    assert limiters.bucket("111111111111", "us-east-1") is not limiters.bucket("111111111111", "eu-west-1")
    assert limiters.bucket("111111111111", "us-east-1") is not limiters.bucket("222222222222", "us-east-1")
    assert limiters.bucket("111111111111", "us-east-1").rate == 2.0


# --- at a local CloudTrail stub -------------------------------------------------------------------

EVENT = {"EventName": "ConsoleLogin", "EventSource": "signin.amazonaws.com", "EventTime": 1740870000}


def no_trails(seen: Seen, before: int) -> Reply:
    return 200, {"trailList": []}


def one_event(seen: Seen, before: int) -> Reply:
    return 200, {"Events": [EVENT]}


def request(regions: list[str]) -> CheckRequested:
    return CheckRequested(
        run_id="run-" + "5" * 32,
        request_id="req-rate",
        account_id=MOTO_ACCOUNT,
        service=Service.CLOUDTRAIL,
        regions=regions,
        requested_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


@pytest.fixture
async def stub() -> AsyncIterator[CloudTrailStub]:
    server = CloudTrailStub({"DescribeTrails": no_trails, "LookupEvents": one_event})
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def test_concurrent_scans_share_the_rate_per_region(
    stub: CloudTrailStub, make_settings: Callable[..., Settings]
) -> None:
    """10 scans of two regions at once, in one process: each region sees 10 LookupEvents at most `rate` per second,
    and the regions do not wait for each other."""
    rate, scans, regions = 10.0, 10, ["eu-west-1", "us-east-1"]
    settings = make_settings(aws_endpoint_url=stub.url, aws_concurrency=4)
    spec = spec_with_limiters(LookupLimiters(rate))  # as create_service wires it, at a rate fit for a short test
    aws = AwsClients(settings)

    await asyncio.gather(*(spec.collect(aws, request(regions), ApiCallCounter(), settings) for _ in range(scans)))

    for region in regions:
        times = stub.times("LookupEvents", region)
        assert len(times) == scans
        assert min(gaps(times)) >= 1 / rate - JITTER
        assert times[-1] - times[0] >= (scans - 1) / rate - JITTER
    eu, us = stub.times("LookupEvents", "eu-west-1"), stub.times("LookupEvents", "us-east-1")
    # interleaved, not one region after the other
    assert eu[0] < us[-1]
    assert us[0] < eu[-1]


async def test_pages_are_paced_at_the_configured_rate(
    stub: CloudTrailStub, make_settings: Callable[..., Settings]
) -> None:
    """Empty pages with a NextToken are followed, each page paced; without shared limiters collect uses the
    setting (2 requests per second, AWS's limit)."""

    def paged(seen: Seen, before: int) -> Reply:
        if before < 2:
            return 200, {"Events": [], "NextToken": f"page-{before + 1}"}
        return 200, {"Events": [EVENT]}

    stub.replies["LookupEvents"] = paged
    settings = make_settings(aws_endpoint_url=stub.url, lookup_events_rate=2.0)
    counter = ApiCallCounter()

    snapshot = await collect(AwsClients(settings), request(["us-east-1"]), counter, settings)

    seen = stub.requests("LookupEvents", "us-east-1")
    assert [s.params.get("NextToken") for s in seen] == [None, "page-1", "page-2"]
    assert all(s.params["MaxResults"] == 1 for s in seen)
    assert min(gaps([s.at for s in seen])) >= 0.5 - JITTER
    assert counter.counts["cloudtrail:LookupEvents"] == 3
    ctx = RunContext("run-" + "5" * 32, MOTO_ACCOUNT, snapshot.now, "test")
    finding = next(f for f in evaluate(CHECKS, snapshot, ctx) if f.check_id == "cloudtrail.recent_activity")
    assert (finding.status, finding.details["pages_read"]) == (Status.PASS, 3)


async def test_retries_are_paced_too(stub: CloudTrailStub, make_settings: Callable[..., Settings]) -> None:
    """A throttled LookupEvents is retried (by the collector: botocore retries no LookupEvents) after a random
    backoff under 1 s; at 0.5 requests per second the retry must still wait for the bucket: at least 2 s after the
    first attempt, as the stub sees it."""

    def throttle_first(seen: Seen, before: int) -> Reply:
        return throttled() if before == 0 else (200, {"Events": [EVENT]})

    stub.replies["LookupEvents"] = throttle_first
    settings = make_settings(aws_endpoint_url=stub.url, lookup_events_rate=0.5)
    counter = ApiCallCounter()

    snapshot = await collect(AwsClients(settings), request(["us-east-1"]), counter, settings)

    times = stub.times("LookupEvents", "us-east-1")
    assert len(times) == 2
    assert gaps(times)[0] >= 2.0 - JITTER
    assert counter.counts["cloudtrail:LookupEvents"] == 2
    assert snapshot.activity_in("us-east-1").latest is not None
