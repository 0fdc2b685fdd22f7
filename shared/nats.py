"""JetStream topology (declared explicitly at startup), the broker factory and durable publishing.

Streams and durable pull consumers are created or updated here with `add_stream` / `add_consumer` (which, unlike
`pull_subscribe(durable=...)`, applies a changed `max_deliver` or `ack_wait`); subscribers then attach with
`JStream(..., declare=False)` and an explicit manual ack policy.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub
from faststream.types import BrokerMiddleware
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy as JsAckPolicy,
)
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    PubAck,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError
from pydantic import BaseModel

from shared import subjects
from shared.messages import Service
from shared.settings import Settings

log = structlog.get_logger(__name__)

DAY = 86_400.0
MAX_MESSAGE_BYTES = 1024 * 1024  # the server's default max_payload
HAND_BACK_SECONDS = 5.0
"""How much longer than KUSHIM_SHUTDOWN_GRACE_SECONDS the broker waits for running handlers when it stops: time
for the handlers handed back at the grace to nack their messages."""


@dataclass(frozen=True, slots=True)
class ConsumerSpec:
    stream: str
    durable: str
    filter_subject: str
    description: str
    max_ack_pending: int = 1000
    retry_forever: bool = False
    """Outages (database, S3, NATS unreachable: `shared.consume.is_outage`) are retried with a capped delay until
    they end, instead of being given up after `max_deliver`: for consumers whose loss would lose a run (the
    scheduler's requests, the evidence service's plans and findings). Any other failure is given up after
    `max_deliver` deliveries and dead-lettered; bad input is dead-lettered at once."""
    dead_letters: bool = True
    """False for the consumer of the dead letters themselves: what it cannot store is logged, never re-dead-lettered."""
    max_body_bytes: int | None = None
    """Bodies larger than this are rejected (dead-lettered, answered) before they are parsed: outside input."""


def stream_configs(settings: Settings) -> list[StreamConfig]:
    common: dict[str, Any] = {
        "storage": StorageType.FILE,
        "retention": RetentionPolicy.LIMITS,
        "discard": DiscardPolicy.OLD,
        "duplicate_window": settings.duplicate_window_seconds,
        "max_msg_size": MAX_MESSAGE_BYTES,
        "num_replicas": settings.stream_replicas,
    }
    return [
        StreamConfig(
            name=subjects.STREAM_RUNS,
            subjects=list(subjects.RUNS_SUBJECTS),
            description="Run requests, plans, joins, completions and rejections (not tenants' requests).",
            max_age=30 * DAY,
            **common,
        ),
        StreamConfig(
            name=subjects.STREAM_TENANT_REQUESTS,
            subjects=[subjects.TENANT_RUNS_REQUESTED],
            description="Tenants' run requests (kushim.runs.requested.<tenant>), de-duplicated apart from Kushim's.",
            max_age=30 * DAY,
            **common,
        ),
        StreamConfig(
            name=subjects.STREAM_CHECKS,
            subjects=["kushim.checks.>"],
            description="One CheckRequested per (account, service); published by the scheduler only.",
            max_age=7 * DAY,
            **common,
        ),
        StreamConfig(
            name=subjects.STREAM_FINDINGS,
            subjects=["kushim.findings.>"],
            description="Collectors' findings, chunked. Deletes, purges and rollups are refused.",
            max_age=30 * DAY,
            deny_delete=True,
            deny_purge=True,
            allow_rollup_hdrs=False,
            **common,
        ),
        StreamConfig(
            name=subjects.STREAM_ADVISORIES,
            subjects=[
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.>"
                for stream in (
                    subjects.STREAM_RUNS,
                    subjects.STREAM_TENANT_REQUESTS,
                    subjects.STREAM_CHECKS,
                    subjects.STREAM_FINDINGS,
                )
            ],
            description="The server's record of every message a consumer gave up on after max_deliver deliveries.",
            max_age=90 * DAY,
            **common,
        ),
        StreamConfig(
            name=subjects.STREAM_DLQ,
            subjects=["kushim.dlq.>"],
            description="Dead letters: messages no consumer could process, with the reason.",
            max_age=90 * DAY,
            **common,
        ),
    ]


MAX_RUN_REQUEST_BYTES = 64 * 1024
"""A RunRequested is small (1,000 account ids fit in 16 KiB): anything larger is refused unread."""


def scheduler_consumer() -> ConsumerSpec:
    return ConsumerSpec(
        subjects.STREAM_RUNS,
        subjects.DURABLE_SCHEDULER,
        subjects.RUNS_REQUESTED,
        "Scheduler: run requests",
        retry_forever=True,
        max_body_bytes=MAX_RUN_REQUEST_BYTES,
    )


def scheduler_tenant_consumer() -> ConsumerSpec:
    return ConsumerSpec(
        subjects.STREAM_TENANT_REQUESTS,
        subjects.DURABLE_SCHEDULER_TENANTS,
        subjects.TENANT_RUNS_REQUESTED,
        "Scheduler: tenants' run requests",
        retry_forever=True,
        max_body_bytes=MAX_RUN_REQUEST_BYTES,
    )


def evidence_plans_consumer() -> ConsumerSpec:
    return ConsumerSpec(
        subjects.STREAM_RUNS,
        subjects.DURABLE_EVIDENCE_PLANS,
        subjects.RUNS_PLANNED,
        "Evidence: run plans",
        retry_forever=True,
    )


def scheduler_completions_consumer() -> ConsumerSpec:
    """Completed runs release their coalescing claims: durable, so a completion published while no scheduler runs
    is acted on when one starts."""
    return ConsumerSpec(
        subjects.STREAM_RUNS,
        subjects.DURABLE_SCHEDULER_COMPLETIONS,
        subjects.RUNS_COMPLETED,
        "Scheduler: completed runs release their coalescing claims",
        retry_forever=True,
    )


def scheduler_tenant_completions_consumer() -> ConsumerSpec:
    return ConsumerSpec(
        subjects.STREAM_RUNS,
        subjects.DURABLE_SCHEDULER_TENANT_COMPLETIONS,
        subjects.TENANT_RUNS_COMPLETED,
        "Scheduler: tenants' completed runs release their coalescing claims",
        retry_forever=True,
    )


def evidence_joins_consumer() -> ConsumerSpec:
    return ConsumerSpec(
        subjects.STREAM_RUNS,
        subjects.DURABLE_EVIDENCE_JOINS,
        subjects.RUNS_JOINED,
        "Evidence: requests coalesced into runs in flight",
        retry_forever=True,
    )


def evidence_findings_consumer() -> ConsumerSpec:
    return ConsumerSpec(
        subjects.STREAM_FINDINGS,
        subjects.DURABLE_EVIDENCE_FINDINGS,
        "kushim.findings.>",
        "Evidence: findings chunks",
        retry_forever=True,
    )


def evidence_dead_letters_consumer() -> ConsumerSpec:
    return ConsumerSpec(
        subjects.STREAM_DLQ,
        subjects.DURABLE_EVIDENCE_DEAD_LETTERS,
        f"{subjects.DLQ_PREFIX}.>",
        "Evidence: dead letters into the database",
        retry_forever=True,
        dead_letters=False,
    )


def collector_consumer(service: Service) -> ConsumerSpec:
    return ConsumerSpec(
        subjects.STREAM_CHECKS,
        subjects.collector_durable(service),
        subjects.checks_subject(service),
        f"Collector {service.value}: check requests (shared by all replicas)",
    )


def all_consumers() -> list[ConsumerSpec]:
    return [
        scheduler_consumer(),
        scheduler_tenant_consumer(),
        scheduler_completions_consumer(),
        scheduler_tenant_completions_consumer(),
        evidence_plans_consumer(),
        evidence_joins_consumer(),
        evidence_findings_consumer(),
        evidence_dead_letters_consumer(),
        *(collector_consumer(service) for service in Service),
    ]


def consumer_config(spec: ConsumerSpec, settings: Settings) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=spec.durable,
        description=spec.description,
        filter_subject=spec.filter_subject,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=JsAckPolicy.EXPLICIT,
        ack_wait=settings.ack_wait_seconds,
        max_deliver=-1 if spec.retry_forever else settings.max_deliver,
        max_ack_pending=spec.max_ack_pending,
    )


_STREAM_EXISTS = 10058
_REPLICAS_NEED_A_CLUSTER = 10074  # "replicas > 1 not supported in non-clustered mode"


async def declare_topology(js: JetStreamContext, settings: Settings) -> None:
    """Create or update every stream and durable consumer. Safe to run from every replica at every start."""
    for config in stream_configs(settings):
        try:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:
                if exc.err_code != _STREAM_EXISTS:
                    raise
                await js.update_stream(config)
        except APIError as exc:
            if exc.err_code == _REPLICAS_NEED_A_CLUSTER or (settings.stream_replicas > 1 and "replica" in str(exc)):
                raise RuntimeError(
                    f"stream {config.name}: KUSHIM_STREAM_REPLICAS={settings.stream_replicas} needs a JetStream "
                    f"cluster of at least {settings.stream_replicas} servers; the server said: {exc.description}"
                ) from exc
            raise
    for spec in all_consumers():
        await js.add_consumer(spec.stream, consumer_config(spec, settings))
    await _replicate_buckets(js, settings)
    log.debug("topology_declared", streams=len(stream_configs(settings)), consumers=len(all_consumers()))


def kv_stream(bucket: str) -> str:
    """The stream that holds a JetStream key-value bucket."""
    return f"KV_{bucket}"


async def _replicate_buckets(js: JetStreamContext, settings: Settings) -> None:
    """The scheduler creates its key-value buckets (on first use, with KUSHIM_STREAM_REPLICAS); a bucket created before
    the setting changed gets the new replica count here, its other configuration unchanged."""
    for bucket in subjects.KV_BUCKETS:
        try:
            info = await js.stream_info(kv_stream(bucket))
        except NotFoundError:
            continue  # not created yet: the scheduler will, with the setting
        if info.config.num_replicas != settings.stream_replicas:
            info.config.num_replicas = settings.stream_replicas
            await js.update_stream(info.config)
            log.info("kv_bucket_replicas_changed", bucket=bucket, replicas=settings.stream_replicas)


def make_broker(
    url: str, *, name: str, settings: Settings, middlewares: Sequence[BrokerMiddleware[Any, Any]] = ()
) -> NatsBroker:
    """A broker that reconnects forever (FastStream#1538) and logs through our structlog-routed stdlib logger.

    `middlewares`: FastStream broker middlewares, outermost first (`Observability.broker_middlewares`: tracing,
    Prometheus metrics, dead-letter counting)."""
    return NatsBroker(
        url,
        name=f"kushim-{name}",
        max_reconnect_attempts=-1,
        reconnect_time_wait=2,
        connect_timeout=5,
        # Past KUSHIM_SHUTDOWN_GRACE_SECONDS, ServiceApp.stop hands back the handlers still running; the margin
        # lets them nack before the connection closes.
        graceful_timeout=settings.shutdown_grace_seconds + HAND_BACK_SECONDS,
        logger=logging.getLogger(f"faststream.access.nats.{name}"),
        log_level=logging.DEBUG,
        middlewares=middlewares,
    )


H = TypeVar("H", bound=Callable[..., Any])


def durable_subscriber(broker: NatsBroker, spec: ConsumerSpec, *, description: str) -> Callable[[H], H]:
    """Attach a handler to a declared durable pull consumer with a manual (explicit) ack policy.

    The handler receives the raw `NatsMessage` and validates inside (DESIGN: a typed argument under MANUAL ack
    would loop invalid messages until max_deliver with no dead letter).
    """
    decorator = broker.subscriber(
        spec.filter_subject,
        stream=JStream(spec.stream, declare=False),
        durable=spec.durable,
        pull_sub=PullSub(batch_size=1, timeout=2.0),
        ack_policy=AckPolicy.MANUAL,
        decoder=raw_body,
        title=f"{spec.durable}:{spec.filter_subject}",
        description=description,
    )
    return decorator  # type: ignore[return-value]


async def raw_body(msg: Any) -> Any:
    """FastStream's default decoder parses JSON bodies before the handler runs: a deeply nested body raised
    RecursionError there, outside our handler, and was redelivered for ever. The handler gets the bytes untouched
    and validates them itself (size first, then pydantic, which bounds nesting)."""
    return msg.body


def encode(message: BaseModel) -> bytes:
    return message.model_dump_json().encode()


async def publish_durable(
    broker: NatsBroker, subject: str, message: BaseModel, *, msg_id: str, stream: str, timeout: float = 10.0
) -> PubAck:
    """Publish into a stream with our own `Nats-Msg-Id` and wait for the PubAck (raises if none arrives)."""
    payload = encode(message)
    if len(payload) > MAX_MESSAGE_BYTES:
        raise ValueError(f"{subject} message of {len(payload)} bytes exceeds {MAX_MESSAGE_BYTES}")
    ack = await broker.publish(
        payload,
        subject,
        headers={"Nats-Msg-Id": msg_id, "content-type": "application/json"},
        stream=stream,
        timeout=timeout,
    )
    if ack is None:  # pragma: no cover - FastStream returns a PubAck whenever stream= is given
        raise RuntimeError(f"no PubAck for {subject}")
    return ack
