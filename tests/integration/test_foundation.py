"""The shared core against the real services: migrations and topology."""

from __future__ import annotations

from typing import Any

import aio_pika
import asyncpg

from relayflow.db import migrate
from relayflow.db.migrate import CORE, available_migrations
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry

# An application's own migration set, numbered on its own beside the core's.
APP = "apps.batch_import"


async def test_migrations_are_idempotent(pool: asyncpg.Pool[Any]) -> None:
    """A service starting against an up-to-date schema applies nothing and does not fail."""
    async with pool.acquire() as conn:
        assert await migrate(conn) == []
        assert await migrate(conn, (CORE, APP)) == []
        versions = await conn.fetch(
            "SELECT package, version FROM relayflow_migrations WHERE package = ANY($1::text[]) "
            "ORDER BY package, version",
            [CORE, APP],
        )
    recorded = [(row["package"], row["version"]) for row in versions]
    assert recorded == [(APP, m.version) for m in available_migrations(APP)] + [
        (CORE, m.version) for m in available_migrations()
    ]


async def test_topology_declares_twice(
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
    registry: WorkflowRegistry,
) -> None:
    """Every service declares the whole topology at start-up; the second declaration must agree."""
    channel = await amqp_connection.channel()
    await topology.declare(channel, registry.task_names())
    await topology.declare(channel, registry.task_names())
    queue = await channel.declare_queue(topology.step_queue("persist"), passive=True)
    assert queue.declaration_result.message_count == 0
    await channel.close()
