"""The invocation store against the real database: a batch of plain steps commits with the
round trip that opens the next batch's transaction (`InvocationStore`), and what that must not
change — what the kept transaction holds, the times a claim records, what a body sees, a
connection the server ended meanwhile, a stop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

from relayflow.contracts import StepCommand, StepResult, StepResultStatus, new_workflow_id
from relayflow.db import close_pool, create_pool
from relayflow.steps import InvocationStore, StepContext, StepRegistry
from relayflow.steps.engine import InvocationEngine
from tests.support import wait_for

OWNER = "test-store"


class Item(BaseModel):
    value: int


def store_steps() -> StepRegistry:
    steps = StepRegistry()

    @steps.step("echo", input_model=Item)
    async def echo(ctx: StepContext[Item]) -> dict[str, int]:
        return {"value": ctx.input.value}

    @steps.step("clock", input_model=Item, transactional=True)
    async def clock(ctx: StepContext[Item]) -> dict[str, str]:
        now: datetime = await ctx.connection.fetchval("SELECT now()")
        return {"now": now.isoformat()}

    return steps


def command(step: str = "echo") -> StepCommand:
    workflow_id = new_workflow_id()
    return StepCommand(
        message_id=f"cmd:{workflow_id}:{step}:0:1",
        workflow_id=workflow_id,
        workflow_name="test",
        step_name=step,
        attempt=1,
        input={"value": 21},
        dependencies={},
    )


async def _no_publish(*_: Any) -> None:
    raise AssertionError("these bodies publish nothing")


@pytest.fixture
async def own_pool(database_url: str) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A pool of this test's own, so that the connections it holds are the store's alone."""
    pool = await create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await close_pool(pool)


@pytest.fixture
async def store(own_pool: asyncpg.Pool[Any]) -> AsyncIterator[InvocationStore]:
    store = InvocationStore(own_pool, owner=OWNER, lease_seconds=30.0, open_ahead=1)
    yield store
    await store.close()


@pytest.fixture
def engine(store: InvocationStore) -> InvocationEngine:
    return InvocationEngine(store_steps(), store, publish=_no_publish)


async def opened_ahead(pool: asyncpg.Pool[Any]) -> list[asyncpg.Record]:
    """The sessions of this database that wait in a transaction, seen from another connection."""
    return await pool.fetch(
        "SELECT pid, backend_xid, backend_xmin FROM pg_stat_activity"
        " WHERE datname = current_database() AND state = 'idle in transaction'"
        " AND pid <> pg_backend_pid()"
    )


async def run(engine: InvocationEngine, cmd: StepCommand) -> StepResult:
    result = await engine.run(cmd)
    assert result is not None
    assert result.status is StepResultStatus.SUCCEEDED
    return result


async def test_the_transaction_kept_for_the_next_batch_holds_nothing(
    engine: InvocationEngine, pool: asyncpg.Pool[Any]
) -> None:
    """Why keeping it open is harmless: no transaction id, no snapshot (vacuum is not held
    back), no lock but its own virtual transaction id's."""
    await run(engine, command())
    [session] = await opened_ahead(pool)
    assert session["backend_xid"] is None
    assert session["backend_xmin"] is None
    locks = await pool.fetch("SELECT locktype FROM pg_locks WHERE pid = $1", session["pid"])
    assert {lock["locktype"] for lock in locks} == {"virtualxid"}


async def test_a_claim_records_its_own_time_not_when_its_transaction_was_opened(
    engine: InvocationEngine, pool: asyncpg.Pool[Any]
) -> None:
    """A lease counted from the transaction's start (`now()`) would be short by however long
    the transaction waited for its batch, and already expired after a quiet spell."""
    await run(engine, command())
    between: datetime = await pool.fetchval("SELECT clock_timestamp()")
    second = command()
    result = await run(engine, second)
    assert result.started_at is not None
    assert result.started_at > between


async def test_a_transactional_body_sees_a_transaction_begun_for_it(
    engine: InvocationEngine, pool: asyncpg.Pool[Any]
) -> None:
    """A body's own `now()` is when its transaction began: it must not be handed one that was
    opened ahead, at the end of an earlier batch."""
    await run(engine, command())
    between: datetime = await pool.fetchval("SELECT clock_timestamp()")
    result = await run(engine, command("clock"))
    assert isinstance(result.output, dict)
    assert datetime.fromisoformat(result.output["now"]) > between


async def test_batches_side_by_side_keep_no_more_than_open_ahead(
    engine: InvocationEngine, own_pool: asyncpg.Pool[Any], pool: asyncpg.Pool[Any]
) -> None:
    """The kept connections are taken from the pool: beyond `open_ahead`, they would leave
    leases and transactional steps none to run on."""
    await asyncio.gather(*(run(engine, command()) for _ in range(3)))
    assert len(await opened_ahead(pool)) == 1
    assert own_pool.get_size() - own_pool.get_idle_size() == 1


async def test_a_kept_connection_the_server_ended_costs_no_command(
    engine: InvocationEngine, pool: asyncpg.Pool[Any]
) -> None:
    """A restart or an idle-in-transaction timeout may end the kept session; the next batch
    still claims, runs and records its command once."""
    await run(engine, command())
    [session] = await opened_ahead(pool)
    await pool.execute("SELECT pg_terminate_backend($1)", session["pid"])

    async def ended() -> bool:
        return not any(row["pid"] == session["pid"] for row in await opened_ahead(pool))

    await wait_for(ended, what="the kept session ended")
    cmd = command()
    await run(engine, cmd)
    executions = await pool.fetchval(
        "SELECT executions FROM step_invocations WHERE workflow_id = $1", cmd.workflow_id
    )
    assert executions == 1


async def test_close_hands_the_kept_connections_back(
    engine: InvocationEngine,
    store: InvocationStore,
    own_pool: asyncpg.Pool[Any],
    pool: asyncpg.Pool[Any],
) -> None:
    """A stop must leave no session waiting in a transaction, and the pool able to close."""
    await run(engine, command())
    assert len(await opened_ahead(pool)) == 1
    await store.close()
    assert await opened_ahead(pool) == []
    assert own_pool.get_idle_size() == own_pool.get_size()
