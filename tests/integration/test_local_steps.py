"""Local tasks through the processor and the real database: the body runs inside the batch's
transaction, its writes and publishes commit with the workflow's state or not at all, and a
chain of local tasks runs in the one transaction of the input that started it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import pytest

from relayflow.contracts import (
    StartWorkflow,
    StepResult,
    StepResultStatus,
    new_message_id,
    new_workflow_id,
)
from relayflow.errors import DefinitionError
from relayflow.machine import TimerFired, TimerKind
from relayflow.model import StepStatus, WorkflowStatus, ids
from relayflow.orchestration import store
from relayflow.orchestration.local import LocalSteps
from relayflow.orchestration.processor import Processor
from relayflow.settings import Settings
from relayflow.steps import StepRegistry
from relayflow.topology import START_KEY, Topology, step_key
from relayflow.workflow import WorkflowRegistry
from tests.integration import local_flows
from tests.integration.local_flows import ALL_LOCAL, LOCAL_FLOW, ROWS, SLOW_FLOW, WORKFLOWS
from tests.integration.orchestrators import running_orchestrator
from tests.support import wait_for

REGISTRY = WorkflowRegistry(WORKFLOWS)


@pytest.fixture(scope="module")
async def rows_table(pool: asyncpg.Pool[Any]) -> AsyncIterator[None]:
    await pool.execute(
        f"CREATE TABLE IF NOT EXISTS {ROWS} "
        "(workflow_id text NOT NULL, attempt int NOT NULL, item text NOT NULL)"
    )
    yield
    await pool.execute(f"DROP TABLE {ROWS}")


@pytest.fixture
async def workflow_id(pool: asyncpg.Pool[Any], rows_table: None) -> AsyncIterator[str]:
    wid = new_workflow_id()
    yield wid
    # The processor-only tests leave what a relay would have sent.
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{wid}%")


def processor(topology: Topology) -> Processor:
    local = LocalSteps(REGISTRY, local_flows.steps, exchange=topology.exchange)
    return Processor(REGISTRY, topology, local=local)


def start(workflow_id: str, name: str, **order: Any) -> StartWorkflow:
    return StartWorkflow(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        workflow_name=name,
        input={"item": "pen", **order},
    )


async def apply(pool: asyncpg.Pool[Any], proc: Processor, *inputs: Any) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await proc.apply(conn, list(inputs), datetime.now(UTC))


async def outbox_types(pool: asyncpg.Pool[Any], workflow_id: str) -> list[tuple[str, str]]:
    rows = await pool.fetch(
        "SELECT routing_key, body FROM outbox WHERE message_id LIKE $1 ORDER BY id",
        f"%{workflow_id}%",
    )
    return [(row["routing_key"], json.loads(row["body"])["type"]) for row in rows]


async def stored(pool: asyncpg.Pool[Any], workflow_id: str) -> asyncpg.Record:
    row: asyncpg.Record | None = await pool.fetchrow(
        "SELECT status, steps FROM workflows WHERE id = $1", workflow_id
    )
    assert row is not None
    return row


async def rows_of(pool: asyncpg.Pool[Any], workflow_id: str) -> list[int]:
    found = await pool.fetch(
        f"SELECT attempt FROM {ROWS} WHERE workflow_id = $1 ORDER BY attempt", workflow_id
    )
    return [row["attempt"] for row in found]


async def test_local_tasks_run_in_the_transaction_of_the_input_that_starts_them(
    pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str
) -> None:
    proc = processor(topology)
    await apply(pool, proc, start(workflow_id, LOCAL_FLOW.name))

    row = await stored(pool, workflow_id)
    assert row["status"] == WorkflowStatus.RUNNING
    steps = row["steps"]
    assert steps["check"]["status"] == StepStatus.COMPLETED
    assert steps["check"]["output"] == {"item": "PEN"}
    assert steps["record"]["status"] == StepStatus.COMPLETED
    assert steps["ship"]["status"] == StepStatus.RUNNING
    assert await rows_of(pool, workflow_id) == [1]
    # No command for a local task: only the remote one, the body's publish and the events.
    sent = await outbox_types(pool, workflow_id)
    assert ("local.note", "ExternalRequest") in sent
    # What a relay sends again after a crash keeps the body's correlation id.
    async with pool.acquire() as conn, conn.transaction():
        pending = await store.claim_stale_outbox(conn, -60, 10_000)
    (note,) = [row.message for row in pending if row.message.routing_key == "local.note"]
    assert note.correlation_id == f"note-{workflow_id}"
    assert [t for t in sent if t[1] == "StepCommand"] == [(step_key("ship"), "StepCommand")]
    assert not await pool.fetchval(
        "SELECT count(*) FROM timers WHERE workflow_id = $1", workflow_id
    )

    result = StepResult(
        message_id=ids.result_id(workflow_id, "ship", "0", 1),
        workflow_id=workflow_id,
        step_name="ship",
        attempt=1,
        status=StepResultStatus.SUCCEEDED,
        output={"shipped": True},
    )
    await apply(pool, proc, result)
    row = await stored(pool, workflow_id)
    assert row["status"] == WorkflowStatus.COMPLETED
    assert row["steps"]["finish"]["output"] == {"done": "pen"}
    events = await pool.fetch(
        "SELECT event, body->>'stepName' AS step FROM workflow_events WHERE workflow_id = $1 "
        "ORDER BY seq",
        workflow_id,
    )
    assert [(e["event"], e["step"]) for e in events] == [
        ("workflow.started", None),
        ("step.started", "check"),
        ("step.completed", "check"),
        ("step.started", "record"),
        ("step.completed", "record"),
        ("step.started", "ship"),
        ("step.completed", "ship"),
        ("step.started", "finish"),
        ("step.completed", "finish"),
        ("workflow.completed", None),
    ]


async def test_a_failed_attempt_leaves_no_write_and_no_publish_and_is_retried(
    pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str
) -> None:
    proc = processor(topology)
    await apply(pool, proc, start(workflow_id, LOCAL_FLOW.name, fail_record_on=[1]))

    row = await stored(pool, workflow_id)
    assert row["steps"]["check"]["status"] == StepStatus.COMPLETED
    assert row["steps"]["record"]["status"] == StepStatus.RETRYING
    # The row it wrote and the message it published went with its savepoint.
    assert await rows_of(pool, workflow_id) == []
    assert ("local.note", "ExternalRequest") not in await outbox_types(pool, workflow_id)

    retry = TimerFired(workflow_id, TimerKind.RETRY, 1, step_name="record")
    await apply(pool, proc, retry)
    row = await stored(pool, workflow_id)
    assert row["steps"]["record"]["status"] == StepStatus.COMPLETED
    assert row["steps"]["record"]["attempts"] == 2
    assert await rows_of(pool, workflow_id) == [2]


async def test_a_rolled_back_batch_keeps_nothing_of_its_local_tasks(
    pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str
) -> None:
    """The crash case: the transaction never commits, the input comes again, and the body's
    effects exist once — from the attempt that committed."""
    proc = processor(topology)
    message = start(workflow_id, LOCAL_FLOW.name)

    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        await proc.apply(conn, [message], datetime.now(UTC))
        await transaction.rollback()
    assert await rows_of(pool, workflow_id) == []
    assert await pool.fetchval("SELECT count(*) FROM workflows WHERE id = $1", workflow_id) == 0

    await apply(pool, processor(topology), message)
    assert await rows_of(pool, workflow_id) == [1]
    assert (await stored(pool, workflow_id))["steps"]["record"]["status"] == StepStatus.COMPLETED


@pytest.mark.parametrize("where", ["python", "database"])
async def test_an_attempt_past_its_limit_fails_and_the_transaction_goes_on(
    pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str, where: str
) -> None:
    proc = processor(topology)
    other = new_workflow_id()
    slow = {"sleep": 5.0} if where == "python" else {"db_sleep": 5.0}
    # The other workflow of the batch commits although the slow one's query was cut off.
    await apply(
        pool,
        proc,
        start(workflow_id, SLOW_FLOW.name, **slow),
        start(other, ALL_LOCAL.name),
    )
    row = await stored(pool, workflow_id)
    assert row["status"] == WorkflowStatus.FAILED
    assert row["steps"]["slow"]["error"]["type"] == "StepTimeout"
    assert await rows_of(pool, workflow_id) == []
    assert (await stored(pool, other))["status"] == WorkflowStatus.COMPLETED
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{other}%")


def test_an_orchestrator_without_a_local_body_refuses_to_start(topology: Topology) -> None:
    with pytest.raises(DefinitionError, match="record"):
        LocalSteps(REGISTRY, StepRegistry(), exchange=topology.exchange)
    with pytest.raises(DefinitionError, match="local tasks"):
        Processor(REGISTRY, topology)


async def test_the_orchestrator_service_runs_local_tasks_from_its_step_modules(
    pool: asyncpg.Pool[Any],
    topology: Topology,
    settings: Settings,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    rows_table: None,
) -> None:
    module = local_flows.__name__
    workflow_id = new_workflow_id()
    async with running_orchestrator(settings, workflows=[module], step_modules=[module]):
        channel = await amqp_connection.channel()
        exchange = await channel.get_exchange(topology.exchange)
        message = start(workflow_id, ALL_LOCAL.name)
        await exchange.publish(
            aio_pika.Message(message.model_dump_json(by_alias=True).encode()),
            routing_key=START_KEY,
        )

        async def completed() -> bool:
            found = await pool.fetchval("SELECT status FROM workflows WHERE id = $1", workflow_id)
            return bool(found == WorkflowStatus.COMPLETED)

        await wait_for(completed, what="the all-local workflow to complete")
        await channel.close()
    assert (await stored(pool, workflow_id))["steps"]["finish"]["output"] == {"done": "pen"}
