"""A signal published right after its workflow's start can reach the orchestrator first. It must
not be refused as "unknown workflow": it is handed back to the broker and applied once the start
is; only a workflow that never starts has its signal dead-lettered, with the reason. Against the
real orchestrator service, broker and database (the redelivery is what is tested)."""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import Any

import aio_pika
import asyncpg
import pytest

from relayflow.amqp.settle import REASON_HEADER
from relayflow.contracts import (
    SignalWorkflow,
    StartWorkflow,
    encode,
    new_message_id,
    new_workflow_id,
)
from relayflow.model import ids
from relayflow.settings import Settings
from relayflow.topology import SIGNAL_KEY, START_KEY, Topology
from tests.integration.orchestrators import running_orchestrator
from tests.support import get_messages, wait_for

REQUEST = {"requestId": "r-1", "amount": 10, "failAt": None}


def orchestrator(settings: Settings, *, limit: int) -> AbstractAsyncContextManager[None]:
    """Deferrals 50 ms apart (doubling), dead-lettered after `limit` returns."""
    return running_orchestrator(
        settings, orchestrator_defer_first=0.05, orchestrator_defer_limit=limit
    )


async def publish(settings: Settings, key: str, message: SignalWorkflow | StartWorkflow) -> None:
    connection = await aio_pika.connect(settings.amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        exchange = await channel.get_exchange(Topology(settings.namespace).exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(encode(message), message_id=message.message_id, type=message.type),
            routing_key=key,
        )


def decision(workflow_id: str, *, key: str = "early") -> SignalWorkflow:
    return SignalWorkflow(
        message_id=ids.signal_id(workflow_id, "decision", key),
        workflow_id=workflow_id,
        signal_name="decision",
        payload={"approved": True, "by": "ada"},
        sent_by="ada",
    )


async def deferred(caplog: pytest.LogCaptureFixture, message_id: str, times: int) -> bool:
    """Whether the orchestrator has handed `message_id` back `times` times (its log)."""
    found = [r for r in caplog.records if r.getMessage().startswith(f"deferring {message_id}")]
    return len(found) >= times


async def test_a_signal_ahead_of_its_start_waits_for_it_and_counts_once(
    settings: Settings, pool: asyncpg.Pool[Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="services.orchestrator")
    workflow_id = new_workflow_id()
    signal = decision(workflow_id)
    async with orchestrator(settings, limit=15):
        await publish(settings, SIGNAL_KEY, signal)
        # Handed back (and taken again) at least twice before the start comes.
        await wait_for(lambda: deferred(caplog, signal.message_id, 2), what="two deferrals")
        start = StartWorkflow(
            message_id=new_message_id(),
            workflow_id=workflow_id,
            workflow_name="approval",
            input=REQUEST,
        )
        await publish(settings, START_KEY, start)

        async def received(n: int) -> bool:
            count = await pool.fetchval(
                "SELECT count(*) FROM workflow_events "
                "WHERE workflow_id = $1 AND event = 'signal.received'",
                workflow_id,
            )
            return bool(count == n)

        await wait_for(lambda: received(1), what="the early signal to be received")
        # A copy sent again is a duplicate now, never a second signal: a later, other signal
        # is the second one received.
        await publish(settings, SIGNAL_KEY, signal)
        later = decision(workflow_id, key="later")
        await publish(settings, SIGNAL_KEY, later)
        await wait_for(lambda: received(2), what="the later signal to be received")
    ids_received = await pool.fetch(
        "SELECT body -> 'data' ->> 'signalId' AS id FROM workflow_events "
        "WHERE workflow_id = $1 AND event = 'signal.received' ORDER BY seq",
        workflow_id,
    )
    assert [r["id"] for r in ids_received] == [signal.message_id, later.message_id]
    # Commands to steps no service runs here: never to be swept towards a later test's broker.
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")


async def test_a_signal_whose_workflow_never_starts_is_dead_lettered_with_the_reason(
    settings: Settings, pool: asyncpg.Pool[Any]
) -> None:
    workflow_id = new_workflow_id()
    signal = decision(workflow_id)
    topology = Topology(settings.namespace)
    async with orchestrator(settings, limit=2):
        await publish(settings, SIGNAL_KEY, signal)
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            channel = await connection.channel()
            [dead] = [
                m
                async for m in get_messages(
                    channel, topology.dead_letter_queue, count=1, timeout=15
                )
            ]
    assert dead.message_id == signal.message_id
    reason = str((dead.headers or {}).get(REASON_HEADER))
    assert f"signal for workflow {workflow_id}, which does not exist" in reason, reason
    assert "handed back 2 times" in reason, reason
    assert (
        await pool.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1", signal.message_id)
        == 0
    )
