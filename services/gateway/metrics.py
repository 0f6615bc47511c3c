"""The gateway's Prometheus metrics: `/metrics` on its own HTTP port, and how long each request
takes, by method, route template and status (`relayflow_http_request_duration_seconds`).

`/metrics` asks for no key, like the probes (`access.PUBLIC_PATHS`): scrapers seldom carry one,
and on the default loopback bind only this machine reaches it. A gateway bound to a public
address should keep `/metrics` behind its proxy (README, "Metrics")."""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from relayflow.metrics import HTTP_DURATION

# The route of a request no route matched (404s, 405s of unknown paths): one label value, so
# that scanners cannot grow the label set.
UNMATCHED = "unmatched"


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


class RequestDuration:
    """ASGI middleware: the time from a request's arrival to its response's headers (so that an
    event stream counts its opening, not its life), labelled by the route's template
    (`/workflows/{workflow_id}`, never the id itself) and status. A request that raises before
    answering counts as a 500.

    Per request it costs one observation, from a child looked up once per (method, route,
    status); once the headers are out, each further send (an event stream's every chunk) passes
    through one flag test."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._children: dict[tuple[str, str, int], Histogram] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        answered = False

        async def timed_send(message: Message) -> None:
            nonlocal answered
            if not answered and message["type"] == "http.response.start":
                answered = True
                self._observe(scope, message["status"], started)
            await send(message)

        try:
            await self._app(scope, receive, timed_send)
        finally:
            if not answered:
                self._observe(scope, 500, started)

    def _observe(self, scope: Scope, status: int, started: float) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        template = getattr(route, "path", UNMATCHED) if isinstance(route, BaseRoute) else UNMATCHED
        key = (scope["method"], template, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HTTP_DURATION.labels(key[0], template, str(status))
        child.observe(elapsed)
