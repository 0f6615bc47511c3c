"""`python -m bench.metrics_cost`: the CPU the metrics add per five-step workflow, measured on the
code that counts, without broker or database — the cost the bench's A/B (`bench.ab`) cannot
resolve on a shared two-core machine, whose run-to-run noise is several times larger.

Per workflow of the bench (`bench5`: five remote steps, each workflow POSTed and followed on its
event stream), the metrics do: one `count_events` over the workflow's events (started, five
steps started and completed, completed) with `count_duplicates` for its 11 messages, the
redelivered test of those 11 deliveries (`BatchConsumer`), two timed gateway requests (the POST
and the stream's opening) and a stream opened and closed. Each is timed here over many
repetitions, switched on and off (`relayflow.metrics.switch`); the gateway's request timer as
the difference between a Starlette app with and without it (`Arrival`, `timed_routes`), driven
straight through ASGI. The sum, in microseconds, is divided by the services' CPU per workflow
that the bench reports (`--services-ms`, default 9.5 ms: `cpu_services_per_wf` of an A/B's
rounds) for the share.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message

from relayflow import metrics
from relayflow.contracts import EventType, WorkflowEvent, new_message_id
from relayflow.model import StepState, StepStatus, WorkflowState, WorkflowStatus
from services.gateway.metrics import Arrival, timed_handlers, timed_routes

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STEPS = [f"step{i}" for i in range(1, 6)]
MESSAGES = 11  # a start, five commands, five results


def workflow_batch() -> tuple[list[WorkflowEvent], dict[str, WorkflowState]]:
    def event(kind: EventType, step: str | None = None) -> WorkflowEvent:
        return WorkflowEvent(
            message_id=new_message_id(),
            workflow_id="wf_cost",
            seq=1,
            event=kind,
            workflow_name="bench5",
            step_name=step,
            created_at=T0 + timedelta(seconds=1),
        )

    events = [event(EventType.WORKFLOW_STARTED)]
    for step in STEPS:
        events += [event(EventType.STEP_STARTED, step), event(EventType.STEP_COMPLETED, step)]
    events.append(event(EventType.WORKFLOW_COMPLETED))
    state = WorkflowState(
        id="wf_cost",
        name="bench5",
        status=WorkflowStatus.COMPLETED,
        input={},
        input_hash="",
        steps={
            step: StepState(status=StepStatus.COMPLETED, attempts=1, started_at=T0, finished_at=T0)
            for step in STEPS
        },
        created_at=T0,
        updated_at=T0,
    )
    return events, {"wf_cost": state}


class _Delivery:
    redelivered = False


def per_call_us(work: Callable[[], object], n: int) -> float:
    best = float("inf")
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(n):
            work()
        best = min(best, time.perf_counter() - started)
    return best / n * 1e6


def engine_us(n: int) -> float:
    """What one workflow's counting costs the processes that apply it."""
    events, states = workflow_batch()
    fresh = [True] * MESSAGES
    deliveries: Sequence[Any] = [_Delivery()] * MESSAGES

    def one_workflow() -> None:
        metrics.count_events(events, states)
        metrics.count_duplicates(fresh)
        metrics.count_redeliveries("q", sum(1 for m in deliveries if m.redelivered))

    return per_call_us(one_workflow, n)


def gateway_us(n: int) -> float:
    """Two requests' timer and one stream's gauge: with the timer minus without it."""

    async def endpoint(request: Request) -> Response:
        return Response(b"{}", status_code=202)

    routes = [Route("/workflows/{name_or_id}", endpoint, methods=["POST"])]
    plain = Starlette(routes=routes)
    timed = Starlette(
        routes=timed_routes(routes),
        middleware=[Middleware(Arrival)],
        exception_handlers=timed_handlers({}),
    )
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/workflows/bench5",
        "raw_path": b"/workflows/bench5",
        "root_path": "",
        "scheme": "http",
        "query_string": b"",
        "headers": [],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
    }

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    async def run(app: Starlette) -> float:
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                await app(dict(scope), receive, send)
            best = min(best, time.perf_counter() - started)
        return best / n * 1e6

    async def both() -> tuple[float, float]:
        await run(plain), await run(timed)  # warm both
        return await run(plain), await run(timed)

    without, with_timer = asyncio.run(both())

    def stream() -> None:
        metrics.sse_opened()
        metrics.sse_closed()

    gauge = per_call_us(stream, n)
    return 2 * max(with_timer - without, 0.0) + gauge


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics_cost", description=__doc__)
    parser.add_argument("--n", type=int, default=20000, help="repetitions per figure (20000)")
    parser.add_argument(
        "--services-ms", type=float, default=9.5, help="services' CPU per workflow (9.5 ms)"
    )
    args = parser.parse_args(argv)
    engine_on = engine_us(args.n)
    metrics.switch(on=False)
    engine_off = engine_us(args.n)
    metrics.switch(on=True)
    gateway = gateway_us(args.n // 4)
    added = engine_on - engine_off + gateway
    print(f"orchestrator / step service, per workflow: {engine_on:.1f} us on, {engine_off:.1f} off")
    print(f"gateway, per workflow (2 timed requests, 1 stream gauged): {gateway:.1f} us")
    print(
        f"metrics add {added:.1f} us per workflow: {100 * added / (args.services_ms * 1000):.2f}% "
        f"of the services' {args.services_ms} ms"
    )


if __name__ == "__main__":
    main()
