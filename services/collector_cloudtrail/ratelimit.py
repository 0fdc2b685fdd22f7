"""A token bucket for CloudTrail LookupEvents: at most `rate` requests per second per account and region.

AWS allows LookupEvents 2 requests per second per account and region, counted where the requests arrive. Spacing
the *sends* is not enough: a request that waits in the client after taking its token (a new TLS connection, a busy
event loop) can arrive right before the next one. So `request()` lets one request per bucket be in flight, and the
token it took is refilled from the moment its answer is in, not from when it was sent: the next request leaves at
least `1 / rate` seconds after the previous one arrived (it arrived before it was answered), whatever the latency.

`collect` wraps every LookupEvents attempt (pages and its own retries; botocore does not retry LookupEvents) in
`request()`. Pure asyncio; the clock and the sleep are injectable for tests.

The buckets live in one `LookupLimiters` per collector process, so concurrent scans of one account in that process
share them. Replicas in other processes do not coordinate (one LookupEvents per region per scan keeps that harmless).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """Tokens refill at `rate` per second up to `burst`; `acquire` takes one, waiting for it in arrival order."""

    def __init__(
        self, rate: float, *, burst: float = 1.0, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 token, not {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._sleep = sleep
        self._tokens = burst
        self._updated = clock()
        self._waiting = asyncio.Lock()
        self._in_flight = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now

    async def acquire(self) -> None:
        """Wait until a token is available and take it. A cancelled waiter takes nothing."""
        async with self._waiting:  # one waiter at a time: the others queue behind it in order
            self._refill()
            while self._tokens < 1:
                # asyncio may wake a timer slightly early (clock resolution): the loop sleeps the remainder.
                await self._sleep((1 - self._tokens) / self.rate)
                self._refill()
            self._tokens -= 1

    @asynccontextmanager
    async def request(self) -> AsyncIterator[None]:
        """One request in flight at a time: take a token, send inside the block, and let the token refill only from
        when the block ends (what refilled while the request was in flight is taken back)."""
        async with self._in_flight:
            await self.acquire()
            sent = self._clock()
            try:
                yield
            finally:
                self._refill()
                self._tokens = max(0.0, self._tokens - (self._clock() - sent) * self.rate)


class LookupLimiters:
    """One `TokenBucket` per (account, region), created on first use."""

    def __init__(self, rate: float, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def bucket(self, account_id: str, region: str) -> TokenBucket:
        key = (account_id, region)
        if key not in self._buckets:
            self._buckets[key] = TokenBucket(self.rate, clock=self._clock, sleep=self._sleep)
        return self._buckets[key]
