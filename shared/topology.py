"""Who creates the JetStream topology. By default every service declares it at start (`declare_topology`): the
embedded stack needs nothing else. A locked-down deployment lets only an administrator create and update streams
and consumers (`kushim nats init`, run once per release, e.g. as a Kubernetes Job) and starts the services with
`KUSHIM_DECLARE_TOPOLOGY=false`: they then only check that everything exists, so their NATS users need no
permission to create, update, purge or delete anything (deploy/nats/nats-server.conf)."""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from shared import subjects
from shared.nats import all_consumers, consumer_config, declare_topology, kv_stream, stream_configs
from shared.settings import Settings

log = structlog.get_logger(__name__)


class TopologyError(Exception):
    """A stream or durable consumer a service needs does not exist."""


@dataclass(frozen=True, slots=True)
class Drift:
    """A stream (its replicas) or consumer (its limits) that differs from this Kushim's settings (`kushim nats init`
    brings them in line)."""

    name: str
    field: str
    found: object
    wanted: object


async def verify_topology(js: JetStreamContext, settings: Settings) -> list[Drift]:
    """Check that every stream and durable consumer exists; return the streams and consumers that differ."""
    missing: list[str] = []
    drift: list[Drift] = []
    # The scheduler creates its key-value buckets on first use: a missing one is not missing, an existing one is
    # checked like a stream.
    streams = [(str(config.name), True) for config in stream_configs(settings)]
    streams += [(kv_stream(bucket), False) for bucket in subjects.KV_BUCKETS]
    for name, required in streams:
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            if required:
                missing.append(f"stream {name}")
            continue
        if info.config.num_replicas != settings.stream_replicas:
            drift.append(Drift(name, "num_replicas", info.config.num_replicas, settings.stream_replicas))
    for spec in all_consumers():
        try:
            consumer = await js.consumer_info(spec.stream, spec.durable)
        except NotFoundError:
            missing.append(f"consumer {spec.stream}/{spec.durable}")
            continue
        wanted = consumer_config(spec, settings)
        found = consumer.config
        for field in ("max_deliver", "ack_wait", "filter_subject", "max_ack_pending"):
            if getattr(found, field) != getattr(wanted, field):
                drift.append(
                    Drift(f"{spec.stream}/{spec.durable}", field, getattr(found, field), getattr(wanted, field))
                )
    if missing:
        raise TopologyError(
            f"the JetStream topology is incomplete ({', '.join(missing[:6])}{' …' if len(missing) > 6 else ''}): "
            "run `kushim nats init` with a NATS user allowed to create streams (deploy/nats: admin), or start the "
            "service with KUSHIM_DECLARE_TOPOLOGY=true"
        )
    for item in drift:
        log.warning(
            "topology_config_differs",
            name=item.name,
            field=item.field,
            found=item.found,
            wanted=item.wanted,
            fix="kushim nats init",
        )
    return drift


async def ensure_topology(js: JetStreamContext, settings: Settings) -> None:
    """Declare the topology (KUSHIM_DECLARE_TOPOLOGY, the default) or only check it."""
    if settings.declare_topology:
        await declare_topology(js, settings)
    else:
        await verify_topology(js, settings)
