"""The small things: the form page and its assets, health, readiness and the OpenAPI document."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from importlib import resources

import orjson
from starlette.requests import Request
from starlette.responses import Response

from services.gateway.models import Health, Readiness
from services.gateway.responses import model_response
from services.gateway.state import gateway_state

READY_TIMEOUT = 2.0

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str

    async def respond(self, request: Request) -> Response:
        return Response(
            self.body, media_type=self.media_type, headers={"Cache-Control": "no-cache"}
        )


def load_assets() -> dict[str, Asset]:
    """The static files shipped in the package, read once when the app is built."""
    folder = resources.files("services.gateway").joinpath("static")
    assets: dict[str, Asset] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rsplit(".", 1)[-1]
        if entry.is_file() and suffix in _MEDIA_TYPES:
            assets[entry.name] = Asset(entry.read_bytes(), _MEDIA_TYPES[suffix])
    return assets


async def healthz(request: Request) -> Response:
    return model_response(Health())


async def readyz(request: Request) -> Response:
    """Ready when PostgreSQL answers and the broker connection and the event hub are up."""
    state = gateway_state(request)
    database = False
    with contextlib.suppress(Exception):
        async with asyncio.timeout(READY_TIMEOUT):
            await state.store.ping()
            database = True
    broker = not state.connection.is_closed and state.hub.consuming
    readiness = Readiness(
        status="ready" if database and broker else "unavailable", database=database, broker=broker
    )
    return model_response(readiness, status_code=200 if readiness.status == "ready" else 503)


def openapi_endpoint(document: dict[str, object]) -> Asset:
    return Asset(orjson.dumps(document), "application/json")
