"""The scheduler's JetStream key-value buckets (KUSHIM_SCHEDULE, KUSHIM_COALESCE): created on first use with the
configuration the code asks for, KUSHIM_STREAM_REPLICAS included."""

from __future__ import annotations

import structlog
from faststream.nats import NatsBroker
from nats.js.errors import BadRequestError
from nats.js.kv import KeyValue

log = structlog.get_logger(__name__)

_STREAM_EXISTS = 10058  # "stream name already in use with a different configuration"


async def open_bucket(broker: NatsBroker, name: str, *, description: str, ttl: float, replicas: int) -> KeyValue:
    """Create the bucket, or bind to it when it exists with another configuration (another replica count, say, after
    KUSHIM_STREAM_REPLICAS changed): the schedule and coalescing keep working, and `kushim nats init` brings the
    bucket's replicas in line."""
    try:
        return await broker.key_value(name, description=description, ttl=ttl, replicas=replicas)
    except BadRequestError as exc:
        if exc.err_code != _STREAM_EXISTS:
            raise
    log.warning(
        "kv_bucket_config_differs",
        bucket=name,
        replicas_wanted=replicas,
        fix="kushim nats init (KUSHIM_STREAM_REPLICAS applies to the buckets too)",
    )
    return await broker.key_value(name, declare=False)
