"""Connecting to RabbitMQ — one node or several of a cluster — with a clear answer when none is
there, failing over between them, and letting go without waiting on a broker that does not
answer.

`AMQP_URL` may list several nodes of one cluster, comma-separated, with the same credentials and
vhost: `amqp://u:p@rabbit-a:5672/vh,amqp://u:p@rabbit-b:5672/vh`. A service holds one connection,
to one node; when it is lost — the node died, or stopped answering for three heartbeat intervals
(`RELAYFLOW_AMQP_HEARTBEAT`), or the link was cut — it reconnects to the next node in turn.
aio-pika's robust connection reopens every channel on the new connection, declaring again what
was declared on it and starting its consumers again, but it reconnects only to the one address
it was given (aio-pika's issue since 2018); `FailoverConnection` is that robust connection with
the address changed before each attempt. This is the only place connections are made
(`connect`, and `connect_once` for the operator commands), so every service fails over alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractConnection, AbstractRobustConnection
from aio_pika.robust_connection import RobustConnection
from yarl import URL

from relayflow.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

HOW_TO_START = (
    "start one with `rabbitmq-server -detached` (or `docker compose -f deploy/compose.yaml up -d "
    "rabbitmq`), or point AMQP_URL at a running broker"
)

# Seconds between the heartbeats both sides send; a peer silent for about three of them is
# taken as gone (aiormq: (heartbeat + 1) * 3). RabbitMQ's own default, 60 s, would leave a
# service waiting minutes on a hung node; below 5 s, a busy machine risks false alarms.
DEFAULT_HEARTBEAT = 10
# Pause after a failed connection attempt before the next node is tried.
RECONNECT_INTERVAL = 1.0
# How long one attempt (TCP, then AMQP's handshake) may take: a hung node accepts TCP
# connections but never answers.
ATTEMPT_TIMEOUT = 10.0


def redact(url: str) -> str:
    """`url` without its credentials, for messages; each node of a list."""
    shown = []
    for entry in url.split(","):
        parts = urlsplit(entry.strip())
        # What follows the credentials, as written (`parts.port` raises on a bad port).
        address = parts.netloc.rpartition("@")[2] or "?"
        shown.append(f"{parts.scheme}://{address}{parts.path}")
    return ",".join(shown)


def broker_addresses(amqp_url: str) -> tuple[str, ...]:
    """The nodes `amqp_url` lists (comma-separated URLs of one cluster: the same credentials and
    vhost on each). Raises ValueError naming the first entry that is not a broker URL."""
    entries = [entry.strip() for entry in amqp_url.split(",")]
    if not any(entries):
        raise ValueError("is empty: expected amqp://user:password@host:port/vhost")
    first: tuple[str | None, str | None, str] | None = None
    for position, entry in enumerate(entries, start=1):
        where = f"entry {position} ({redact(entry) if entry else 'empty'})"
        if not entry:
            raise ValueError(f"{where}: an empty address between commas")
        try:
            parts = urlsplit(entry)
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"{where}: not a URL ({exc})") from None
        if parts.scheme not in ("amqp", "amqps"):
            raise ValueError(f"{where}: the scheme must be amqp or amqps, got {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError(f"{where}: no host")
        if port == 0:
            raise ValueError(f"{where}: port 0")
        same = (parts.username, parts.password, parts.path.strip("/"))
        if first is None:
            first = same
        elif same != first:
            raise ValueError(
                f"{where}: every node must be given the same user, password and vhost as "
                "the first (one cluster)"
            )
    return tuple(entries)


def _with_heartbeat(address: str, heartbeat: int) -> URL:
    url = URL(address)
    return url if "heartbeat" in url.query else url.update_query(heartbeat=heartbeat)


class FailoverConnection(RobustConnection):
    """A robust connection that tries the next of its nodes at each (re)connection attempt."""

    def __init__(self, addresses: Sequence[URL], *, first: int = 0, **kwargs: Any) -> None:
        super().__init__(addresses[first], **kwargs)
        self._addresses = tuple(addresses)
        self._next = first

    @property
    def node(self) -> str:
        """The node this connection is (or was last) connected to, without credentials."""
        return redact(str(self.url))

    # aio-pika's one hook per attempt, name-mangled in RobustConnection: each reconnection
    # attempt, also the first, goes to the next node in turn.
    async def _RobustConnection__connect_transport(self) -> None:
        self.url = self._addresses[self._next]
        self._next = (self._next + 1) % len(self._addresses)
        await super()._RobustConnection__connect_transport()  # type: ignore[misc]

    async def _on_connected(self) -> None:
        await super()._on_connected()
        if len(self._addresses) > 1:
            log.info("connected to RabbitMQ at %s", self.node)


async def connect(
    url: str, *, name: str, wait: float = 30.0, heartbeat: int = DEFAULT_HEARTBEAT
) -> AbstractRobustConnection:
    """A robust connection to one of the nodes `url` lists, failing over to the others later.
    At start-up we wait up to `wait` seconds for a broker, since services and broker often start
    together. Services start at a random node, so that the consumers of one queue spread over
    the cluster."""
    addresses = [_with_heartbeat(address, heartbeat) for address in broker_addresses(url)]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.2
    first = random.randrange(len(addresses))  # noqa: S311 - spreading, not secrecy
    while True:
        connection = FailoverConnection(
            addresses,
            first=first,
            client_properties={"connection_name": name},
            reconnect_interval=RECONNECT_INTERVAL,
        )
        try:
            await connection.connect(timeout=ATTEMPT_TIMEOUT)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            await quietly("dropping a failed connection", connection.close)
            if loop.time() + delay > deadline:
                raise ServiceUnavailableError(
                    f"cannot reach RabbitMQ at {redact(url)} ({exc or type(exc).__name__}); "
                    f"{HOW_TO_START}"
                ) from exc
            log.warning(
                "RabbitMQ at %s not reachable yet (%s); retrying",
                redact(str(addresses[first])),
                exc,
            )
            first = (first + 1) % len(addresses)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)
        else:
            return connection


async def connect_once(url: str, *, timeout: float = 10.0) -> AbstractConnection:  # noqa: ASYNC109 - per node
    """A plain connection to the first of `url`'s nodes that answers, for a short-lived command
    (the CLI, the run command's check): nothing to fail over, but a dead node is no outage."""
    failures: list[str] = []
    for address in broker_addresses(url):
        try:
            return await connect_plain(address, timeout=timeout)
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            failures.append(f"{redact(address)}: {exc or type(exc).__name__}")
    raise ServiceUnavailableError("; ".join(failures))


async def connect_plain(address: str, *, timeout: float) -> AbstractConnection:  # noqa: ASYNC109
    """`aio_pika.connect` to one node, but a failed attempt's connection is closed here. Left
    unclosed, aio-pika's `__del__` schedules its close on whatever loop runs when the garbage
    collector gets to it; outside a loop that close is a coroutine never awaited (CI saw one
    break an unrelated test)."""
    connection = aio_pika.Connection(URL(address))
    try:
        await connection.connect(timeout=timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await connection.close()
        raise
    return connection


# How long one step of shutting down (cancel a consumer, close a channel or the connection) may
# wait for the broker.
CLOSE_TIMEOUT = 2.0


async def quietly(
    what: str, action: Callable[[], Awaitable[object]], *, within: float = CLOSE_TIMEOUT
) -> None:
    """Run one step of letting go of the broker, for at most `within` seconds; a failure or a broker
    that does not answer is logged and the stop goes on. Without the bound a stop can hang for
    good: while the broker is unreachable, aio-pika's cancel and close on a robust channel wait
    for the connection to be ready again (seen: a gateway that never exited after SIGTERM)."""
    try:
        async with asyncio.timeout(within):
            await action()
    except TimeoutError:
        log.warning("%s: no answer from the broker within %.0fs; going on without it", what, within)
    except Exception as exc:  # a stop goes on whatever the broker says
        log.debug("%s failed: %r", what, exc)
