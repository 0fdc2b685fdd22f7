"""Fixtures of the scheduler tests: a running scheduler service and a client, both on the test's nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NatsClient

from services.scheduler.app import create_service
from shared.embedded import EmbeddedNats
from shared.service import ServiceApp
from shared.settings import Settings
from tests.helpers import nats_client


@pytest.fixture
async def scheduler(settings: Settings) -> AsyncIterator[ServiceApp]:
    assert settings.nats_url
    app = create_service(settings, url=settings.nats_url)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@pytest.fixture
async def nc(nats_server: EmbeddedNats) -> AsyncIterator[NatsClient]:
    async with nats_client(nats_server.url) as client:
        yield client
