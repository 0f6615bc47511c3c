"""Traces (OpenTelemetry): one trace per workflow, across the gateway, the orchestrator and the
step services, carried from message to message by the W3C `traceparent` AMQP header.

Off unless the standard environment asks for it — `OTEL_TRACES_EXPORTER` (`otlp`, `console`) or
an `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, and not `OTEL_SDK_DISABLED=true` — and then the OTLP
exporter (HTTP/protobuf) reads the rest of its `OTEL_*` settings itself. Off, nothing here runs:
every call site tests `tracing.on` first, so a service pays one attribute read per batch.

The spans follow OpenTelemetry's messaging conventions for RabbitMQ: a consumer's `process
<queue>` span per message (kind CONSUMER, its parent the message's `traceparent`), a `send
<exchange>` span around a direct publish (PRODUCER), and a `create <exchange>` span for a message
written to an outbox (PRODUCER; ended at once: what is timed is the decision, the relay sends it
later, with the `traceparent` kept in the outbox row). So a StartWorkflow's `process` span is the
parent of its first command's `create`, whose context the step service continues, and so on: the
workflow's trace follows what caused what. The trace context a workflow started with is kept with
it (`WorkflowState.trace_parent`), for what its own inputs do not carry — timers, and inputs whose
sender sent no `traceparent`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:  # imported only where tracing is on
    from aio_pika.abc import AbstractIncomingMessage
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, Tracer

log = logging.getLogger(__name__)

TRACEPARENT: Final = "traceparent"
# Whether spans are made; set once, by `configure`.
on = False
_tracer: Tracer | None = None
_provider: TracerProvider | None = None
# The service this process is, on every span (`relayflow.service`: several services may share a
# process in tests and in embedded use).
_service = ""
# The `process` span of each message being worked on, by message id: where a step body, or what
# a command's result causes, finds the span it continues.
_active: dict[str, Span] = {}


def wanted(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the OTEL_* environment asks for traces."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def configure(service: str, exporter: SpanExporter | None = None) -> bool:
    """Start tracing for this process as `service` if the environment asks for it (or with
    `exporter`, for tests); returns whether it is on."""
    global on, _tracer, _provider, _service  # noqa: PLW0603 - the process's one tracer
    if exporter is None and not wanted():
        return False
    _service = service
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415 - only when on
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import (  # noqa: PLC0415
        BatchSpanProcessor,
        SimpleSpanProcessor,
    )

    provider = TracerProvider(
        resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", service)})
    )
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter_from_environment()))
    _provider, _tracer, on = provider, provider.get_tracer("relayflow"), True
    log.info(
        "tracing on: spans of %s go to %s",
        service,
        type(exporter).__name__ if exporter else "the OTEL_* exporter",
    )
    return True


def _exporter_from_environment() -> SpanExporter:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter()
    if kind not in ("", "otlp"):
        log.warning("OTEL_TRACES_EXPORTER=%s is not supported here; using otlp", kind)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    return OTLPSpanExporter()


def shutdown() -> None:
    """Send what is buffered and stop (a service's last act)."""
    global on  # noqa: PLW0603
    if _provider is not None:
        _provider.shutdown()
    on = False


def _context_of(traceparent: str | None) -> Any:
    """The OpenTelemetry context a `traceparent` names (None: a new trace)."""
    if not traceparent:
        return None
    from opentelemetry.trace.propagation.tracecontext import (  # noqa: PLC0415
        TraceContextTextMapPropagator,
    )

    return TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent})


def traceparent_of(span: Span) -> str:
    """`span`'s context as a W3C `traceparent`."""
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"


def incoming(headers: Mapping[str, Any] | None) -> str | None:
    """The `traceparent` a message carries, if a well-formed one."""
    value = (headers or {}).get(TRACEPARENT)
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    return value if isinstance(value, str) and len(value) == 55 else None


def _messaging(
    operation: str, kind: str, destination: str, routing_key: str, message_id: str | None
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.system": "rabbitmq",
        "messaging.operation.type": kind,
        "messaging.operation.name": operation,
        "messaging.destination.name": destination,
        "messaging.rabbitmq.destination.routing_key": routing_key,
    }
    if message_id:
        attributes["messaging.message.id"] = message_id
    return attributes


def process(
    message: AbstractIncomingMessage,
    queue: str,
    message_id: str,
    workflow_id: str,
    **attributes: Any,
) -> Span:
    """A started CONSUMER span for one message received from `queue`, continuing its sender's
    trace; the caller ends it (`begin` and `finish`). `attributes` are relayflow's own, by
    their names after `relayflow.` (`step`, `attempt`, …)."""
    from opentelemetry.trace import SpanKind  # noqa: PLC0415

    assert _tracer is not None
    attrs = _messaging("process", "process", queue, message.routing_key or "", message_id)
    attrs["messaging.consumer.group.name"] = queue
    attrs["messaging.message.body.size"] = len(message.body)
    attrs["relayflow.service"] = _service
    attrs["relayflow.workflow_id"] = workflow_id
    if message.correlation_id:
        attrs["messaging.message.conversation_id"] = message.correlation_id
    attrs.update({f"relayflow.{k}": v for k, v in attributes.items() if v is not None})
    return _tracer.start_span(
        f"process {queue}",
        context=_context_of(incoming(message.headers)),
        kind=SpanKind.CONSUMER,
        attributes=attrs,
    )


def created(
    parent: str | None,
    exchange: str,
    routing_key: str,
    message_id: str,
    workflow_id: str | None = None,
) -> str:
    """The `traceparent` of a message written to an outbox: a PRODUCER `create` span under
    `parent` (a traceparent; None: a new trace), ended at once."""
    from opentelemetry.trace import SpanKind  # noqa: PLC0415

    assert _tracer is not None
    attrs = _messaging("create", "create", exchange, routing_key, message_id)
    attrs["relayflow.service"] = _service
    if workflow_id is not None:
        attrs["relayflow.workflow_id"] = workflow_id
    span = _tracer.start_span(
        f"create {exchange}", context=_context_of(parent), kind=SpanKind.PRODUCER, attributes=attrs
    )
    span.end()
    return traceparent_of(span)


def sending(
    parent: Span | str | None,
    exchange: str,
    routing_key: str,
    message_id: str,
    workflow_id: str | None = None,
) -> Span:
    """A started PRODUCER `send` span for a direct publish; the caller ends it once confirmed."""
    from opentelemetry import trace  # noqa: PLC0415
    from opentelemetry.trace import SpanKind  # noqa: PLC0415

    assert _tracer is not None
    attrs = _messaging("send", "send", exchange, routing_key, message_id)
    attrs["relayflow.service"] = _service
    if workflow_id is not None:
        attrs["relayflow.workflow_id"] = workflow_id
    context = (
        trace.set_span_in_context(parent)
        if parent is not None and not isinstance(parent, str)
        else _context_of(parent)
    )
    return _tracer.start_span(
        f"send {exchange}", context=context, kind=SpanKind.PRODUCER, attributes=attrs
    )


def server(name: str, traceparent: str | None, **attributes: Any) -> Span:
    """A started SERVER span for an HTTP request (its client's trace, if it sent one)."""
    from opentelemetry.trace import SpanKind  # noqa: PLC0415

    assert _tracer is not None
    return _tracer.start_span(
        name,
        context=_context_of(traceparent),
        kind=SpanKind.SERVER,
        attributes={k: v for k, v in attributes.items() if v is not None},
    )


def begin(message_id: str, span: Span) -> None:
    """`span` is the one message `message_id` is processed in, until `finish`."""
    _active[message_id] = span


def active(message_id: str) -> Span | None:
    return _active.get(message_id)


def finish(message_id: str, error: str | None = None) -> None:
    """End the `process` span of `message_id`; `error`: why it failed (dead-lettered, say)."""
    span = _active.pop(message_id, None)
    if span is None:
        return
    if error is not None:
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415

        span.set_status(Status(StatusCode.ERROR, error))
    span.end()


def current() -> Span | None:
    """The span current in this task, if any."""
    from opentelemetry import trace  # noqa: PLC0415

    span = trace.get_current_span()
    return span if span.get_span_context().is_valid else None


def in_span(span: Span | None) -> AbstractContextManager[Any]:
    """`span` as the current span for the block (a step body's own spans nest under it)."""
    if span is None:
        return contextlib.nullcontext()
    from opentelemetry import trace  # noqa: PLC0415

    return trace.use_span(span, end_on_exit=False)


def trace_id(traceparent: str | None) -> str | None:
    """The trace id (32 hex digits) in a `traceparent`."""
    if not traceparent or len(traceparent) != 55:
        return None
    return traceparent[3:35]
