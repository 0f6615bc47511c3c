"""Helpers the tests share: where the broker and database are, and how to clean up after a test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg
import httpx
import orjson

from relayflow.topology import Topology

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


def unique_name(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def docker_answers() -> bool:
    """Whether a Docker engine answers on its socket (the client alone is not enough)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine: let testcontainers try it
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(host.removeprefix("unix://"))
            sock.sendall(b"GET /_ping HTTP/1.0\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
    except OSError:
        return False
    return status_line.startswith(b"HTTP/1.") and b" 200" in status_line


@contextlib.contextmanager
def service_urls() -> Any:
    """Yield (amqp_url, database_url): from the environment, else testcontainers where Docker
    answers, else the local defaults (RabbitMQ and PostgreSQL running on this machine)."""
    amqp_url = os.environ.get("AMQP_URL")
    database_url = os.environ.get("DATABASE_URL")
    with contextlib.ExitStack() as stack:
        if (amqp_url is None or database_url is None) and docker_answers():
            if amqp_url is None:
                from testcontainers.rabbitmq import RabbitMqContainer

                rabbit = stack.enter_context(RabbitMqContainer("rabbitmq:3.13-alpine"))
                host, port = rabbit.get_container_host_ip(), rabbit.get_exposed_port(5672)
                amqp_url = f"amqp://guest:guest@{host}:{port}/"
            if database_url is None:
                from testcontainers.postgres import PostgresContainer

                postgres = stack.enter_context(PostgresContainer("postgres:16-alpine"))
                database_url = postgres.get_connection_url(driver=None)
        yield amqp_url or DEFAULT_AMQP_URL, database_url or DEFAULT_DATABASE_URL


async def create_database(server_url: str, name: str) -> str:
    admin = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def delete_topology(
    connection: aio_pika.abc.AbstractConnection, topology: Topology, step_names: Iterable[str]
) -> None:
    """Remove every queue and exchange of a test's namespace from the shared broker."""
    queues = [*topology.queue_bindings(step_names), topology.dead_letter_queue]
    exchanges = [topology.exchange, topology.events_exchange, topology.dead_letter_exchange]
    for name in queues:
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.queue_delete(name)
        with contextlib.suppress(Exception):
            await channel.close()
    for name in exchanges:
        channel = await connection.channel()
        with contextlib.suppress(Exception):
            await channel.exchange_delete(name)
        with contextlib.suppress(Exception):
            await channel.close()


async def wait_for(
    condition: Callable[[], Awaitable[Any]],
    *,
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str | None = None,
) -> Any:
    """Poll an async condition until it returns something truthy; fail with a clear message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await condition()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"{what or condition} not met within {timeout}s")
        await asyncio.sleep(interval)


def raw_headers(headers: Mapping[str, str | bytes]) -> list[tuple[bytes, bytes]]:
    """Headers that mix text with raw bytes (a value no text can spell), as httpx sends them:
    names and text values in ASCII, bytes as they are. httpx takes the mix as it is, but its
    types take one kind per mapping."""
    return [
        (name.encode("ascii"), value if isinstance(value, bytes) else value.encode("ascii"))
        for name, value in headers.items()
    ]


async def read_sse(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Parse a text/event-stream into {id, event, data} dicts, skipping comments (pings)."""
    event: dict[str, Any] = {}
    async for line in response.aiter_lines():
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                event["data"] = orjson.loads(value)
            elif name in ("id", "event"):
                event[name] = value


async def get_messages(
    channel: aio_pika.abc.AbstractChannel, queue_name: str, *, count: int, timeout: float = 10.0
) -> AsyncIterator[aio_pika.abc.AbstractIncomingMessage]:
    """Fetch `count` messages from a queue (acking them), waiting up to `timeout`."""
    queue = await channel.get_queue(queue_name, ensure=False)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    got = 0
    while got < count:
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            if loop.time() > deadline:
                raise AssertionError(f"only {got} of {count} messages arrived on {queue_name}")
            await asyncio.sleep(0.05)
            continue
        got += 1
        yield message


def tampered(text: str) -> str:
    """`text` with another last character: a fixed replacement ("x", "AA") would leave it
    unchanged whenever it already ends so, and a test of a forged credential would then pass
    a valid one."""
    return text[:-1] + ("A" if text[-1] != "A" else "B")
