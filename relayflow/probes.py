"""Readiness and liveness of the services that serve no HTTP of their own — the orchestrator, the
step service and the external system — answered on their metrics port (`RELAYFLOW_METRICS_PORT`)
beside `/metrics`, for Kubernetes' probes (deploy/k8s). The gateway has its own `/healthz` and
`/readyz` on its HTTP port.

- `/livez`: the event loop is responsive. The answer is made on the loop (a callback scheduled
  there from the HTTP thread), so a loop blocked for `live_timeout` seconds fails it, and only
  that: a broker or database outage does not, since restarting the process would not mend it.
- `/readyz`: the database and the broker are reachable and the consumer is attached, asked of
  the service's real state on its loop (`ready_check`): the pool runs `SELECT 1` within
  `ready_timeout`, the robust connection is connected, the consumer's tag is set and its channel
  open. `503` with the parts that failed, and also while starting (the service has not
  registered its check yet) and once stopping (SIGTERM received: it is draining).

The server is the same kind as prometheus-client's own (WSGI on a daemon thread), so `/metrics`
is still scraped while the loop is blocked — and that is why `/livez` must ask the loop.

One `Probes` per process, made by the service's entry point and passed both to
`relayflow.runtime.run` (which binds it to the loop and serves it) and to the service's lifespan
(which registers its check once its resources exist): no module-level state.
"""

from __future__ import annotations

import asyncio
import logging
import socketserver
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

import asyncpg
import orjson
from aio_pika.abc import AbstractConnection
from prometheus_client import make_wsgi_app

from relayflow.db import Queries

__all__ = [
    "LIVE_PATH",
    "READY_PATH",
    "Answer",
    "ProbeServer",
    "Probes",
    "ReadyCheck",
    "broker_connected",
    "database_answers",
    "ready_check",
]

log = logging.getLogger(__name__)

LIVE_PATH = "/livez"
READY_PATH = "/readyz"
# Seconds within which the loop must run a callback (/livez), and the database answer SELECT 1
# (/readyz); both below the probes' timeoutSeconds in deploy/k8s, so that the answer is ours.
LIVE_TIMEOUT = 2.0
READY_TIMEOUT = 2.0

# What a service's check reports: each part (database, broker, consumer) and whether it is up.
ReadyCheck = Callable[[], Awaitable[Mapping[str, bool]]]

_QUERIES = Queries.load("relayflow", "probes.sql")


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: Mapping[str, object] = field(default_factory=dict)


class Probes:
    """What `/livez` and `/readyz` answer. `bind` (the runtime) and `ready_when` (the service)
    are called on the loop; `live` and `ready` from the HTTP server's threads."""

    def __init__(
        self, *, live_timeout: float = LIVE_TIMEOUT, ready_timeout: float = READY_TIMEOUT
    ) -> None:
        self._live_timeout = live_timeout
        self._ready_timeout = ready_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._check: ReadyCheck | None = None

    def bind(self, loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
        """The loop the answers are made on, and the event that means the service is stopping."""
        self._loop, self._stop = loop, stop

    def ready_when(self, check: ReadyCheck) -> None:
        """From now on `/readyz` asks `check`; call it once the service consumes."""
        self._check = check

    def live(self) -> Answer:
        loop = self._loop
        if loop is None:
            return Answer(503, {"status": "starting"})
        answered = threading.Event()
        try:
            loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # the loop is closed: the process is on its way out
            return Answer(503, {"status": "stopped"})
        if not answered.wait(self._live_timeout):
            return Answer(503, {"status": "unresponsive", "waitedSeconds": self._live_timeout})
        return Answer(200, {"status": "ok"})

    def ready(self) -> Answer:
        loop, stop, check = self._loop, self._stop, self._check
        if stop is not None and stop.is_set():
            return Answer(503, {"status": "stopping"})
        if loop is None or check is None:
            return Answer(503, {"status": "starting"})
        try:
            parts = self._ask_on(loop, check)
        except _Unanswered as exc:
            return Answer(503, {"status": "unavailable", "reason": str(exc)})
        if all(parts.values()):
            return Answer(200, {"status": "ready", **parts})
        return Answer(503, {"status": "unavailable", **parts})

    def _ask_on(self, loop: asyncio.AbstractEventLoop, check: ReadyCheck) -> Mapping[str, bool]:
        try:
            future = asyncio.run_coroutine_threadsafe(self._ask(check), loop)
        except RuntimeError:  # the loop is closed
            raise _Unanswered("stopped") from None
        try:
            # The check bounds itself; the margin covers a loop too busy to start it at once.
            return future.result(self._ready_timeout + self._live_timeout)
        except TimeoutError:
            future.cancel()
            raise _Unanswered("the check did not finish in time") from None
        except Exception as exc:
            log.warning("the readiness check failed", exc_info=True)
            raise _Unanswered(f"the check failed: {type(exc).__name__}") from exc

    async def _ask(self, check: ReadyCheck) -> Mapping[str, bool]:
        async with asyncio.timeout(self._ready_timeout):
            return await check()

    def wsgi(self, fallback: WSGIApplication) -> WSGIApplication:
        """A WSGI app answering the probe paths, and every other path with `fallback`."""
        routes = {LIVE_PATH: self.live, READY_PATH: self.ready}

        def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            probe = routes.get(environ.get("PATH_INFO", ""))
            if probe is None:
                return fallback(environ, start_response)
            if environ.get("REQUEST_METHOD") != "GET":
                start_response("405 Method Not Allowed", [("Allow", "GET")])
                return [b""]
            answer = probe()
            body = orjson.dumps(answer.body)
            reason = "OK" if answer.status == 200 else "Service Unavailable"
            start_response(
                f"{answer.status} {reason}",
                [
                    ("Content-Type", "application/json"),
                    ("Content-Length", str(len(body))),
                    ("Cache-Control", "no-store"),
                ],
            )
            return [body]

        return app

    def serve(self, host: str, port: int) -> ProbeServer:
        """Serve `/livez`, `/readyz` and prometheus-client's default registry (`/metrics`, as
        `relayflow.metrics.serve_metrics` does) on http://host:port, on a daemon thread."""
        server = make_server(
            host, port, self.wsgi(make_wsgi_app()), _ThreadingServer, handler_class=_QuietHandler
        )
        thread = threading.Thread(target=server.serve_forever, name="probes", daemon=True)
        thread.start()
        log.info("metrics and probes on http://%s:%d (/metrics, /livez, /readyz)", host, port)
        return ProbeServer(server, thread)


class _Unanswered(Exception):
    """The readiness check gave no answer; the message says why."""


@dataclass(frozen=True, slots=True)
class ProbeServer:
    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


class _ThreadingServer(socketserver.ThreadingMixIn, WSGIServer):
    """A thread per request, as prometheus-client's: a slow scrape does not hold up a probe."""

    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    """No access log line on stderr for every probe and scrape."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


async def database_answers(pool: asyncpg.Pool[Any], within: float = READY_TIMEOUT) -> bool:
    """True when the pool runs `SELECT 1` within `within` seconds (a connection included)."""
    try:
        async with asyncio.timeout(within):
            return bool(await pool.fetchval(_QUERIES.ping) == 1)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        log.info("readiness: PostgreSQL did not answer: %r", exc)
        return False


def broker_connected(connection: AbstractConnection) -> bool:
    """True while the (robust) connection is connected: a robust connection is not `is_closed`
    while it reconnects, so its `connected` event is what tells."""
    return not connection.is_closed and connection.connected.is_set()


def ready_check(
    *,
    connection: AbstractConnection,
    consuming: Callable[[], bool],
    pool: asyncpg.Pool[Any] | None = None,
    within: float = READY_TIMEOUT,
) -> ReadyCheck:
    """The check of a service that consumes from `connection` (`consuming`: its consumer is
    attached) and, given a `pool`, uses PostgreSQL."""

    async def check() -> Mapping[str, bool]:
        parts: dict[str, bool] = {}
        if pool is not None:
            parts["database"] = await database_answers(pool, within)
        parts["broker"] = broker_connected(connection)
        parts["consumer"] = consuming()
        return parts

    return check
