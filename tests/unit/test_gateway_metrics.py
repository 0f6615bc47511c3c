"""The gateway's request timer (services.gateway.metrics): how a request's route is labelled,
and that it times a request once, at its response, leaving a stream's chunks alone."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from types import FrameType

import httpx
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from services.gateway import metrics
from services.gateway.metrics import UNMATCHED, Arrival, timed_handlers, timed_routes

NAME = "relayflow_http_request_duration_seconds_count"


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def item(request: Request) -> Response:
    return PlainTextResponse("ok")


async def broken(request: Request) -> Response:
    raise RuntimeError("boom")


async def refused(request: Request) -> Response:
    raise HTTPException(409, "no")


async def stream(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(int(request.query_params["chunks"])):
            yield b"data: x\n\n"

    return StreamingResponse(chunks(), media_type="text/event-stream")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return PlainTextResponse(exc.detail, status_code=exc.status_code)


def timed_app() -> Starlette:
    routes = [
        Route("/m-items/{item_id}", item),
        Route("/m-broken", broken),
        Route("/m-refused", refused, methods=["POST"]),
        Route("/m-stream", stream),
    ]
    return Starlette(
        routes=timed_routes(routes),
        middleware=[Middleware(Arrival)],
        exception_handlers=timed_handlers({HTTPException: _http_error}),
    )


async def test_requests_are_timed_by_route_template_and_status() -> None:
    """A label per workflow id would be a new series per request; the template is bounded, and
    every path no route matches shares one value. Errors count with the status their handler
    gave them, a crash as a 500."""
    ok = {"method": "GET", "route": "/m-items/{item_id}", "status": "200"}
    missing = {"method": "GET", "route": UNMATCHED, "status": "404"}
    failed = {"method": "GET", "route": "/m-broken", "status": "500"}
    conflict = {"method": "POST", "route": "/m-refused", "status": "409"}
    wrong_method = {"method": "GET", "route": "/m-refused", "status": "405"}
    cases = {"ok": ok, "missing": missing, "failed": failed, "conflict": conflict}
    before = {key: sample(NAME, **labels) for key, labels in cases.items()}
    before_405 = sample(NAME, **wrong_method)
    transport = httpx.ASGITransport(app=timed_app(), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for item_id in ("a", "b"):
            assert (await client.get(f"/m-items/{item_id}")).status_code == 200
        assert (await client.get("/m-nowhere")).status_code == 404
        assert (await client.get("/m-broken")).status_code == 500
        assert (await client.post("/m-refused")).status_code == 409
        assert (await client.get("/m-refused")).status_code == 405
    assert sample(NAME, **ok) == before["ok"] + 2
    assert sample(NAME, **missing) == before["missing"] + 1
    assert sample(NAME, **failed) == before["failed"] + 1
    assert sample(NAME, **conflict) == before["conflict"] + 1
    assert sample(NAME, **wrong_method) == before_405 + 1


async def test_a_stream_is_timed_once_and_its_chunks_pass_through_untouched() -> None:
    """An event stream sends for as long as it is open, to thousands of clients: no code of the
    timer's may run per chunk (a wrapped `send` would), and the stream counts once."""
    labels = {"method": "GET", "route": "/m-stream", "status": "200"}
    before = sample(NAME, **labels)
    transport = httpx.ASGITransport(app=timed_app())
    timer_code = metrics.__file__

    async def calls_into_timer(chunks: int) -> int:
        calls = 0

        def profile(frame: FrameType, event: str, arg: object) -> None:
            nonlocal calls
            if event == "call" and frame.f_code.co_filename == timer_code:
                calls += 1

        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            sys.setprofile(profile)
            try:
                response = await client.get("/m-stream", params={"chunks": chunks})
            finally:
                sys.setprofile(None)
        assert response.content == b"data: x\n\n" * chunks
        return calls

    await calls_into_timer(1)  # the first one also makes the route's child
    assert await calls_into_timer(1) == await calls_into_timer(50)
    assert sample(NAME, **labels) == before + 3
