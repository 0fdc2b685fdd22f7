"""Bounded fan-out for the collectors' AWS calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


async def bounded(limit: int | asyncio.Semaphore, items: Iterable[T], fn: Callable[[T], Awaitable[R]]) -> list[R]:
    """`fn` over every item, at most `limit` at a time (a number, or a semaphore shared with other calls), results
    in input order.

    The first failure cancels the rest and is raised as itself (not as an ExceptionGroup), so a
    `TransientAwsError` reaches the consumer that decides about redelivery.
    """
    semaphore = asyncio.Semaphore(limit) if isinstance(limit, int) else limit

    async def one(item: T) -> R:
        async with semaphore:
            return await fn(item)

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(one(item)) for item in items]
    except ExceptionGroup as failed:
        first = failed.exceptions[0]
    else:
        return [task.result() for task in tasks]
    raise first  # outside the handler: keeps its own cause (the botocore error), not the group
