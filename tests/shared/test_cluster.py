"""KUSHIM_STREAM_REPLICAS on a real three-server JetStream cluster (the wheel's nats-server, free loopback ports):
`kushim nats init` creates every stream with three replicas, the scheduler its key-value buckets, `kushim nats
check` reports a stream whose replicas differ, and a message published before a server is lost is still there,
with new ones accepted. On a single server, three replicas are refused with the reason."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nats.js.errors import NoStreamResponseError

from services.scheduler.coalesce import COALESCE_BUCKET, Coalescer
from services.scheduler.cron import SCHEDULE_BUCKET, KvSlotClaims
from shared import subjects
from shared.embedded import EmbeddedNats, free_port, nats_server_binary
from shared.messages import Service
from shared.nats import declare_topology, make_broker, stream_configs
from shared.settings import Settings
from shared.topology import verify_topology
from tests.helpers import cli_env, eventually, kushim, nats_client

SERVERS = 3


@contextlib.asynccontextmanager
async def nats_cluster(tmp_path: Path) -> AsyncIterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """Three clustered JetStream servers; yields (client URL, process) per server once JetStream answers."""
    client_ports = [free_port() for _ in range(SERVERS)]
    route_ports = [free_port() for _ in range(SERVERS)]
    routes = ", ".join(f"nats://127.0.0.1:{port}" for port in route_ports)
    servers: list[tuple[str, subprocess.Popen[bytes]]] = []
    try:
        for i in range(SERVERS):
            store = tmp_path / f"n{i}"
            store.mkdir()
            config = store / "server.conf"
            config.write_text(
                f'server_name: "kushim-test-{i}"\n'
                f'listen: "127.0.0.1:{client_ports[i]}"\n'
                f'jetstream {{ store_dir: "{store}" }}\n'
                f'cluster {{ name: "kushim-test"\n listen: "127.0.0.1:{route_ports[i]}"\n routes: [{routes}] }}\n'
            )
            log = store / "nats-server.log"
            process = subprocess.Popen(
                [str(nats_server_binary()), "-c", str(config), "-l", str(log)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            servers.append((f"nats://127.0.0.1:{client_ports[i]}", process))

        async def jetstream_ready() -> bool:
            with contextlib.suppress(Exception):
                async with nats_client(servers[0][0]) as nc:
                    await nc.jetstream().account_info()
                    return True
            return False

        await eventually(jetstream_ready, timeout=30, interval=0.2, what="the JetStream cluster's meta leader")
        yield servers
    finally:
        for _, process in servers:
            if process.poll() is None:
                process.terminate()
        for _, process in servers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=10)
            if process.poll() is None:
                process.kill()


async def test_three_replicas_on_a_cluster_survive_the_loss_of_a_server(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    async with nats_cluster(tmp_path) as servers:
        url = servers[0][0]
        env = cli_env(KUSHIM_NATS_URL=url, KUSHIM_STREAM_REPLICAS="3")
        code, _, err = await kushim("nats", "init", env=env)
        assert code == 0, err
        assert (await kushim("nats", "check", env=env))[0] == 0
        settings = make_settings(nats_url=url, stream_replicas=3)
        broker = make_broker(url, name="cluster-test", settings=settings)
        await broker.connect()
        try:
            await Coalescer(broker, replicas=settings.stream_replicas).bucket()
            await KvSlotClaims(broker, replicas=settings.stream_replicas)._bucket()
        finally:
            await broker.stop()
        async with nats_client(url) as nc:
            js = nc.jetstream()
            names = [str(config.name) for config in stream_configs(settings)]
            for name in [*names, f"KV_{COALESCE_BUCKET}", f"KV_{SCHEDULE_BUCKET}"]:
                info = await js.stream_info(name)
                assert info.config.num_replicas == 3, name
                assert info.cluster is not None
                assert len(info.cluster.replicas or []) == 2, name  # the leader and two followers
            # `kushim nats check` with another replica count names every stream.
            drift = await verify_topology(js, make_settings(nats_url=url, stream_replicas=1))
            assert {(d.name, d.found, d.wanted) for d in drift if d.field == "num_replicas"} == {
                (name, 3, 1) for name in names
            }
            code, _, err = await kushim("nats", "check", env=cli_env(KUSHIM_NATS_URL=url, KUSHIM_STREAM_REPLICAS="1"))
            assert code == 4
            assert "differ from this Kushim's" in err

            before = await js.publish(subjects.checks_subject(Service.IAM), b"{}", stream=subjects.STREAM_CHECKS)
            servers[2][1].terminate()  # one server of three is lost
            await asyncio.to_thread(servers[2][1].wait, 10)

            async def published() -> bool:
                with contextlib.suppress(NoStreamResponseError, TimeoutError):
                    await js.publish(subjects.checks_subject(Service.IAM), b"{}", stream=subjects.STREAM_CHECKS)
                    return True
                return False

            await eventually(published, timeout=20, interval=0.2, what="a publish with one server of three gone")
            kept = await js.get_msg(subjects.STREAM_CHECKS, before.seq)
            assert kept.data == b"{}"


async def test_three_replicas_on_a_single_server_are_refused_with_the_reason(
    nats_server: EmbeddedNats, make_settings: Callable[..., Settings]
) -> None:
    settings = make_settings(nats_url=nats_server.url, stream_replicas=3)
    async with nats_client(nats_server.url) as nc:
        with pytest.raises(RuntimeError, match=r"KUSHIM_STREAM_REPLICAS=3 needs a JetStream cluster of at least 3"):
            await declare_topology(nc.jetstream(), settings)
    code, _, err = await kushim(
        "nats", "init", env=cli_env(KUSHIM_NATS_URL=nats_server.url, KUSHIM_STREAM_REPLICAS="3")
    )
    assert code != 0
    assert "needs a JetStream cluster" in err
