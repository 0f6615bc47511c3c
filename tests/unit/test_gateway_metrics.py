"""The gateway's request timer (services.gateway.metrics): how a request's route is labelled."""

from __future__ import annotations

import httpx
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from services.gateway.metrics import UNMATCHED, RequestDuration


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_requests_are_timed_by_route_template_and_status() -> None:
    """A label per workflow id would be a new series per request; the template is bounded, and
    every path no route matches shares one value."""

    async def item(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def broken(request: Request) -> Response:
        raise RuntimeError("boom")

    app = Starlette(
        routes=[Route("/m-items/{item_id}", item), Route("/m-broken", broken)],
        middleware=[Middleware(RequestDuration)],
    )
    ok = {"method": "GET", "route": "/m-items/{item_id}", "status": "200"}
    missing = {"method": "GET", "route": UNMATCHED, "status": "404"}
    failed = {"method": "GET", "route": "/m-broken", "status": "500"}
    name = "relayflow_http_request_duration_seconds_count"
    before = {key: sample(name, **labels) for key, labels in (("ok", ok), ("missing", missing))}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for item_id in ("a", "b"):
            assert (await client.get(f"/m-items/{item_id}")).status_code == 200
        assert (await client.get("/m-nowhere")).status_code == 404
        assert (await client.get("/m-broken")).status_code == 500
    assert sample(name, **ok) == before["ok"] + 2
    assert sample(name, **missing) == before["missing"] + 1
    assert sample(name, **failed) >= 1
