"""The shared core against the real services: migrations and topology."""

from __future__ import annotations

from typing import Any

import aio_pika
import asyncpg

from relayflow.db import migrate
from relayflow.db.migrate import CORE, available_migrations
from relayflow.topology import Topology, step_key
from relayflow.workflow import WorkflowRegistry
from tests.support import delete_topology, unique_name, wait_for

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


async def test_ensure_takes_a_queue_made_with_other_arguments_as_it_is(
    amqp_url: str, registry: WorkflowRegistry
) -> None:
    """A step queue made before a queue argument existed (here: no quorum group size, another
    delivery limit) refuses today's declaration; `ensure` then takes it as it is, declares the
    rest and binds everything, and leaves no channel behind on the connection (its own: the
    session's connection has other tests' channels)."""
    topology = Topology(unique_name("old-"))
    names = registry.task_names()
    old = topology.step_queue("persist")
    amqp_connection = await aio_pika.connect_robust(amqp_url)
    channel = await amqp_connection.channel()
    try:
        await channel.declare_queue(
            old,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": topology.dead_letter_exchange,
                "x-delivery-limit": 3,
            },
        )
        await topology.ensure(amqp_connection, names)
        main = await channel.declare_exchange(topology.exchange, passive=True)
        # Routed to the old queue: it was bound although not declared again.
        await main.publish(aio_pika.Message(b"{}"), routing_key=step_key("persist"))

        async def routed() -> bool:
            queue = await channel.get_queue(old, ensure=False)
            return await queue.get(fail=False, no_ack=True) is not None

        await wait_for(routed, timeout=5, what="the message in the old queue")
        for other in topology.queue_bindings(names):
            await channel.declare_queue(other, passive=True)
        channels = amqp_connection.transport.connection.channels  # type: ignore[union-attr]
        assert list(channels) == [channel.number]  # the probes' are gone
    finally:
        await channel.close()
        await delete_topology(amqp_connection, topology, names)
        await amqp_connection.close()
