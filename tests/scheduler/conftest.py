"""Fixtures of the scheduler tests: a client on the test's nats-server (the running scheduler: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from shared.embedded import EmbeddedNats
from tests.helpers import nats_client


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    async with nats_client(nats_server.url) as client:
        yield client
