"""Serving the app with uvicorn inside relayflow's own process runtime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Generator

import uvicorn
from starlette.applications import Starlette

from relayflow.errors import ServiceUnavailableError
from services.gateway.settings import GatewaySettings
from services.gateway.stream_tokens import RedactTokens

GRACEFUL_SHUTDOWN = 10.0


class GatewayServer(uvicorn.Server):
    """uvicorn without its own signal handlers: `relayflow.runtime.run` owns SIGTERM/SIGINT and
    stops the server by setting `should_exit`."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


def build_server(app: Starlette, settings: GatewaySettings) -> GatewayServer:
    access_log = logging.getLogger("uvicorn.access")
    if settings.gateway_access_log and not any(
        isinstance(item, RedactTokens) for item in access_log.filters
    ):
        # Request lines hold query strings, and a stream token is a credential.
        access_log.addFilter(RedactTokens())
    config = uvicorn.Config(
        app,
        host=settings.gateway_host,
        port=settings.gateway_port,
        lifespan="on",
        log_config=None,
        access_log=settings.gateway_access_log,
        # X-Forwarded-For/-Proto change what the access log shows, and the client address that
        # open mode's rate limit and stream cap count by (with keys they count by key); the
        # middleware that applies them is a frame held by every open event stream, so it runs
        # only when that log is on.
        proxy_headers=settings.gateway_access_log,
        server_header=False,
        ws="none",  # no websocket routes; also keeps deprecated websocket modules unloaded
        timeout_graceful_shutdown=int(GRACEFUL_SHUTDOWN),
    )
    return GatewayServer(config)


async def serve_until(
    server: GatewayServer, stop: asyncio.Event, sockets: list[socket.socket] | None = None
) -> None:
    """Serve until `stop` is set, then drain and return. uvicorn ends a failed start-up (the
    lifespan could not reach PostgreSQL or RabbitMQ, the port is taken) with `sys.exit`; that
    becomes a `ServiceUnavailableError`, which `relayflow.runtime.run` turns into exit code 2."""

    async def stop_on_request() -> None:
        await stop.wait()
        server.should_exit = True

    watcher = asyncio.create_task(stop_on_request(), name="gateway:stop")
    try:
        # Awaited here, not in a task: uvicorn's SystemExit must reach this frame.
        await server.serve(sockets=sockets)
    except SystemExit as exc:
        raise ServiceUnavailableError(
            f"the gateway could not start (uvicorn exit status {exc.code}); the log above says why"
        ) from None
    finally:
        watcher.cancel()
