"""The operator commands' connections (the broker, the database) and how a command runs its
coroutine: each command is one `asyncio.run`, and what the broker refuses is a `CliError`."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

import aio_pika
import asyncpg
from aio_pika.abc import AbstractConnection

from relayflow.amqp.connection import connect_once
from relayflow.cli.errors import CliError
from relayflow.db.hosts import connect
from relayflow.errors import ServiceUnavailableError

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(main)
    except (aio_pika.exceptions.DeliveryError, aio_pika.exceptions.PublishError) as exc:
        raise CliError(f"the broker did not take the message: {exc}") from exc


@contextlib.asynccontextmanager
async def broker(url: str) -> AsyncIterator[AbstractConnection]:
    try:
        connection = await connect_once(url, timeout=10)
    except ValueError as exc:
        raise CliError(f"AMQP_URL {exc}") from exc
    except ServiceUnavailableError as exc:
        raise CliError(f"cannot reach RabbitMQ: {exc}") from exc
    try:
        yield connection
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def database(url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    try:
        conn = await connect(url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        raise CliError(f"cannot reach PostgreSQL ({exc})") from exc
    try:
        yield conn
    finally:
        await conn.close()
