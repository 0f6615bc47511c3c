"""How every service logs: text for a terminal, or JSON lines for a log pipeline
(`RELAYFLOW_LOG_FORMAT=text|json`), with what the line is about and never a secret.

What a line is about comes from context, not from each call: `bound(workflow_id=…, step=…,
step_key=…, attempt=…)` around a step's body (and a local task's) puts those fields on every line
logged inside it — the body's own lines too — through structlog's context variables, which an
asyncio task inherits from where it was created and cannot leak into another. JSON lines carry
`time`, `level`, `service`, `logger`, `message`, the bound fields, and `exception` (the
traceback) when there is one; the text format appends the bound fields in brackets.

Secrets never reach a line (`redact`): a password in a URL (`amqp://user:***@…`), an API key
(`rf_<id>_***`, the id kept: that is how logs name a key), a stream token in a query, a
`Bearer` credential, a `password=` pair, and the exact values of the secrets the process was
configured with. Redaction runs on the finished line — message, arguments and traceback alike —
so no call site needs to remember it.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterable
from enum import StrEnum
from typing import IO, Any
from urllib.parse import unquote, urlsplit

import orjson
import structlog
from structlog.contextvars import bound_contextvars, get_contextvars
from structlog.typing import EventDict, WrappedLogger


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


REDACTED = "***"
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://user:password@host — the user stays, it tells which account.
    (re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*:)[^\s@/]+@"), rf"\g<1>{REDACTED}@"),
    # rf_<id>_<secret> (relayflow.auth.keys): the id names the key; the secret is the key.
    (re.compile(r"\b(rf_[a-z2-7]+_)[A-Za-z0-9_-]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"([?&]token=)[^&\s\"']+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s\"',]+"), rf"\g<1>{REDACTED}"),
    (re.compile(r"(?i)\b(password\s*[=:]\s*)[^\s\"',&]+"), rf"\g<1>{REDACTED}"),
)
# The order the text format shows bound fields in (others follow, by name).
_ORDER = {key: i for i, key in enumerate(("workflow_id", "step", "step_key", "attempt"))}
# Shorter "secrets" would blot out ordinary words (a development password like `guest`).
_SHORTEST_SECRET = 8


def url_secrets(*urls: str) -> list[str]:
    """The passwords in these URLs (comma-separated lists of URLs too), as written and decoded."""
    found: list[str] = []
    for text in urls:
        for url in text.split(","):
            password = urlsplit(url.strip()).password
            if password:
                found.extend({password, unquote(password)})
    return found


class Redactor:
    """Takes secrets out of a finished log line."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted(
            {s for s in secrets if len(s) >= _SHORTEST_SECRET}, key=len, reverse=True
        )

    def __call__(self, line: str) -> str:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, REDACTED)
        for pattern, replacement in _PATTERNS:
            line = pattern.sub(replacement, line)
        return line


def bound(**fields: Any) -> contextlib.AbstractContextManager[None]:
    """Every line logged inside the block (in this task, and in tasks it creates) carries
    `fields`; None values are left out."""
    return bound_contextvars(**{k: v for k, v in fields.items() if v is not None})


class TextFormatter(logging.Formatter):
    """The terminal's format: one line per record, the bound fields in brackets at its end."""

    def __init__(self, service: str, redactor: Redactor) -> None:
        super().__init__(f"%(asctime)s %(levelname)-7s {service} %(name)s: %(message)s")
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = get_contextvars()
        if context:
            keys = sorted(context, key=lambda key: (_ORDER.get(key, len(_ORDER)), key))
            fields = " ".join(f"{key}={context[key]}" for key in keys)
            head, newline, rest = line.partition("\n")  # before a traceback, if any
            line = f"{head} [{fields}]{newline}{rest}"
        return self._redact(line)


def _add_service(service: str) -> structlog.types.Processor:
    def add(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
        event["service"] = service
        return event

    return add


def _dumps(value: Any, **_: Any) -> str:
    return orjson.dumps(value, default=str).decode()


class JsonFormatter(structlog.stdlib.ProcessorFormatter):
    """JSON lines: time, level, service, logger, message, the bound fields, exception."""

    def __init__(self, service: str, redactor: Redactor) -> None:
        super().__init__(
            foreign_pre_chain=[
                structlog.contextvars.merge_contextvars,
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True, key="time"),
                _add_service(service),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.EventRenamer("message"),
                structlog.processors.JSONRenderer(serializer=_dumps),
            ],
        )
        self._redact = redactor

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(super().format(record))


def configure(
    service: str,
    level: str,
    fmt: LogFormat = LogFormat.TEXT,
    *,
    secrets: Iterable[str] = (),
    stream: IO[str] | None = None,
) -> logging.Handler:
    """Send every logger's records to one handler on `stream` (stderr) in `fmt`, with `secrets`
    (and the patterns above) redacted; returns the handler."""
    redactor = Redactor(secrets)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(
        JsonFormatter(service, redactor)
        if fmt is LogFormat.JSON
        else TextFormatter(service, redactor)
    )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aio-pika and aiormq narrate every reconnect attempt at INFO; we log our own view of it.
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    return handler
