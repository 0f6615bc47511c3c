"""The gateway's Prometheus metrics: `/metrics` on its own HTTP port, and how long each request
takes, by method, route template and status (`relayflow_http_request_duration_seconds`).

`/metrics` asks for no key, like the probes (`access.PUBLIC_PATHS`): scrapers seldom carry one,
and on the default loopback bind only this machine reaches it. A gateway bound to a public
address should keep `/metrics` behind its proxy (README, "Metrics").

A request is timed without wrapping its `send`: `Arrival` stamps when it came in, and it is
observed where its response is made — the route's endpoint returning it (`timed_routes`), or an
exception handler turning an error into it (`timed_handlers`: 404s, 405s, refused input, 500s).
So an event stream counts its opening, and its every chunk then goes out through no layer of
ours (a wrapped `send` is one more coroutine per chunk, per stream)."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Histogram, generate_latest
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from relayflow.metrics import HTTP_DURATION

# The route of a request no route matched (404s, 405s of unknown paths): one label value, so
# that scanners cannot grow the label set.
UNMATCHED = "unmatched"


async def metrics_endpoint(request: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


# Where `Arrival` puts a request's arrival (time.perf_counter()) in its ASGI scope.
ARRIVED = "relayflow.arrived"

Endpoint = Callable[[Request], Awaitable[Response]]
Handler = Callable[[Request, Exception], Awaitable[Response]]


class Arrival:
    """ASGI middleware: stamps an HTTP request's arrival in its scope (`ARRIVED`), nothing else."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[ARRIVED] = time.perf_counter()
        await self._app(scope, receive, send)


class _Timer:
    """Observes a request's duration into a child of `HTTP_DURATION` looked up once per
    (method, route, status)."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], Histogram] = {}

    def observe(self, request: Request, template: str, status: int) -> None:
        now = time.perf_counter()
        scope = request.scope
        key = (scope["method"], template, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = HTTP_DURATION.labels(key[0], template, str(status))
        child.observe(now - scope.get(ARRIVED, now))


_TIMER = _Timer()


def timed_routes(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """`routes`, each `Route`'s endpoint observing the response it returns under the route's
    template (`/workflows/{workflow_id}`, never the id itself)."""
    timed: list[BaseRoute] = []
    for route in routes:
        if not isinstance(route, Route):
            timed.append(route)
            continue
        methods = None if route.methods is None else sorted(route.methods - {"HEAD"})
        endpoint = _timed_endpoint(route.endpoint, route.path)
        # The route's own class: one may decide per concrete path what it allows.
        timed.append(type(route)(route.path, endpoint, methods=methods, name=route.name))
    return timed


def _timed_endpoint(endpoint: Endpoint, template: str) -> Endpoint:
    @functools.wraps(endpoint)
    async def timed(request: Request) -> Response:
        response = await endpoint(request)
        _TIMER.observe(request, template, response.status_code)
        return response

    return timed


def timed_handlers(handlers: Mapping[Any, Handler]) -> dict[Any, Handler]:
    """`handlers`, each observing the response it makes for an error, under the route that
    matched (`UNMATCHED` when none did). Without a handler of `Exception`, one that answers a
    plain 500 as Starlette would, so that a crash is counted too."""
    timed = {kind: _timed_handler(handler) for kind, handler in handlers.items()}
    timed.setdefault(Exception, _timed_handler(_plain_500))
    return timed


def _timed_handler(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def timed(request: Request, exc: Exception) -> Response:
        response = await handler(request, exc)
        route = request.scope.get("route")
        template = route.path if isinstance(route, Route) else UNMATCHED
        _TIMER.observe(request, template, response.status_code)
        return response

    return timed


async def _plain_500(request: Request, exc: Exception) -> Response:
    return PlainTextResponse("Internal Server Error", status_code=500)
