"""A real gateway on a loopback port for the gateway tests (in-process ASGI transports buffer SSE
streams, so these tests speak HTTP to uvicorn), and an SSE reader."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from relayflow.settings import Settings
from services.gateway.app import create_app
from services.gateway.server import build_server, serve_until
from services.gateway.settings import GatewaySettings
from tests.support import wait_for


@dataclass
class RunningGateway:
    base_url: str
    settings: GatewaySettings
    client: httpx.AsyncClient
    stop: asyncio.Event
    serving: asyncio.Task[None]


def gateway_settings(settings: Settings, **overrides: Any) -> GatewaySettings:
    return GatewaySettings(
        AMQP_URL=settings.amqp_url,
        DATABASE_URL=settings.database_url,
        namespace=settings.namespace,
        queue_type=settings.queue_type,
        db_pool_min=1,
        db_pool_max=4,
        **overrides,
    )


@contextlib.asynccontextmanager
async def running_gateway(settings: Settings, **overrides: Any) -> AsyncIterator[RunningGateway]:
    config = gateway_settings(settings, **overrides)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    server = build_server(create_app(config, stopping=stop), config)
    serving = asyncio.create_task(serve_until(server, stop, sockets=[sock]))

    async def started() -> bool:
        if serving.done():
            serving.result()  # raises what went wrong
            raise AssertionError("the gateway exited during start-up")
        return bool(server.started)

    try:
        await wait_for(started, timeout=30)
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
            yield RunningGateway(base_url, config, client, stop, serving)
    finally:
        stop.set()
        await serving
        sock.close()


@dataclass
class SseEvent:
    id: str | None = None
    event: str | None = None
    data_lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> Any:
        return orjson.loads("\n".join(self.data_lines))

    @property
    def seq(self) -> int:
        assert self.id is not None
        return int(self.id)


@dataclass
class SseStream:
    """Reads one event stream to its end; `connected` is set once the headers arrived (the
    gateway subscribes to the live hub before it answers)."""

    client: httpx.AsyncClient
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[SseEvent] = field(default_factory=list)
    pings: int = 0
    status_code: int | None = None
    content_type: str | None = None
    # When given, the reader stops reading after the headers until it is set (a slow client).
    resume: asyncio.Event | None = None

    async def run(self) -> list[SseEvent]:
        async with self.client.stream("GET", self.url, headers=self.headers) as response:
            self.status_code = response.status_code
            self.content_type = response.headers.get("content-type")
            self.connected.set()
            if self.resume is not None:
                await self.resume.wait()
            current = SseEvent()
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    self.pings += 1  # a comment: the keep-alive ping
                    continue
                if not line:
                    if current.id is not None or current.event is not None or current.data_lines:
                        self.events.append(current)
                    current = SseEvent()
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    current.id = value
                elif name == "event":
                    current.event = value
                elif name == "data":
                    current.data_lines.append(value)
        return self.events

    def start(self) -> asyncio.Task[list[SseEvent]]:
        return asyncio.create_task(self.run())
