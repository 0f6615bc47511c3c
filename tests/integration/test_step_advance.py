"""A step service that advances workflows itself (`RELAYFLOW_STEP_ADVANCE`), against the real
broker and database: the step's outcome and the workflow's next move commit in one transaction
and no result travels; a result it cannot apply, or a batch whose advance fails, goes to the
orchestrator as a published result instead, with nothing applied twice."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractRobustConnection

from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.contracts import (
    StartWorkflow,
    StepCommand,
    StepResult,
    decode,
    new_message_id,
    new_workflow_id,
)
from relayflow.db import Connection
from relayflow.model import StepStatus, WorkflowStatus, ids
from relayflow.orchestration.advance import StepAdvancer
from relayflow.orchestration.local import LocalSteps
from relayflow.orchestration.processor import Processor
from relayflow.orchestration.relay import OutboxRelay
from relayflow.steps import StepWorker
from relayflow.steps.advance import Advanced
from relayflow.topology import Topology, step_key
from relayflow.workflow import WorkflowRegistry
from tests.integration import local_flows
from tests.integration.local_flows import LOCAL_FLOW, ROWS, WORKFLOWS
from tests.support import delete_topology, get_messages, wait_for

REGISTRY = WorkflowRegistry(WORKFLOWS)


@pytest.fixture(scope="module")
async def rows_table(pool: asyncpg.Pool[Any]) -> AsyncIterator[None]:
    """The table LOCAL_FLOW's local `record` writes."""
    await pool.execute(
        f"CREATE TABLE IF NOT EXISTS {ROWS} "
        "(workflow_id text NOT NULL, attempt int NOT NULL, item text NOT NULL)"
    )
    yield
    await pool.execute(f"DROP TABLE {ROWS}")


@pytest.fixture
async def declared(
    amqp_connection: AbstractRobustConnection, topology: Topology, rows_table: None
) -> AsyncIterator[Topology]:
    channel = await amqp_connection.channel()
    await topology.declare(channel, REGISTRY.task_names())
    await channel.close()
    yield topology
    await delete_topology(amqp_connection, topology, REGISTRY.task_names())


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()


def processor(topology: Topology) -> Processor:
    local = LocalSteps(REGISTRY, local_flows.steps, exchange=topology.exchange)
    return Processor(REGISTRY, topology, local=local)


class FailsOnce:
    """An advancer whose first transaction fails after the real one has written in it."""

    def __init__(self, inner: StepAdvancer) -> None:
        self.inner = inner
        self.calls = 0

    async def apply(
        self,
        conn: Connection,
        results: Sequence[StepResult],
        traces: Mapping[str, str] | None = None,
    ) -> Advanced:
        self.calls += 1
        advanced = await self.inner.apply(conn, results, traces)
        if self.calls == 1:
            raise RuntimeError("the advance fails once")
        return advanced


@contextlib.asynccontextmanager
async def step_service(
    pool: asyncpg.Pool[Any],
    connection: AbstractRobustConnection,
    topology: Topology,
    wrap: Any = None,
) -> AsyncIterator[StepWorker]:
    """A worker serving `ship`, advancing workflows through its own relay (as the service)."""
    relay_publisher = await Publisher.open(connection)
    relay = OutboxRelay(pool, relay_publisher)
    relay.start(sweep=False)
    advancer = StepAdvancer(processor(topology), relay)
    worker = StepWorker(
        steps=local_flows.steps.select(["ship"]),
        pool=pool,
        connection=connection,
        topology=topology,
        advancer=wrap(advancer) if wrap else advancer,
    )
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(grace=5.0)
        await relay.stop()
        await relay_publisher.close()


async def started(pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str) -> StepCommand:
    """Start a LOCAL_FLOW (its local `check` and `record` run in the start's transaction) and
    take its `ship` command out of the outbox, as a relay would."""
    start = StartWorkflow(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        workflow_name=LOCAL_FLOW.name,
        input={"item": "pen"},
    )
    async with pool.acquire() as conn, conn.transaction():
        await processor(topology).apply(conn, [start], datetime.now(UTC))
    rows = await pool.fetch(
        "DELETE FROM outbox WHERE message_id LIKE $1 RETURNING body", f"%{workflow_id}%"
    )
    commands = [m for r in rows if isinstance(m := decode(r["body"]), StepCommand)]
    assert [c.step_name for c in commands] == ["ship"]
    return commands[0]


async def send(publisher: Publisher, topology: Topology, command: StepCommand) -> None:
    await publisher.publish(
        OutgoingMessage.of(command, exchange=topology.exchange, routing_key=step_key("ship"))
    )


async def workflow(pool: asyncpg.Pool[Any], workflow_id: str) -> asyncpg.Record | None:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT status, steps FROM workflows WHERE id = $1", workflow_id
    )
    return row


async def queued(connection: AbstractRobustConnection, queue: str) -> int:
    channel = await connection.channel()
    try:
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0
    finally:
        await channel.close()


async def settled(worker: StepWorker) -> bool:
    # The worker acks after any publish it makes is confirmed: nothing in flight, nothing left.
    return worker.inflight == 0


async def test_the_step_service_completes_the_workflow_and_sends_no_result(
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    workflow_id = new_workflow_id()
    ship = await started(pool, declared, workflow_id)
    async with step_service(pool, amqp_connection, declared) as worker:
        await send(publisher, declared, ship)

        async def completed() -> bool:
            row = await workflow(pool, workflow_id)
            return row is not None and row["status"] == WorkflowStatus.COMPLETED

        # `ship`'s outcome, then `finish` (local) run by the step service, in one transaction.
        await wait_for(completed, what="the workflow completed by the step service")
        await wait_for(lambda: settled(worker), what="the command acked")
        row = await workflow(pool, workflow_id)
        assert row is not None
        steps = json.loads(row["steps"]) if isinstance(row["steps"], str) else row["steps"]
        assert steps["ship"]["status"] == StepStatus.COMPLETED
        assert steps["finish"]["status"] == StepStatus.COMPLETED
        assert await queued(amqp_connection, declared.orchestrator_queue) == 0
        result_id = ids.result_id(workflow_id, "ship", "0", ship.attempt)
        assert await pool.fetchval("SELECT count(*) FROM inbox WHERE message_id = $1", result_id)
        executions = await pool.fetchval(
            "SELECT executions FROM step_invocations WHERE workflow_id = $1", workflow_id
        )
        assert executions == 1

        # Its events went out through the step service's relay, whose confirmed rows it deletes.
        async def outbox_empty() -> bool:
            left: int = await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%"
            )
            return left == 0

        await wait_for(outbox_empty, what="the relay's rows deleted")


async def test_a_result_for_a_workflow_it_cannot_advance_goes_to_the_orchestrator(
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    workflow_id = new_workflow_id()  # never started: the orchestrator dead-letters its result
    ship = StepCommand(
        message_id=f"cmd:{workflow_id}:ship:0:1",
        workflow_id=workflow_id,
        workflow_name=LOCAL_FLOW.name,
        step_name="ship",
        attempt=1,
        input={"item": "pen"},
    )
    async with step_service(pool, amqp_connection, declared):
        await send(publisher, declared, ship)
        channel = await amqp_connection.channel()
        (message,) = [m async for m in get_messages(channel, declared.orchestrator_queue, count=1)]
        await channel.close()
    result = decode(message.body)
    assert isinstance(result, StepResult)
    assert result.workflow_id == workflow_id
    # Not in the inbox, so the orchestrator's copy is applied (here: refused with its reason).
    count = await pool.fetchval(
        "SELECT count(*) FROM inbox WHERE message_id = $1", result.message_id
    )
    assert count == 0


async def test_a_failed_advance_runs_the_step_again_and_sends_its_result(
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    workflow_id = new_workflow_id()
    ship = await started(pool, declared, workflow_id)
    wrapped: list[FailsOnce] = []

    def fails_once(inner: StepAdvancer) -> FailsOnce:
        wrapped.append(FailsOnce(inner))
        return wrapped[0]

    async with step_service(pool, amqp_connection, declared, wrap=fails_once):
        await send(publisher, declared, ship)
        channel = await amqp_connection.channel()
        (message,) = [m async for m in get_messages(channel, declared.orchestrator_queue, count=1)]
        await channel.close()
    result = decode(message.body)
    assert isinstance(result, StepResult)
    assert result.step_name == "ship"
    assert wrapped[0].calls == 1  # the second run did not advance
    # The failed transaction left nothing: the workflow waits for the orchestrator to apply the
    # result, the inbox has not seen it, and the invocation was recorded once, by the second run.
    row = await workflow(pool, workflow_id)
    assert row is not None
    steps = json.loads(row["steps"]) if isinstance(row["steps"], str) else row["steps"]
    assert steps["ship"]["status"] == StepStatus.RUNNING
    count = await pool.fetchval(
        "SELECT count(*) FROM inbox WHERE message_id = $1", result.message_id
    )
    assert count == 0
    row = await pool.fetchrow(
        "SELECT status, executions FROM step_invocations WHERE workflow_id = $1", workflow_id
    )
    assert row is not None
    assert row["status"] == "succeeded"
    assert row["executions"] == 1
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")
