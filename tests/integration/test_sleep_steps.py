"""A durable sleep through the processor and the real database: its wake-up is a timer row that
two replicas polling at once fire once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from relayflow.contracts import StartWorkflow, new_message_id, new_workflow_id
from relayflow.machine import TimerFired
from relayflow.model import StepStatus, WorkflowStatus
from relayflow.orchestration import store
from relayflow.orchestration.processor import Processor
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry, define_workflow, sleep
from tests.support import wait_for


class Empty(BaseModel):
    pass


NAPPING = define_workflow(
    "nappingFlow", input_model=Empty, steps=[sleep("nap", duration=timedelta(milliseconds=300))]
)


@pytest.fixture
async def workflow_id(pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    wid = new_workflow_id()
    yield wid
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{wid}%")


async def test_a_sleep_wakes_once_however_many_replicas_poll(
    pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str
) -> None:
    processor = Processor(WorkflowRegistry([NAPPING]), topology)
    start = StartWorkflow(
        message_id=new_message_id(), workflow_id=workflow_id, workflow_name=NAPPING.name, input={}
    )
    async with pool.acquire() as conn, conn.transaction():
        await processor.apply(conn, [start], datetime.now(UTC))
    row = await pool.fetchrow(
        "SELECT kind, fire_at FROM timers WHERE workflow_id = $1", workflow_id
    )
    assert row is not None
    assert row["kind"] == "sleep"

    async def due() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT fire_at <= now() FROM timers WHERE workflow_id = $1", workflow_id
            )
        )

    await wait_for(due, what="the sleep's timer to come due")

    async def replica() -> list[TimerFired]:
        async with pool.acquire() as conn, conn.transaction():
            # Like a replica, it applies whatever it claimed (another test's leftover timer
            # changes nothing here); only this workflow's is counted.
            claimed = await store.claim_due_timers(conn, 100)
            await processor.apply(conn, claimed)
            return [t for t in claimed if t.workflow_id == workflow_id]

    claimed = await asyncio.gather(replica(), replica())
    assert sorted(len(c) for c in claimed) == [0, 1]
    state = await pool.fetchrow("SELECT status, steps FROM workflows WHERE id = $1", workflow_id)
    assert state is not None
    assert state["status"] == WorkflowStatus.COMPLETED
    assert state["steps"]["nap"]["status"] == StepStatus.COMPLETED
    events = await pool.fetch(
        "SELECT event FROM workflow_events WHERE workflow_id = $1 ORDER BY seq", workflow_id
    )
    assert [e["event"] for e in events] == [
        "workflow.started",
        "step.sleeping",
        "step.completed",
        "workflow.completed",
    ]
