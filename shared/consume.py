"""How every durable consumer processes one message: validate inside, act, then ack, nack or dead-letter.

- Invalid input (or a `Rejected` raised by the handler): a DeadLetter is published on `kushim.dlq.<consumer>` (its
  PubAck awaited), the rejection is logged with the reason, and the message is terminated. If even the dead letter
  cannot be written the message is nacked, never dropped.
- A failure (any other exception): nack with a growing delay, until the last allowed delivery (`max_deliver`), where
  the handler's `on_exhausted` gets a chance to record the failure (collectors publish ERROR findings) before the
  message is dead-lettered. Consumers that must not lose a run (`retry_forever`) retry outages (`is_outage`: the
  database, S3 or NATS unreachable, timeouts) for as long as they last; a message that fails for any other reason
  (a poison message) is dead-lettered once it has been delivered `max_deliver` times.
- Success: ack only after the handler returned, i.e. after its effect is durable.
Long handlers keep the message alive with `in_progress()` so `ack_wait` does not expire mid-scan.
- Stopping (`InFlight`): a service that stops waits for its running handlers up to KUSHIM_SHUTDOWN_GRACE_SECONDS;
  a handler still running then is cancelled and its message nacked without delay (handed back), so another
  replica takes it at once instead of after `ack_wait`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

import sqlalchemy.exc
import structlog
from botocore.exceptions import BotoCoreError, ClientError
from faststream.nats import NatsBroker, NatsMessage
from nats.errors import Error as NatsError
from nats.js.errors import APIError as JetStreamApiError
from nats.js.errors import ServiceUnavailableError
from opentelemetry import trace
from pydantic import BaseModel, ValidationError

from shared import subjects
from shared.aws import TransientAwsError
from shared.log import redact_text, redact_value
from shared.messages import DeadLetter
from shared.nats import ConsumerSpec, publish_durable
from shared.settings import Settings

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)
PAYLOAD_EXCERPT_BYTES = 2048
MAX_RETRY_DELAY_SECONDS = 300.0


class Rejected(Exception):
    """Raised by a handler for input that can never succeed: the message is dead-lettered, not retried."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def validation_reason(exc: ValidationError) -> str:
    """A validation error as a short reason, without the input (which may hold secrets)."""
    parts = []
    for err in exc.errors(include_input=False, include_url=False)[:5]:
        loc = ".".join(str(x) for x in err["loc"]) or "message"
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "invalid message: " + "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


SAFE_EXCERPT_KEYS = frozenset(
    {
        "schema_version",
        "request_id",
        "run_id",
        "account_id",
        "accounts",
        "service",
        "services",
        "requested_by",
        "requested_at",
        "regions",
        "chunk_index",
        "chunk_count",
        "attempt",
        "page",
        "page_size",
    }
)


def excerpt(body: bytes) -> str:
    """What a dead letter keeps of a payload: the values of known, harmless fields, and for every other field only
    its name and size. Outside input may carry anything (keys, passwords, tokens), and dead letters are kept long."""
    digest = hashlib.sha256(body).hexdigest()[:16]
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return f"<{len(body)} bytes, not JSON, sha256 {digest}>"
    if not isinstance(data, dict):
        return f"<{len(body)} bytes of JSON {type(data).__name__}, sha256 {digest}>"
    kept: dict[str, object] = {}
    for key, value in list(data.items())[:50]:
        name = str(key)[:64]
        size = len(json.dumps(value, default=str))
        if name in SAFE_EXCERPT_KEYS and size <= 256:
            kept[name] = redact_value(name, value)
        else:
            kept[name] = f"<redacted: {size} chars>"
    return json.dumps({"sha256": digest, "bytes": len(body), "fields": kept})[:PAYLOAD_EXCERPT_BYTES]


_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionError and friends
    TimeoutError,  # asyncio.timeout (the handler timeout) and socket timeouts
    BotoCoreError,  # endpoint unreachable, read timeout, ...
    TransientAwsError,
    NatsError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    sqlalchemy.exc.TimeoutError,  # connection pool exhausted
)

# PostgreSQL SQLSTATEs (classes and codes) that mean "the database is unavailable or busy", not "this data is bad":
# connection exceptions, insufficient resources (too many connections, disk full), operator intervention (admin
# shutdown, crash shutdown, cannot connect now, statement timeout / cancel), system errors, serialization failures,
# deadlocks, lock not available, and a read-only transaction (a failover left the pool on the old primary).
_PG_OUTAGE_CLASSES = ("08", "53", "57", "58")
_PG_OUTAGE_CODES = frozenset({"40001", "40P01", "55P03", "25006"})
# SQLite: locks and I/O are outages; other "operational" errors (no such table or column, syntax) are not.
_SQLITE_OUTAGE_WORDS = ("locked", "busy", "unable to open", "disk i/o", "disk is full", "readonly database")


def _sqlstate(exc: BaseException) -> str | None:
    for candidate in (getattr(exc, "orig", None), exc.__cause__, exc):
        code = getattr(candidate, "sqlstate", None) or getattr(candidate, "pgcode", None)
        if isinstance(code, str) and code:
            return code
    return None


def _database_outage(exc: sqlalchemy.exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    state = _sqlstate(exc)
    if state is not None:
        return state[:2] in _PG_OUTAGE_CLASSES or state in _PG_OUTAGE_CODES
    if isinstance(exc.orig, sqlite3.Error):
        text = str(exc.orig).lower()
        return any(word in text for word in _SQLITE_OUTAGE_WORDS)
    return isinstance(exc, sqlalchemy.exc.OperationalError)  # e.g. the server unreachable, no SQLSTATE


def is_outage(exc: BaseException) -> bool:
    """Does this failure say "something we depend on is unavailable" (retry until it is back) rather than "this
    message cannot be processed" (a poison message, given up after max_deliver)?"""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            return _database_outage(current)
        if isinstance(current, JetStreamApiError) and not isinstance(current, ServiceUnavailableError):
            # The JetStream API answered: a 4xx (e.g. a stream or bucket with another configuration) will not go
            # away by waiting; 5xx and "unavailable" will.
            return current.code is None or int(current.code) >= 500
        if isinstance(current, _OUTAGE_TYPES):
            return True
        if isinstance(current, ClientError):
            status = int(current.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
            code = str(current.response.get("Error", {}).get("Code", ""))
            if status >= 500 or status == 429 or code in ("SlowDown", "Throttling", "ThrottlingException"):
                return True
        current = current.__cause__
    return False


MAX_REASON_CHARS = 500


def describe_failure(exc: BaseException) -> str:
    """A failure as a short, redacted line for logs and dead letters. Database errors lose the SQL and the bound
    parameters SQLAlchemy appends (message values, kept 90 days in a dead letter); SQLSTATE is kept."""
    text = str(exc)
    if isinstance(exc, sqlalchemy.exc.StatementError):
        text = str(exc.orig) if exc.orig is not None else text.split("\n[SQL:", 1)[0]
        state = _sqlstate(exc)
        if state:
            text = f"SQLSTATE {state}: {text}"
    text = " ".join(redact_text(text).split())
    if len(text) > MAX_REASON_CHARS:
        text = text[: MAX_REASON_CHARS - 1] + "…"
    return f"{type(exc).__name__}: {text}"


@dataclass(frozen=True, slots=True)
class Delivery:
    """Facts about one delivery of a JetStream message."""

    subject: str
    stream_sequence: int | None
    num_delivered: int

    @classmethod
    def of(cls, msg: NatsMessage) -> Delivery:
        raw = msg.raw_message
        try:
            md = raw.metadata
            return cls(raw.subject, md.sequence.stream, md.num_delivered)
        except Exception:  # not a JetStream message (tests with an in-memory broker)
            return cls(raw.subject, None, 1)


class DeadLetters:
    """Writes dead letters for one consumer into the KUSHIM_DLQ stream."""

    def __init__(self, broker: NatsBroker, consumer: str) -> None:
        self._broker = broker
        self._consumer = consumer

    async def write(self, delivery: Delivery, body: bytes, reason: str) -> None:
        letter = DeadLetter(
            consumer=self._consumer,
            subject=delivery.subject,
            reason=reason,
            stream_sequence=delivery.stream_sequence,
            num_delivered=delivery.num_delivered,
            payload_excerpt=excerpt(body),
            dead_lettered_at=datetime.now(UTC),
        )
        seq = (
            delivery.stream_sequence if delivery.stream_sequence is not None else hashlib.sha256(body).hexdigest()[:32]
        )
        await publish_durable(
            self._broker,
            subjects.dlq_subject(self._consumer),
            letter,
            msg_id=f"dlq:{self._consumer}:{seq}",
            stream=subjects.STREAM_DLQ,
        )


@contextlib.asynccontextmanager
async def keep_alive(msg: NatsMessage, interval: float) -> AsyncIterator[None]:
    """Tell the server every `interval` seconds that the message is still being worked on."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(interval)
            with contextlib.suppress(Exception):
                await msg.in_progress()

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _annotate_span(context: dict[str, object]) -> None:
    """The message's run context (run, request, account ids, service) on its processing span, when tracing: a trace
    is found by its run id. Identifiers only, never payload values."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"kushim.{key}": str(value) for key, value in context.items() if value is not None})


class HandedBack(Exception):
    """The service stopped before the handler finished: its message goes back to the stream for another replica."""

    def __init__(self) -> None:
        super().__init__("the service stopped before this message's work finished (KUSHIM_SHUTDOWN_GRACE_SECONDS)")


class InFlight:
    """The handlers a service's consumers are running, so that stopping can wait for them and hand back the rest.

    `run` runs a handler as a task of its own; `hand_back_after(grace)` (the service's stop, while the broker stops
    fetching) waits up to `grace` seconds for the running handlers, then cancels those still running: `run` raises
    `HandedBack` in their consumers, which nack their messages without delay while the connection is still open.
    """

    def __init__(self) -> None:
        self._running: set[asyncio.Task[None]] = set()
        self._handed_back: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        """How many handlers are running now."""
        return len(self._running)

    async def run(self, handler: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(handler)
        self._running.add(task)
        try:
            await task  # cancelling the caller (the handler timeout) cancels the task too
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task in self._handed_back and not (current is not None and current.cancelling()):
                raise HandedBack() from None
            raise
        finally:
            self._running.discard(task)
            self._handed_back.discard(task)

    async def hand_back_after(self, grace: float) -> int:
        """Wait up to `grace` seconds for the running handlers; cancel those still running. Returns their count."""
        running = set(self._running)
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        late = [task for task in self._running if not task.done()]
        for task in late:
            self._handed_back.add(task)
            task.cancel()
        return len(late)


Handler = Callable[[M, Delivery, NatsMessage], Coroutine[object, object, None]]
OnRejected = Callable[[bytes, str, Delivery], Awaitable[None]]
OnExhausted = Callable[[M, Delivery, BaseException], Awaitable[bool]]


class Consumer(Generic[M]):
    """Runs one handler under the reliability rules above."""

    def __init__(
        self,
        *,
        spec: ConsumerSpec,
        model: type[M],
        handler: Handler[M],
        broker: NatsBroker,
        settings: Settings,
        on_rejected: OnRejected | None = None,
        on_exhausted: OnExhausted[M] | None = None,
        context: Callable[[M], dict[str, object]] | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        """`in_flight`: the service's running handlers (`ServiceApp.in_flight`), waited for and handed back when it
        stops; without it the handlers are only waited for (FastStream's graceful timeout)."""
        self.name = spec.durable
        self._in_flight = in_flight if in_flight is not None else InFlight()
        self._model = model
        self._handler = handler
        self._settings = settings
        self._dead_letters = DeadLetters(broker, spec.durable)
        self._on_rejected = on_rejected
        self._on_exhausted = on_exhausted
        self._context = context
        self._retry_forever = spec.retry_forever
        self._dead_letter = spec.dead_letters
        self._max_body_bytes = spec.max_body_bytes

    async def __call__(self, msg: NatsMessage) -> None:
        body: bytes = msg.body
        delivery = Delivery.of(msg)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(consumer=self.name, subject=delivery.subject)
        try:
            if self._max_body_bytes is not None and len(body) > self._max_body_bytes:
                await self._reject(
                    msg, delivery, body, f"message of {len(body)} bytes exceeds the limit of {self._max_body_bytes}"
                )
                return
            try:
                payload = self._model.model_validate_json(body)
            except ValidationError as exc:
                await self._reject(msg, delivery, body, validation_reason(exc))
                return
            if self._context is not None:
                context = self._context(payload)
                structlog.contextvars.bind_contextvars(**context)
                _annotate_span(context)
            try:
                async with (
                    keep_alive(msg, max(1.0, self._settings.ack_wait_seconds / 3)),
                    asyncio.timeout(self._settings.handler_timeout_seconds),
                ):
                    await self._in_flight.run(self._handler(payload, delivery, msg))
            except HandedBack as exc:
                if self._retry_forever or delivery.num_delivered < self._settings.max_deliver:
                    log.warning(
                        "message_handed_back",
                        reason="the service stopped before the work finished (KUSHIM_SHUTDOWN_GRACE_SECONDS)",
                        delivery=delivery.num_delivered,
                        max_deliver=self._settings.max_deliver,
                    )
                    await msg.nack()  # no delay: another replica takes it now
                else:  # the server would not deliver it again: recorded as failed (collectors: ERROR findings)
                    await self._failed(msg, delivery, body, payload, exc)
                return
            except Rejected as exc:
                await self._reject(msg, delivery, body, exc.reason)
                return
            except Exception as exc:
                await self._failed(msg, delivery, body, payload, exc)
                return
            await msg.ack()
        finally:
            structlog.contextvars.clear_contextvars()

    async def _reject(self, msg: NatsMessage, delivery: Delivery, body: bytes, reason: str) -> None:
        if not self._dead_letter:
            log.error("message_dropped_unstorable", reason=reason, stream_sequence=delivery.stream_sequence)
            await msg.reject()
            return
        log.warning("message_rejected", reason=reason, stream_sequence=delivery.stream_sequence)
        try:
            await self._dead_letters.write(delivery, body, reason)
            if self._on_rejected is not None:
                await self._on_rejected(body, reason, delivery)
        except Exception as exc:
            log.error("dead_letter_failed", error=str(exc), retry_in=self._settings.retry_delay_seconds)
            await msg.nack(delay=self._settings.retry_delay_seconds)
            return
        await msg.reject()

    async def _failed(self, msg: NatsMessage, delivery: Delivery, body: bytes, payload: M, exc: BaseException) -> None:
        spent = delivery.num_delivered >= self._settings.max_deliver
        last = spent and not (self._retry_forever and is_outage(exc))
        if not last:
            exponent = min(delivery.num_delivered - 1, 20)
            delay = min(MAX_RETRY_DELAY_SECONDS, self._settings.retry_delay_seconds * 2**exponent)
            persistent = delivery.num_delivered >= self._settings.max_deliver
            (log.error if persistent else log.warning)(
                "message_failed_will_retry",
                error=describe_failure(exc),
                delivery=delivery.num_delivered,
                max_deliver=self._settings.max_deliver,
                retry_in=delay,
            )
            await msg.nack(delay=delay)
            return
        log.error(
            "message_failed_finally",
            error=describe_failure(exc),
            delivery=delivery.num_delivered,
            exc_info=exc,
        )
        recorded = False
        if self._on_exhausted is not None:
            try:
                recorded = await self._on_exhausted(payload, delivery, exc)
            except Exception as inner:
                log.error("on_exhausted_failed", error=f"{type(inner).__name__}: {inner}")
        if recorded:
            await msg.ack()
            return
        await self._reject(
            msg, delivery, body, f"failed after {delivery.num_delivered} deliveries: {describe_failure(exc)}"
        )
