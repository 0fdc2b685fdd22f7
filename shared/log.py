"""Logging: structlog for our code, and the stdlib loggers of faststream, nats, aiobotocore, botocore and urllib3
routed through the same processors, so that one redaction processor sees every line.

Secrets never reach a log: keys that name credentials are masked whatever their value, and values that look like
AWS secrets, session tokens or ExternalIds are masked wherever they appear in text. Tracebacks carry no locals.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

import structlog
from opentelemetry import trace
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "***"

_SECRET_KEY = re.compile(
    r"(secret|password|passwd|token|credential|external_?id|authorization|signature|private_?key|session)",
    re.IGNORECASE,
)
_SAFE_KEYS = frozenset({"session_name", "request_id", "token_count", "secret_id"})

# name=value / "name": "value" pairs in free text (botocore and FastStream messages, exception strings).
_SECRET_PAIR = re.compile(
    r"""(?ix)
    (?P<key>[\w\-]*(?:secret[\w\-]*|session[_\-]?token|security[_\-]?token|external[_\-]?id|password|x-amz-security-token
        |authorization|credential)[\w\-]*)
    (?P<sep>["']?\s*[:=]\s*["']?)
    (?P<value>[^\s"',}&;]+)
    """
)
# Bare AWS access key ids (AKIA.../ASIA...) keep a recognisable prefix only.
_ACCESS_KEY_ID = re.compile(r"\b((?:AKIA|ASIA|AROA|AIDA)[A-Z0-9]{4})[A-Z0-9]{8,}\b")
# 40-character secret access keys and long base64 session tokens standing alone.
_LONG_SECRET = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])|[A-Za-z0-9/+=]{120,}")


def redact_text(text: str) -> str:
    """Mask secrets inside free text."""
    text = _SECRET_PAIR.sub(lambda m: f"{m.group('key')}{m.group('sep')}{REDACTED}", text)
    text = _ACCESS_KEY_ID.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _LONG_SECRET.sub(REDACTED, text)


def redact_value(key: str, value: Any) -> Any:
    if key not in _SAFE_KEYS and _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {k: redact_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(key, v) for v in value]
    if isinstance(value, BaseException):
        return redact_text(str(value))
    return value


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask credentials, session tokens and ExternalIds in every field and in the message."""
    for key in list(event_dict):
        if key in ("exc_info", "_record", "_from_structlog"):
            continue
        event_dict[key] = redact_value(key, event_dict[key])
    return event_dict


def _redact_rendered_exception(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    if "exception" in event_dict:
        event_dict["exception"] = redact_value("exception", event_dict["exception"])
    return event_dict


def add_trace_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """structlog processor: the `trace_id` and `span_id` of the active span (a message's processing under
    KUSHIM_TRACING), so that a log line leads to its trace. Nothing without tracing."""
    context = trace.get_current_span().get_span_context()
    if context.is_valid:
        event_dict.setdefault("trace_id", format(context.trace_id, "032x"))
        event_dict.setdefault("span_id", format(context.span_id, "016x"))
    return event_dict


THIRD_PARTY_LOGGERS: Mapping[str, int] = {
    "faststream": logging.INFO,
    "faststream.access.nats": logging.WARNING,
    "nats": logging.WARNING,
    "aiobotocore": logging.WARNING,
    "botocore": logging.WARNING,
    "boto3": logging.WARNING,
    "urllib3": logging.WARNING,
    "aiohttp": logging.WARNING,
    "sqlalchemy": logging.WARNING,
    "werkzeug": logging.WARNING,
    "uvicorn": logging.WARNING,
}


def configure_logging(level: str = "INFO", fmt: str = "console", stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger once, at a composition root (never at import)."""
    out = stream if stream is not None else sys.stderr
    shared_processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        add_trace_ids,
        redact_secrets,
    ]
    renderer: Processor
    if fmt == "json":
        final: list[Processor] = [
            structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
            _redact_rendered_exception,
            structlog.processors.JSONRenderer(),
        ]
    else:
        final = [
            structlog.processors.format_exc_info,
            _redact_rendered_exception,
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback),
        ]
    renderer = final[-1]
    structlog.configure(
        processors=[*shared_processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared_processors,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final[:-1], renderer],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name, floor in THIRD_PARTY_LOGGERS.items():
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
        # botocore & co. stay at WARNING even when Kushim runs at DEBUG: their DEBUG prints credentials.
        lg.setLevel(max(floor, logging.getLevelName(level)) if floor >= logging.WARNING else level)


def bind_message_context(context: MutableMapping[str, Any]) -> None:
    """Bind run context once per message (cleared by the caller with `structlog.contextvars.clear_contextvars`)."""
    structlog.contextvars.bind_contextvars(**context)
