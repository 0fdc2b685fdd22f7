"""KUSHIM_DECLARE_TOPOLOGY=false: services only check the topology an administrator created (`kushim nats init`)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.collector_s3.app import create_service as create_s3_collector
from shared.embedded import EmbeddedNats
from shared.nats import declare_topology
from shared.settings import Settings
from shared.topology import TopologyError, verify_topology
from tests.helpers import cli_env, kushim, nats_client


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


async def test_nats_init_then_check(nats_server: EmbeddedNats, make_settings: Callable[..., Settings]) -> None:
    env = cli_env(KUSHIM_NATS_URL=nats_server.url)
    code, _, err = await kushim("nats", "check", env=env)
    assert code == 4
    assert "run `kushim nats init`" in err
    code, out, err = await kushim("nats", "init", env=env)
    assert code == 0, err
    assert "JetStream topology ready" in out
    assert (await kushim("nats", "check", env=env))[0] == 0
    settings = make_settings(nats_url=nats_server.url, declare_topology=False)
    app = create_s3_collector(settings, url=nats_server.url)
    await app.start()  # only checks, and finds everything
    await app.stop()
