"""Traces from the real services as processes: with the standard OTEL_* environment pointing at
an OTLP/HTTP collector (here, one in the test), a workflow run through the system is one trace
spanning the gateway, the orchestrator, the step service and the external system, its spans
linked parent to child, and the workflow's view names that trace."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import httpx
import pytest
import uvicorn
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relayflow.testing_system import free_port
from relayflow.workflow import WorkflowRegistry
from tests.e2e.conftest import running_system
from tests.e2e.test_system import form, wait_completed
from tests.support import wait_for

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Received:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, str]


@dataclass
class Collector:
    """An OTLP/HTTP trace receiver (protobuf), keeping what it is sent."""

    spans: list[Received] = field(default_factory=list)

    async def receive(self, request: Request) -> Response:
        export = ExportTraceServiceRequest()
        export.ParseFromString(await request.body())
        for resource_spans in export.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope in resource_spans.scope_spans:
                for span in scope.spans:
                    self.spans.append(
                        Received(
                            service=resource.get("service.name", ""),
                            name=span.name,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={
                                a.key: a.value.string_value or str(a.value.int_value)
                                for a in span.attributes
                            },
                        )
                    )
        return Response(b"", media_type="application/x-protobuf")

    def of(self, trace_id: str) -> list[Received]:
        return [span for span in self.spans if span.trace_id == trace_id]


@contextlib.asynccontextmanager
async def collecting() -> AsyncIterator[tuple[Collector, str]]:
    collector = Collector()
    app = Starlette(routes=[Route("/v1/traces", collector.receive, methods=["POST"])])
    sock = socket.socket()
    sock.bind(("127.0.0.1", free_port()))
    # log_config=None: uvicorn's default would reconfigure its loggers for the whole test
    # process (its access log no longer propagating), which later tests of the gateway's
    # access log would then never see.
    server = uvicorn.Server(uvicorn.Config(app, lifespan="off", log_config=None, access_log=False))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:

        async def started() -> bool:
            return bool(server.started)

        await wait_for(started, timeout=10)
        yield collector, f"http://127.0.0.1:{sock.getsockname()[1]}/v1/traces"
    finally:
        server.should_exit = True
        await serving
        sock.close()


async def test_a_workflow_is_one_trace_across_the_services(
    amqp_url: str,
    database_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
    tmp_path: Path,
) -> None:
    async with collecting() as (collector, endpoint):
        env = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
            # Export within a tenth of a second, not the default five.
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        }
        async with (
            running_system(
                prefix="tr",
                amqp_url=amqp_url,
                database_url=database_url,
                amqp_connection=amqp_connection,
                registry=registry,
                log_dir=tmp_path,
                env=env,
            ) as system,
            httpx.AsyncClient(timeout=10) as client,
        ):
            answer = await client.post(f"{system.base_url}/submit", json=form("traced"))
            assert answer.status_code == 202, answer.text
            workflow_id = answer.json()["workflowId"]
            view = await wait_completed(client, system.base_url, workflow_id)
            assert view["status"] == "completed"
            trace_id = view["traceId"]
            assert trace_id is not None
            assert len(trace_id) == 32
            page = await client.get(f"{system.base_url}/ui/workflows/{workflow_id}")
            assert f'data-trace-id="{trace_id}"' in page.text

            async def every_step_exported() -> bool:
                processed = {
                    span.attributes.get("relayflow.step", "")
                    for span in collector.of(trace_id)
                    if span.service == "steps" and span.name.startswith("process ")
                }
                return {"validate", "persist", "publishToMQ", "finalize"} <= processed

            await wait_for(every_step_exported, timeout=30)
    spans = collector.of(trace_id)
    assert {span.service for span in spans} >= {"gateway", "orchestrator", "steps", "external"}
    roots = [span for span in spans if not span.parent_id.strip("0")]
    assert [root.name for root in roots] == ["POST /submit"]
    known = {span.span_id for span in spans}
    assert all(span.parent_id in known for span in spans if span not in roots)
    processed = [span for span in spans if span.name.startswith("process ")]
    assert all(span.attributes["messaging.system"] == "rabbitmq" for span in processed)
    assert all(span.attributes["relayflow.workflow_id"] == workflow_id for span in processed)
