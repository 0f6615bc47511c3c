"""Map steps through the orchestrator's processor and the real database: the items live in
`step_items`, one row each, and the SQL that claims, saves, cancels and collects them behaves
as the machine expects (the same rules tests/unit/test_map_steps.py checks in memory)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from relayflow.contracts import (
    CancelWorkflow,
    ErrorInfo,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
    decode,
    new_message_id,
    new_workflow_id,
)
from relayflow.db import Queries
from relayflow.machine import Ignored, TimerFired, TimerKind
from relayflow.model import StepStatus, WorkflowStatus, ids
from relayflow.orchestration.processor import BatchResult, Input, Processor
from relayflow.topology import Topology
from relayflow.workflow import RetryPolicy, WorkflowRegistry, define_workflow, map_step, task


class Lines(BaseModel):
    items: list[int]


MAPPED = define_workflow(
    "mappedFlow",
    input_model=Lines,
    steps=[
        map_step("square", over="input.items", max_concurrency=5, timeout=timedelta(minutes=5)),
        task("total", after=["square"]),
    ],
    retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=1)),
    output_from="total",
)


@pytest.fixture
async def workflow_id(pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    """A fresh workflow id; what the processor-only test leaves behind (outbox rows no relay
    sends) is removed afterwards."""
    wid = new_workflow_id()
    yield wid
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{wid}%")


@pytest.fixture
def processor(topology: Topology) -> Processor:
    return Processor(WorkflowRegistry([MAPPED]), topology)


async def apply(
    pool: asyncpg.Pool[Any], processor: Processor, inputs: Sequence[Input]
) -> BatchResult:
    async with pool.acquire() as conn, conn.transaction():
        return await processor.apply(conn, inputs, datetime.now(UTC))


def commands(result: BatchResult) -> list[StepCommand]:
    found = []
    for row in result.outbox:
        if row.message.type == "StepCommand":
            command = decode(row.message.body)
            assert isinstance(command, StepCommand)
            found.append(command)
    return found


def answer(command: StepCommand, *, fail: bool = False) -> StepResult:
    return StepResult(
        message_id=ids.result_id(
            command.workflow_id, command.step_name, command.step_key, command.attempt
        ),
        workflow_id=command.workflow_id,
        step_name=command.step_name,
        step_key=command.step_key,
        attempt=command.attempt,
        status=StepResultStatus.FAILED if fail else StepResultStatus.SUCCEEDED,
        output=None if fail else (command.item or 0) ** 2,
        error=ErrorInfo(type="Flaky", message="try again") if fail else None,
    )


async def start(pool: asyncpg.Pool[Any], processor: Processor, wid: str, n: int) -> BatchResult:
    message = StartWorkflow(
        message_id=new_message_id(),
        workflow_id=wid,
        workflow_name=MAPPED.name,
        input={"items": list(range(n))},
    )
    return await apply(pool, processor, [message])


async def item_rows(pool: asyncpg.Pool[Any], wid: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT key, item_index, status, attempts, output FROM step_items "
        "WHERE workflow_id = $1 ORDER BY item_index",
        wid,
    )


async def test_items_run_in_batches_with_duplicates_and_the_output_keeps_item_order(
    pool: asyncpg.Pool[Any], processor: Processor, workflow_id: str
) -> None:
    """30 items, 5 at a time, answered several per batch (with a copy of each answer in the
    same and in the next batch): each item row ends completed after one attempt, the map's
    output is in item order, and the next step sees it."""
    in_flight = commands(await start(pool, processor, workflow_id, 30))
    assert [c.step_key for c in in_flight] == ["0", "1", "2", "3", "4"]
    previous: list[StepResult] = []
    total_command = None
    while in_flight:
        batch, in_flight = in_flight[:3], in_flight[3:]
        answers = [answer(c) for c in reversed(batch)]
        result = await apply(pool, processor, [*answers, answers[0], *previous])
        assert all(isinstance(o, Ignored) for o in result.outcomes[len(answers) :])
        previous = answers
        for command in commands(result):
            if command.step_name == "total":
                total_command = command
            else:
                in_flight.append(command)
        running = await pool.fetchval(
            "SELECT count(*) FROM step_items WHERE workflow_id = $1 AND status = 'running'",
            workflow_id,
        )
        assert running <= 5
    rows = await item_rows(pool, workflow_id)
    assert [(r["key"], r["status"], r["attempts"]) for r in rows] == [
        (str(i), StepStatus.COMPLETED, 1) for i in range(30)
    ]
    assert total_command is not None
    assert total_command.dependencies["square"] == [i * i for i in range(30)]
    # Each item's timeout timer went with its answer: nothing is left to fire and be ignored.
    assert (
        await pool.fetchval("SELECT count(*) FROM timers WHERE workflow_id = $1", workflow_id) == 0
    )
    steps = await pool.fetchval("SELECT steps FROM workflows WHERE id = $1", workflow_id)
    assert steps["square"]["progress"] == {"total": 30, "completed": 30, "failed": 0, "running": 0}


async def test_a_failed_item_retries_by_its_own_durable_timer(
    pool: asyncpg.Pool[Any], processor: Processor, workflow_id: str
) -> None:
    first, *_ = commands(await start(pool, processor, workflow_id, 3))
    await apply(pool, processor, [answer(first, fail=True)])
    timers = await pool.fetch(
        "SELECT kind, step_key, attempt FROM timers WHERE workflow_id = $1 ORDER BY kind",
        workflow_id,
    )
    assert ("retry", "0", 1) in [(t["kind"], t["step_key"], t["attempt"]) for t in timers]
    fired = TimerFired(workflow_id, TimerKind.RETRY, 1, step_name="square", step_key="0")
    [again] = commands(await apply(pool, processor, [fired]))
    assert (again.step_key, again.attempt, again.item) == ("0", 2, 0)
    # Fired twice (two replicas, a redelivery): the item has moved on, nothing is sent.
    assert commands(await apply(pool, processor, [fired])) == []


async def test_cancel_mid_map_cancels_the_items_and_a_late_answer_changes_nothing(
    pool: asyncpg.Pool[Any], processor: Processor, workflow_id: str
) -> None:
    first, *_ = commands(await start(pool, processor, workflow_id, 12))
    cancel = CancelWorkflow(message_id=new_message_id(), workflow_id=workflow_id, reason="stop")
    await apply(pool, processor, [cancel])
    rows = await item_rows(pool, workflow_id)
    assert {r["status"] for r in rows} == {StepStatus.CANCELLED}
    assert (
        await pool.fetchval("SELECT count(*) FROM timers WHERE workflow_id = $1", workflow_id) == 0
    )
    late = await apply(pool, processor, [answer(first)])
    assert isinstance(late.outcomes[0], Ignored)
    status = await pool.fetchval("SELECT status FROM workflows WHERE id = $1", workflow_id)
    assert status == WorkflowStatus.CANCELLED


async def test_item_lookups_use_the_key_index_with_or_without_statistics(
    pool: asyncpg.Pool[Any],
) -> None:
    """Each result finds its item by key. With the order index sharing the key index's first
    two columns, a planner without statistics (a new database, a skewed table) chose the order
    index for those lookups and filtered on the key: every item of the map read per result. The
    lookups of load, and of save (with claims or without), must be key-index lookups, before
    and after ANALYZE."""
    workflow_id = new_workflow_id()
    await pool.execute(
        """
        INSERT INTO step_items (workflow_id, step_name, key, item_index, status, attempts)
        SELECT $1, 'square', i::text, i, 'running', 1 FROM generate_series(0, 9999) AS i
        """,
        workflow_id,
    )
    queries = Queries.load("relayflow.orchestration")
    one = ([workflow_id], ["square"], ["5000"])
    saved = (*one, ["completed"], [1], [None], [None], [None], [None])
    claims = ([workflow_id], ["square"], [1], datetime.now(UTC))

    def by_key(plan: Any) -> None:
        """Every scan of step_items is of the key index, every scan of timers of its item
        index."""
        scans = list(_scans(plan))
        assert ("step_items", "step_items_key_idx") in scans, scans
        for relation, index in scans:
            expected = {"step_items": "step_items_key_idx", "timers": "timers_item_idx"}
            assert index == expected[relation], scans

    try:
        for analyzed in (False, True):
            if analyzed:
                await pool.execute("ANALYZE step_items")
            async with pool.acquire() as conn, conn.transaction():
                # EXPLAIN without ANALYZE: nothing is written.
                by_key(await conn.fetchval(f"EXPLAIN (FORMAT JSON) {queries.load_items}", *one))
                no_claims: tuple[Any, ...] = ([], [], [], claims[-1])
                for claimed in (no_claims, claims):
                    plan = await conn.fetchval(
                        f"EXPLAIN (FORMAT JSON) {queries.save_and_claim_items}", *saved, *claimed
                    )
                    # The save by key; the claim (planned even with nothing to claim) through
                    # the pending items in order, then the primary key; nothing unindexed.
                    scans = list(_scans(plan))
                    assert ("step_items", "step_items_key_idx") in scans, scans
                    assert ("step_items", "step_items_pending_idx") in scans, scans
                    assert ("timers", "timers_item_idx") in scans, scans
                    assert all(index is not None for _, index in scans), scans
    finally:
        await pool.execute("DELETE FROM step_items WHERE workflow_id = $1", workflow_id)


def _scans(plan: Any) -> Iterator[tuple[str, str | None]]:
    """(relation, index or None) of every scan node of an EXPLAIN (FORMAT JSON) plan."""
    nodes: list[Any] = [entry["Plan"] for entry in plan]
    while nodes:
        node = nodes.pop()
        if "Relation Name" in node and node["Node Type"] != "ModifyTable":
            yield node["Relation Name"], node.get("Index Name")
        nodes.extend(node.get("Plans", ()))
