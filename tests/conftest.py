"""Real parts for tests: the wheel's nats-server on a free loopback port (one per test), moto's server
(one per session, reset before each test), and Settings that point at both with dummy credentials."""

from __future__ import annotations

import io
import json
import logging
import os
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from moto.server import ThreadedMotoServer

from services.scheduler.app import create_service as create_scheduler
from shared.embedded import EmbeddedNats, start_nats
from shared.log import configure_logging
from shared.service import ServiceApp
from shared.settings import Settings

DUMMY_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}

# moto's default account id (every moto request without a configured account sees this one)
MOTO_ACCOUNT = "123456789012"


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test may see the developer's AWS credentials, profile, endpoint or Kushim settings."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "KUSHIM_")):
            monkeypatch.delenv(key, raising=False)
    for key, value in DUMMY_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def debug_log() -> Iterator[io.StringIO]:
    """Every log line of the test (ours, FastStream's, nats-py's, botocore's), as JSON, at DEBUG."""
    stream = io.StringIO()
    configure_logging("DEBUG", "json", stream=stream)
    try:
        yield stream
    finally:
        logging.getLogger().handlers.clear()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = start_nats(tmp_path / "jetstream")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _moto_session() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def moto_reset(endpoint: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


@pytest.fixture
def moto_endpoint(_moto_session: str) -> str:
    """A moto server with empty state."""
    moto_reset(_moto_session)
    return _moto_session


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "home": tmp_path / "kushim-home",
            "aws_region": "us-east-1",
            "aws_access_key_id": "testing",
            "aws_secret_access_key": "testing",
            "ack_wait_seconds": 10.0,
            "retry_delay_seconds": 0.2,
            "schedule_enabled": False,
            "log_level": "DEBUG",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str) -> Settings:
    return make_settings(nats_url=nats_server.url, aws_endpoint_url=moto_endpoint)


@pytest.fixture
async def scheduler(settings: Settings) -> AsyncIterator[ServiceApp]:
    """A running scheduler service on the test's nats-server (and moto)."""
    assert settings.nats_url
    app = create_scheduler(settings, url=settings.nats_url)
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def boto3_client(endpoint: str, service: str, region: str = "us-east-1") -> Any:
    """A synchronous boto3 client against moto, for seeding test accounts."""
    import boto3

    return boto3.client(
        service,
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()


@pytest.fixture
def e2e_settings(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats, moto_endpoint: str
) -> Callable[..., Settings]:
    """Settings of an evidence service on this test's nats-server and the moto server (overrides win)."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "nats_url": nats_server.url,
            "aws_endpoint_url": moto_endpoint,
            "deadline_poll_seconds": 0.2,
        }
        values.update(overrides)
        return make_settings(**values)

    return make
