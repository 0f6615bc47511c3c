"""Fixtures for tests against the real broker and database.

Each test run gets its own database (created here, dropped at the end) and each test its own
namespace of queues and exchanges, so runs never see each other's messages or rows.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import aio_pika
import asyncpg
import pytest
from hypothesis import settings as hypothesis_settings

from relayflow.db import create_pool, migrate
from relayflow.db.migrate import CORE
from relayflow.settings import Settings
from relayflow.steps import StepRegistry
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry
from services.steps.settings import StepServiceSettings
from tests.support import (
    create_database,
    delete_topology,
    drop_database,
    service_urls,
    unique_name,
)

# Property tests check what is computed, not how fast: on a machine shared with the services'
# tests, an example that took longer than Hypothesis's 200 ms deadline failed a run once
# (test_depth_is_counted_as_nested_arrays, passing on every rerun).
hypothesis_settings.register_profile("relayflow", deadline=None)
hypothesis_settings.load_profile("relayflow")


@pytest.fixture(scope="session")
def service_endpoints() -> Iterator[tuple[str, str]]:
    with service_urls() as urls:
        yield urls


@pytest.fixture(scope="session")
def amqp_url(service_endpoints: tuple[str, str]) -> str:
    return service_endpoints[0]


@pytest.fixture(scope="session")
async def database_url(service_endpoints: tuple[str, str]) -> AsyncIterator[str]:
    """A fresh, migrated database for this test run."""
    server = service_endpoints[1]
    name = unique_name("relayflow_test_")
    url = await create_database(server, name)
    conn = await asyncpg.connect(url)
    try:
        # The core's tables, and those of the applications the run command serves.
        steps = StepRegistry.from_modules(StepServiceSettings().step_modules)
        await migrate(conn, (CORE, *steps.migrations))
    finally:
        await conn.close()
    yield url
    await drop_database(server, name)


@pytest.fixture(scope="session")
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await create_pool(database_url, min_size=1, max_size=8)
    yield pool
    await pool.close()


@pytest.fixture(scope="session")
async def amqp_connection(amqp_url: str) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(amqp_url)
    yield connection
    await connection.close()


@pytest.fixture(scope="session")
def registry() -> WorkflowRegistry:
    """The workflows the README's run command serves."""
    return WorkflowRegistry.from_modules(Settings().workflows)


@pytest.fixture
async def settings(
    amqp_url: str,
    database_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
) -> AsyncIterator[Settings]:
    """Settings for one test: its own namespace of queues and exchanges, removed afterwards."""
    namespace = unique_name("t")
    settings = Settings(
        AMQP_URL=amqp_url,
        DATABASE_URL=database_url,
        namespace=namespace,
        queue_type="quorum",
    )
    yield settings
    await delete_topology(amqp_connection, Topology(namespace=namespace), registry.task_names())


@pytest.fixture
def topology(settings: Settings) -> Topology:
    return Topology.from_settings(settings)
