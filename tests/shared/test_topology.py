"""KUSHIM_DECLARE_TOPOLOGY=false: services only check the topology an administrator created (`kushim nats init`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from services.collector_s3.app import create_service as create_s3_collector
from shared.embedded import EmbeddedNats
from shared.nats import declare_topology
from shared.settings import Settings
from shared.topology import TopologyError, verify_topology
from tests.helpers import nats_client


async def test_a_service_that_may_not_declare_refuses_a_missing_topology_with_the_fix(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats
) -> None:
    settings = make_settings(nats_url=nats_server.url, declare_topology=False)
    app = create_s3_collector(settings, url=nats_server.url)
    with pytest.raises(TopologyError, match=r"stream KUSHIM_RUNS.*run `kushim nats init`"):
        await app.start()
    await app.stop()


async def test_verify_reports_consumers_whose_limits_differ(
    make_settings: Callable[..., Settings], nats_server: EmbeddedNats
) -> None:
    settings = make_settings(nats_url=nats_server.url)
    async with nats_client(nats_server.url) as nc:
        await declare_topology(nc.jetstream(), settings)
        assert await verify_topology(nc.jetstream(), settings) == []
        changed = make_settings(nats_url=nats_server.url, max_deliver=8)
        drift = await verify_topology(nc.jetstream(), changed)
        assert {d.name for d in drift} == {
            "KUSHIM_CHECKS/collector-iam",
            "KUSHIM_CHECKS/collector-s3",
            "KUSHIM_CHECKS/collector-cloudtrail",
        }
        assert {(d.field, d.found, d.wanted) for d in drift} == {("max_deliver", 5, 8)}


def _kushim(*args: str, url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUSHIM_")} | {"KUSHIM_NATS_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "services.cli.main", *args], env=env, capture_output=True, text=True, timeout=60
    )


async def test_nats_init_then_check(nats_server: EmbeddedNats, make_settings: Callable[..., Settings]) -> None:
    missing = _kushim("nats", "check", url=nats_server.url)
    assert missing.returncode == 4
    assert "run `kushim nats init`" in missing.stderr
    created = _kushim("nats", "init", url=nats_server.url)
    assert created.returncode == 0, created.stderr
    assert "JetStream topology ready" in created.stdout
    assert _kushim("nats", "check", url=nats_server.url).returncode == 0
    settings = make_settings(nats_url=nats_server.url, declare_topology=False)
    app = create_s3_collector(settings, url=nats_server.url)
    await app.start()  # only checks, and finds everything
    await app.stop()
