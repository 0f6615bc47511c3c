"""What the gateway answers when a dependency is away: 503 with Retry-After, never a 500.

A request that needs PostgreSQL while it restarts (or while the link to it is cut) fails with
one of the connection errors below, raised from wherever the request was; the routes do not
each catch them. The broker's own outages are answered by the routes that publish (a confirm
that does not come is a 503 there, with the same header).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from relayflow.db.hosts import NoHostAvailableError
from services.gateway.responses import error_response

log = logging.getLogger(__name__)

# Seconds a client should wait before trying again: a restart takes about that long.
RETRY_AFTER = "1"

DATABASE_OUTAGES: tuple[type[Exception], ...] = (
    asyncpg.PostgresConnectionError,  # the connection broke or could not be made
    asyncpg.CannotConnectNowError,  # starting up, shutting down, in recovery
    asyncpg.AdminShutdownError,  # terminated by a fast shutdown
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed" on a connection the pool handed out
    NoHostAvailableError,  # a failover in progress: the primary gone, no standby promoted yet
)
# The operating system's word for the same (refused, reset), and a pool that found no
# connection in time.
NETWORK_OUTAGES: tuple[type[Exception], ...] = (ConnectionError, TimeoutError)


async def dependency_unavailable(request: Request, exc: Exception) -> Response:
    log.warning(
        "%s %s: a dependency is unavailable (%s: %s); answered 503",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc,
    )
    what = "the database" if isinstance(exc, DATABASE_OUTAGES) else "the database or the broker"
    return error_response(
        503,
        f"the gateway cannot reach {what} right now; retry shortly",
        headers={"Retry-After": RETRY_AFTER},
    )


Handler = Callable[[Request, Exception], Awaitable[Response]]


def handlers() -> dict[type[Exception], Handler]:
    return dict.fromkeys((*DATABASE_OUTAGES, *NETWORK_OUTAGES), dependency_unavailable)
