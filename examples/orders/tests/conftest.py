"""Fixtures of the orders example's tests: a database of their own on the PostgreSQL the services
use (`DATABASE_URL`, its server; created here, dropped at the end), migrated as a step service
would migrate it — relayflow's tables, then this application's."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from orders_app.steps import steps

from relayflow.db import migrate
from relayflow.db.migrate import CORE

SERVER_URL = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


def database_url_named(name: str) -> str:
    return urlunsplit(urlsplit(SERVER_URL)._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
async def database_url() -> AsyncIterator[str]:
    name = f"orders_test_{uuid.uuid4().hex[:12]}"
    server = await asyncpg.connect(database_url_named("postgres"))
    try:
        await server.execute(f'CREATE DATABASE "{name}"')
    finally:
        await server.close()
    url = database_url_named(name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, (CORE, *steps.migrations))
    finally:
        await conn.close()
    yield url
    server = await asyncpg.connect(database_url_named("postgres"))
    try:
        await server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await server.close()


@pytest.fixture
async def connection(database_url: str) -> AsyncIterator[asyncpg.Connection[Any]]:
    """A connection inside a transaction that is rolled back after the test: what the bodies
    write is there to look at, and gone afterwards."""
    conn: asyncpg.Connection[Any] = await asyncpg.connect(database_url)
    transaction = conn.transaction()
    await transaction.start()
    yield conn
    await transaction.rollback()
    await conn.close()
