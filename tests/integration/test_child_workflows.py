"""Child workflows through the real orchestrator, broker and database: the chain parent →
child → grandchild completes, duplicates of the child's start and result change nothing, and a
parent cancelled mid-child cancels the child (and its grandchild)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import pytest

from relayflow.contracts import (
    CancelWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
    decode,
    encode,
    new_message_id,
    new_workflow_id,
)
from relayflow.model import WorkflowStatus, ids
from relayflow.settings import Settings
from relayflow.topology import CONTROL_KEY, RESULT_KEY, START_KEY, Topology
from relayflow.workflow import WorkflowRegistry
from tests.integration.test_orchestrator import next_message, publish, running_orchestrator
from tests.support import wait_for

MODULE = "tests.integration.child_flows"


@pytest.fixture
async def child_settings(
    settings: Settings, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[Settings]:
    own = settings.model_copy(update={"workflows": [MODULE]})
    yield own
    channel = await amqp_connection.channel()
    for step in WorkflowRegistry.from_modules([MODULE]).task_names():
        await channel.queue_delete(Topology(own.namespace).step_queue(step))
    await channel.close()


async def answer(
    connection: aio_pika.abc.AbstractRobustConnection, topology: Topology, step: str
) -> StepCommand:
    """Play the step service once: take the step's next command, answer it succeeded."""
    command = decode((await next_message(connection, topology.step_queue(step))).body)
    assert isinstance(command, StepCommand)
    reply = StepResult(
        message_id=ids.result_id(command.workflow_id, step, command.step_key, command.attempt),
        workflow_id=command.workflow_id,
        step_name=step,
        attempt=command.attempt,
        status=StepResultStatus.SUCCEEDED,
        output={"by": step},
    )
    await publish(connection, topology.exchange, RESULT_KEY, encode(reply))
    return command


def chain_ids() -> tuple[str, str, str]:
    """A new parent's id, and the ids its child and grandchild will have (first attempts)."""
    parent_id = new_workflow_id()
    kid_id = ids.child_workflow_id(parent_id, "kid", "0", 1)
    return parent_id, kid_id, ids.child_workflow_id(kid_id, "grandchild", "0", 1)


async def start_parent(
    connection: aio_pika.abc.AbstractRobustConnection, topology: Topology, parent_id: str
) -> None:
    """Start the parent through the broker and answer its first step, so its child starts."""
    start = StartWorkflow(
        message_id=new_message_id(), workflow_id=parent_id, workflow_name="parentFlow", input={}
    )
    await publish(connection, topology.exchange, START_KEY, encode(start))
    await answer(connection, topology, "before")


async def status_of(pool: asyncpg.Pool[Any], workflow_id: str) -> str | None:
    value: str | None = await pool.fetchval(
        "SELECT status FROM workflows WHERE id = $1", workflow_id
    )
    return value


async def test_parent_child_grandchild_complete_and_duplicates_change_nothing(
    child_settings: Settings,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """Each level starts the next through the broker with a deterministic id and completes with
    its output; a duplicated child start and a duplicated child result are absorbed."""
    topology = Topology(child_settings.namespace)
    parent_id, kid_id, grandchild_id = chain_ids()
    async with running_orchestrator(child_settings):
        await start_parent(amqp_connection, topology, parent_id)
        leaf = await answer(amqp_connection, topology, "leafWork")
        assert leaf.workflow_id == grandchild_id
        # A copy of the child's start, as a redelivery or a second orchestrator would send it.
        again = StartWorkflow(
            message_id=ids.child_start_id(kid_id),
            workflow_id=kid_id,
            workflow_name="childFlow",
            input={},
        )
        await publish(amqp_connection, topology.exchange, START_KEY, encode(again))
        after = await answer(amqp_connection, topology, "after")
        assert after.workflow_id == parent_id
        assert after.dependencies["kid"] == {"by": "leafWork"}

        async def parent_done() -> bool:
            return await status_of(pool, parent_id) == WorkflowStatus.COMPLETED

        await wait_for(parent_done, what="the parent to complete")
        # The child's result to the parent, once more: the parent has moved on.
        duplicate = StepResult(
            message_id=ids.child_result_id(kid_id, 1),
            workflow_id=parent_id,
            step_name="kid",
            attempt=1,
            status=StepResultStatus.SUCCEEDED,
            output={"other": True},
        )
        await publish(amqp_connection, topology.exchange, RESULT_KEY, encode(duplicate))
        marker = StartWorkflow(
            message_id=new_message_id(),
            workflow_id=new_workflow_id(),
            workflow_name="parentFlow",
            input={},
        )
        await publish(amqp_connection, topology.exchange, START_KEY, encode(marker))
        await next_message(amqp_connection, topology.step_queue("before"))
    rows = await pool.fetch(
        "SELECT id, status, output, parent FROM workflows WHERE id = ANY($1::text[])",
        [parent_id, kid_id, grandchild_id],
    )
    by_id = {row["id"]: row for row in rows}
    assert {row["status"] for row in rows} == {"completed"}
    assert by_id[parent_id]["output"] == {"by": "leafWork"}
    assert by_id[parent_id]["parent"] is None
    assert by_id[kid_id]["parent"]["workflowId"] == parent_id
    assert by_id[grandchild_id]["parent"]["workflowId"] == kid_id
    events = [
        row["event"]
        for row in await pool.fetch(
            "SELECT event FROM workflow_events WHERE workflow_id = $1 ORDER BY seq", parent_id
        )
    ]
    assert events.count("child.started") == 1
    assert events.count("child.completed") == 1
    assert events[-1] == "workflow.completed"
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_cancelling_the_parent_mid_child_cancels_the_whole_chain(
    child_settings: Settings,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """A parent cancelled while its child (and grandchild) run sends them a cancel through the
    broker: all three end cancelled, and the grandchild's step result, arriving late, is
    ignored."""
    topology = Topology(child_settings.namespace)
    parent_id, kid_id, grandchild_id = chain_ids()
    async with running_orchestrator(child_settings):
        await start_parent(amqp_connection, topology, parent_id)
        leaf_message = await next_message(amqp_connection, topology.step_queue("leafWork"))
        cancel = CancelWorkflow(
            message_id=new_message_id(), workflow_id=parent_id, reason="changed my mind"
        )
        await publish(amqp_connection, topology.exchange, CONTROL_KEY, encode(cancel))

        async def all_cancelled() -> bool:
            statuses = [await status_of(pool, wid) for wid in (parent_id, kid_id, grandchild_id)]
            return statuses == [WorkflowStatus.CANCELLED] * 3

        await wait_for(all_cancelled, what="parent, child and grandchild to be cancelled")
        leaf = decode(leaf_message.body)
        assert isinstance(leaf, StepCommand)
        late = StepResult(
            message_id=ids.result_id(grandchild_id, "leafWork", "0", 1),
            workflow_id=grandchild_id,
            step_name="leafWork",
            attempt=leaf.attempt,
            status=StepResultStatus.SUCCEEDED,
            output={},
        )
        await publish(amqp_connection, topology.exchange, RESULT_KEY, encode(late))

        async def late_result_applied() -> bool:
            # The inbox row commits with the transaction that judged the result.
            query = "SELECT EXISTS (SELECT 1 FROM inbox WHERE message_id = $1)"
            return bool(await pool.fetchval(query, late.message_id))

        await wait_for(late_result_applied, what="the late result to be consumed")
    assert await status_of(pool, grandchild_id) == WorkflowStatus.CANCELLED
    assert await status_of(pool, parent_id) == WorkflowStatus.CANCELLED
