"""The orchestrator keeps large workflow inputs in memory, so that locking a workflow does not
read them again: checked against the real lock queries, including the case the cache must never
get wrong (a workflow deleted and started again under the same id with another input)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from relayflow.contracts import StartWorkflow, new_message_id, new_workflow_id
from relayflow.orchestration import store
from relayflow.orchestration.inputs import InputCache
from relayflow.orchestration.processor import Processor
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry, define_workflow, task


class Lines(BaseModel):
    lines: list[str]


FLOW = define_workflow("inputCacheFlow", input_model=Lines, steps=[task("read")])


@pytest.fixture
async def workflow_id(pool: asyncpg.Pool[Any]) -> AsyncIterator[str]:
    wid = new_workflow_id()
    yield wid
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{wid}%")
    await forget(pool, wid)


async def forget(pool: asyncpg.Pool[Any], wid: str) -> None:
    """What retention removes of a workflow."""
    for table in ("workflow_events", "timers"):
        await pool.execute(f"DELETE FROM {table} WHERE workflow_id = $1", wid)
    await pool.execute("DELETE FROM workflows WHERE id = $1", wid)


def big_input(tag: str) -> dict[str, Any]:
    # Distinct lines, so that PostgreSQL's compression cannot shrink it below the threshold.
    return {"lines": [f"{tag}-{n}-{n * 7919 % 10007}" for n in range(4000)]}


async def start(pool: asyncpg.Pool[Any], topology: Topology, wid: str, value: Any) -> None:
    processor = Processor(WorkflowRegistry([FLOW]), topology)
    message = StartWorkflow(
        message_id=new_message_id(), workflow_id=wid, workflow_name=FLOW.name, input=value
    )
    async with pool.acquire() as conn, conn.transaction():
        await processor.apply(conn, [message], datetime.now(UTC))


async def lock(pool: asyncpg.Pool[Any], wid: str, cache: InputCache) -> tuple[Any, bool]:
    """The input the lock produced, and whether the row left it out (served from memory)."""
    hits = cache.hits
    async with pool.acquire() as conn, conn.transaction():
        _, locked = await store.claim_and_lock(conn, [new_message_id()], [wid], cache)
    return locked[wid].input, cache.hits > hits


async def test_a_large_input_is_read_once_then_served_from_memory(
    pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str
) -> None:
    value = big_input("a")
    await start(pool, topology, workflow_id, value)
    cache = InputCache()
    assert await lock(pool, workflow_id, cache) == (value, False)
    assert len(cache) == 1
    again, left_out = await lock(pool, workflow_id, cache)
    assert again == value
    assert left_out is True


async def test_a_small_input_is_always_read_with_the_row(
    pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str
) -> None:
    await start(pool, topology, workflow_id, {"lines": ["one"]})
    cache = InputCache()
    for _ in range(2):
        value, left_out = await lock(pool, workflow_id, cache)
        assert value == {"lines": ["one"]}
        assert left_out is False
    assert len(cache) == 0


async def test_a_workflow_started_again_under_the_same_id_is_read_afresh(
    pool: asyncpg.Pool[Any], topology: Topology, workflow_id: str
) -> None:
    """Retention may delete a workflow and a client start the id again with another input: the
    cache matches on the input's hash as well as the id, so it cannot serve the old one."""
    cache = InputCache()
    await start(pool, topology, workflow_id, big_input("old"))
    assert await lock(pool, workflow_id, cache) == (big_input("old"), False)
    await forget(pool, workflow_id)
    await start(pool, topology, workflow_id, big_input("new"))
    value, left_out = await lock(pool, workflow_id, cache)
    assert value == big_input("new")
    assert left_out is False
    # ... and it now holds the new one.
    assert (await lock(pool, workflow_id, cache)) == (big_input("new"), True)


def test_the_cache_keeps_within_its_bound_least_recently_used_out() -> None:
    cache = InputCache(max_bytes=2500, min_bytes=0)
    entries = {f"wf-{n}": {"blob": "x" * 1000, "n": n} for n in range(3)}
    for wid, value in entries.items():
        cache.offer(wid, f"hash-{wid}", value, stored_size=1000)
        cache.pin(["wf-0"])  # wf-0 stays the most recently used
    assert cache.size <= 2500
    assert set(cache.pin(entries)) == {"wf-0", "wf-2"}
    cache.offer("huge", "h", {"blob": "x" * 5000}, stored_size=5000)
    assert "huge" not in cache.pin(["huge"])
    cache.forget(["wf-0"])
    assert set(cache.pin(entries)) == {"wf-2"}
