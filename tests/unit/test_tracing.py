"""When tracing is on (the standard OTEL_* environment), and what a trace context looks like."""

from __future__ import annotations

import pytest

from relayflow import tracing


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "console"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_traces_are_on_only_when_the_environment_asks(environ: dict[str, str], on: bool) -> None:
    assert tracing.wanted(environ) is on


def test_off_by_default_in_a_process_that_did_not_ask() -> None:
    assert tracing.on is False


def test_a_trace_id_is_read_from_a_traceparent_and_nothing_else() -> None:
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    assert tracing.trace_id(traceparent) == "0af7651916cd43dd8448eb211c80319c"
    assert tracing.trace_id(None) is None
    assert tracing.trace_id("00-short") is None
    assert tracing.incoming({"traceparent": traceparent.encode()}) == traceparent
    assert tracing.incoming({"traceparent": "garbage"}) is None
    assert tracing.incoming(None) is None
