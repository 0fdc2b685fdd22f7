"""The collectors' bounded fan-out."""

from __future__ import annotations

import asyncio
import time

import pytest

from shared.aws import TransientAwsError
from shared.concurrency import bounded


async def test_bounded_limits_concurrency_and_keeps_order() -> None:
    in_flight = peak = 0

    async def work(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002 * (5 - i % 5))
        in_flight -= 1
        return i * 2

    assert await bounded(3, range(12), work) == [i * 2 for i in range(12)]
    assert peak == 3


async def test_bounded_shares_a_semaphore_between_calls() -> None:
    in_flight = peak = 0

    async def work(i: int) -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.002)
        in_flight -= 1
        return i

    gate = asyncio.Semaphore(2)
    first, second = await asyncio.gather(bounded(gate, range(6), work), bounded(gate, range(6, 12), work))
    assert (first, second) == (list(range(6)), list(range(6, 12)))
    assert peak == 2


async def test_bounded_raises_the_first_failure_itself_and_cancels_the_rest() -> None:
    async def work(i: int) -> int:
        if i == 1:
            raise TransientAwsError("throttled")
        await asyncio.sleep(5)
        return i

    started = time.monotonic()
    with pytest.raises(TransientAwsError, match="throttled"):
        await bounded(4, range(4), work)
    assert time.monotonic() - started < 2
