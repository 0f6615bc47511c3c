"""The metrics that need the real broker or database to happen at all: a redelivery is the
broker's flag on a message handed back, and an overdue timer is a row in PostgreSQL. The step
cache hit is tested with the step worker (tests/integration/test_step_worker.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection
from prometheus_client import REGISTRY

from relayflow import metrics
from relayflow.amqp import BatchConsumer
from relayflow.contracts import new_workflow_id
from relayflow.orchestration import store
from tests.support import unique_name


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_message_handed_back_counts_as_a_redelivery(
    amqp_connection: AbstractRobustConnection,
) -> None:
    """Redeliveries are how an operator sees consumers dying or handing work back; the broker
    marks them (redelivered=true) and the consumer counts them, by queue, once each."""
    channel = await amqp_connection.channel()
    queue = await channel.declare_queue(unique_name("redeliver"), auto_delete=True)
    seen: list[bool | None] = []
    done = asyncio.Event()

    async def handle(batch: Sequence[AbstractIncomingMessage]) -> None:
        for message in batch:
            seen.append(message.redelivered)
            if len(seen) == 1:
                await message.nack(requeue=True)
            else:
                await message.ack()
                done.set()

    consumer = BatchConsumer(queue, handle)
    before = sample("relayflow_redeliveries_total", queue=queue.name)
    await consumer.start()
    try:
        await channel.default_exchange.publish(
            aio_pika.Message(b"{}", message_id="m1"), routing_key=queue.name
        )
        await asyncio.wait_for(done.wait(), timeout=10)
    finally:
        await consumer.stop()
        await channel.close()
    assert seen == [False, True]
    assert sample("relayflow_redeliveries_total", queue=queue.name) == before + 1


async def test_an_overdue_timer_shows_in_timers_due(pool: asyncpg.Pool[Any]) -> None:
    """A timer past its due time that no orchestrator fired is the sign that none is running
    (or all are stuck); one not yet due is no such sign."""
    workflow_id = new_workflow_id()
    now = datetime.now(UTC)

    async def read() -> metrics.Backlog:
        async with pool.acquire() as conn:
            return metrics.Backlog(*await store.backlog(conn))

    before = await read()
    await pool.executemany(
        "INSERT INTO timers (workflow_id, kind, step_name, attempt, fire_at)"
        " VALUES ($1, 'wait_timeout', 'wait', 1, $2)",
        [(workflow_id, now - timedelta(minutes=5)), (workflow_id, now + timedelta(hours=1))],
    )
    try:
        after = await read()
        metrics.set_backlog(after)
        assert after.timers_due == before.timers_due + 1
        assert sample("relayflow_timers_due") == after.timers_due
    finally:
        await pool.execute("DELETE FROM timers WHERE workflow_id = $1", workflow_id)
        metrics.set_backlog(metrics.Backlog(0, 0.0, 0))
