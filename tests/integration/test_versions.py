"""A definition changed and redeployed while runs wait on a signal: those runs finish on the
version they started on, new runs take the new one, and an orchestrator without a run's
version refuses its inputs (dead-lettered, to redrive) instead of applying another version."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from relayflow.contracts import (
    SignalWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
    decode,
    new_message_id,
    new_workflow_id,
)
from relayflow.machine import Rejected
from relayflow.model import WorkflowStatus
from relayflow.orchestration.processor import BatchResult, Input, Processor
from relayflow.topology import Topology
from relayflow.workflow import WorkflowDefinition, WorkflowRegistry, define_workflow, task, wait


class Empty(BaseModel):
    pass


class Go(BaseModel):
    go: bool


def version(number: str, *, audit: bool) -> WorkflowDefinition:
    steps = [
        task("prepare"),
        wait("decision", signal="go", after=["prepare"], timeout=timedelta(hours=1)),
        task("finish", after=["decision"]),
    ]
    if audit:
        steps.append(task("audit", after=["finish"]))
    return define_workflow(
        "versioned", input_model=Empty, steps=steps, signals={"go": Go}, version=number
    )


V1 = version("1", audit=False)
V2 = version("2", audit=True)


@pytest.fixture
async def ids(pool: asyncpg.Pool[Any]) -> AsyncIterator[list[str]]:
    made: list[str] = []
    yield made
    for wid in made:
        await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{wid}%")


async def apply(
    pool: asyncpg.Pool[Any], processor: Processor, inputs: Sequence[Input]
) -> BatchResult:
    async with pool.acquire() as conn, conn.transaction():
        return await processor.apply(conn, inputs, datetime.now(UTC))


def commands(result: BatchResult) -> list[StepCommand]:
    found = [decode(row.message.body) for row in result.outbox if row.message.type == "StepCommand"]
    return [c for c in found if isinstance(c, StepCommand)]


def done(command: StepCommand) -> StepResult:
    return StepResult(
        message_id=new_message_id(),
        workflow_id=command.workflow_id,
        step_name=command.step_name,
        attempt=command.attempt,
        status=StepResultStatus.SUCCEEDED,
    )


async def run_to_end(
    pool: asyncpg.Pool[Any], processor: Processor, pending: list[StepCommand]
) -> list[str]:
    ran = []
    while pending:
        command = pending.pop(0)
        ran.append(command.step_name)
        pending.extend(commands(await apply(pool, processor, [done(command)])))
    return ran


async def test_runs_finish_on_the_version_they_started_on(
    pool: asyncpg.Pool[Any], topology: Topology, ids: list[str]
) -> None:
    before = Processor(WorkflowRegistry([V1]), topology)
    after = Processor(WorkflowRegistry([V1, V2]), topology)
    only_new = Processor(WorkflowRegistry([V2]), topology)
    old_run, new_run = new_workflow_id(), new_workflow_id()
    ids.extend([old_run, new_run])

    def start(wid: str) -> StartWorkflow:
        return StartWorkflow(
            message_id=new_message_id(), workflow_id=wid, workflow_name="versioned", input={}
        )

    [prepare] = commands(await apply(pool, before, [start(old_run)]))
    await run_to_end(pool, before, [prepare])
    # Redeployed with version 2 beside 1, while the old run waits for its signal.
    go = SignalWorkflow(
        message_id=new_message_id(), workflow_id=old_run, signal_name="go", payload={"go": True}
    )
    refused = await apply(pool, only_new, [go])
    assert isinstance(refused.outcomes[0], Rejected)
    assert "version '1'" in refused.outcomes[0].reason
    assert "redrive" in refused.outcomes[0].reason
    resumed = commands(await apply(pool, after, [go]))
    assert await run_to_end(pool, after, resumed) == ["finish"]
    [prepare2] = commands(await apply(pool, after, [start(new_run)]))
    await run_to_end(pool, after, [prepare2])
    go2 = go.model_copy(update={"message_id": new_message_id(), "workflow_id": new_run})
    assert await run_to_end(pool, after, commands(await apply(pool, after, [go2]))) == [
        "finish",
        "audit",
    ]
    rows = await pool.fetch(
        "SELECT id, version, status FROM workflows WHERE id = ANY($1::text[])", [old_run, new_run]
    )
    by_id = {row["id"]: row for row in rows}
    assert (by_id[old_run]["version"], by_id[old_run]["status"]) == ("1", WorkflowStatus.COMPLETED)
    assert (by_id[new_run]["version"], by_id[new_run]["status"]) == ("2", WorkflowStatus.COMPLETED)
