"""Connecting to RabbitMQ with a clear answer when it is not there, and letting go of it
without waiting on a broker that does not answer."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractRobustConnection

from relayflow.errors import ServiceUnavailableError

log = logging.getLogger(__name__)

HOW_TO_START = (
    "start one with `rabbitmq-server -detached` (or `docker compose -f deploy/compose.yaml up -d "
    "rabbitmq`), or point AMQP_URL at a running broker"
)


def redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


async def connect(url: str, *, name: str, wait: float = 30.0) -> AbstractRobustConnection:
    """A robust connection (it reconnects and restores its channels by itself). At start-up we
    wait up to `wait` seconds for the broker, since services and broker often start together."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.2
    while True:
        try:
            return await aio_pika.connect_robust(
                url, client_properties={"connection_name": name}, timeout=10
            )
        except (TimeoutError, OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
            if loop.time() + delay > deadline:
                raise ServiceUnavailableError(
                    f"cannot reach RabbitMQ at {redact(url)} ({exc or type(exc).__name__}); "
                    f"{HOW_TO_START}"
                ) from exc
            log.warning("RabbitMQ at %s not reachable yet (%s); retrying", redact(url), exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


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
