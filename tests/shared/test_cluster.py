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
from nats.js import JetStreamContext
from nats.js.errors import NoStreamResponseError
from structlog.testing import capture_logs

from services.scheduler.coalesce import Coalescer
from services.scheduler.cron import KvSlotClaims
from shared import subjects
from shared.embedded import EmbeddedNats, free_port, nats_server_binary
from shared.messages import Service
from shared.nats import declare_topology, kv_stream, make_broker, stream_configs
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


async def open_buckets(url: str, settings: Settings) -> None:
    """What the scheduler does on first use: open (create) its two key-value buckets, and write to each."""
    broker = make_broker(url, name="cluster-test", settings=settings)
    await broker.connect()
    try:
        await (await Coalescer(broker, replicas=settings.stream_replicas).bucket()).put("probe", b"1")
        await (await KvSlotClaims(broker, replicas=settings.stream_replicas)._bucket()).put("probe", b"1")
    finally:
        await broker.stop()


async def replicas_of(js: JetStreamContext, names: list[str]) -> dict[str, int]:
    return {name: int((await js.stream_info(name)).config.num_replicas or 0) for name in names}


async def test_three_replicas_on_a_cluster_survive_the_loss_of_a_server(
    tmp_path: Path, make_settings: Callable[..., Settings]
) -> None:
    async with nats_cluster(tmp_path) as servers, nats_client(servers[0][0]) as nc:
        url = servers[0][0]
        js = nc.jetstream()
        one, three = (cli_env(KUSHIM_NATS_URL=url, KUSHIM_STREAM_REPLICAS=n) for n in ("1", "3"))
        streams = [str(config.name) for config in stream_configs(make_settings())]
        buckets = [kv_stream(bucket) for bucket in subjects.KV_BUCKETS]

        # A deployment that started with one replica: its streams and the scheduler's buckets have one.
        code, _, err = await kushim("nats", "init", env=one)
        assert code == 0, err
        await open_buckets(url, make_settings(nats_url=url, stream_replicas=1))
        assert await replicas_of(js, streams + buckets) == dict.fromkeys(streams + buckets, 1)

        # KUSHIM_STREAM_REPLICAS becomes 3. A scheduler started before `kushim nats init` keeps working with the
        # buckets as they are (it binds to them and says what to run); `kushim nats check` names every difference.
        with capture_logs() as logs:
            await open_buckets(url, make_settings(nats_url=url, stream_replicas=3))
        warned = [e for e in logs if e["event"] == "kv_bucket_config_differs"]
        assert sorted(str(e["bucket"]) for e in warned) == sorted(subjects.KV_BUCKETS)
        drift = await verify_topology(js, make_settings(nats_url=url, stream_replicas=3))
        assert {(d.name, d.found, d.wanted) for d in drift if d.field == "num_replicas"} == {
            (name, 1, 3) for name in streams + buckets
        }
        code, _, err = await kushim("nats", "check", env=three)
        assert code == 4
        assert "differ from this Kushim's" in err

        # `kushim nats init` gives every stream and bucket three replicas, one per server.
        code, _, err = await kushim("nats", "init", env=three)
        assert code == 0, err
        assert (await kushim("nats", "check", env=three))[0] == 0
        assert await replicas_of(js, streams + buckets) == dict.fromkeys(streams + buckets, 3)
        for name in streams + buckets:
            info = await js.stream_info(name)
            assert info.cluster is not None
            assert len(info.cluster.replicas or []) == 2, name  # besides the leader, two followers
        with capture_logs() as logs:
            await open_buckets(url, make_settings(nats_url=url, stream_replicas=3))  # the same configuration now
        assert not [e for e in logs if e["event"] == "kv_bucket_config_differs"]

        # One server of three is lost: what was stored is still there, and publishing goes on.
        before = await js.publish(subjects.checks_subject(Service.IAM), b"{}", stream=subjects.STREAM_CHECKS)
        servers[2][1].terminate()
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
