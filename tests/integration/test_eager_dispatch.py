"""Eager dispatch (`relayflow.steps.eager`) against the real broker and database: a step service
that advances a workflow to a step it serves runs that step's command itself, and the broker
never sees it; a command it cannot run after all (a stop) is published instead, and one it holds
beyond `prefetch` is published at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractQueue, AbstractRobustConnection
from pydantic import BaseModel

from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.contracts import StartWorkflow, StepCommand, decode, new_message_id, new_workflow_id
from relayflow.model import WorkflowStatus
from relayflow.orchestration.advance import StepAdvancer
from relayflow.orchestration.processor import Processor
from relayflow.orchestration.relay import OutboxRelay
from relayflow.steps import StepContext, StepRegistry, StepWorker, WorkerConfig
from relayflow.topology import Topology, step_key
from relayflow.workflow import WorkflowRegistry, define_workflow, task
from services.steps.service import hand_over
from tests.integration.test_step_advance import queued, settled
from tests.support import delete_topology, wait_for


class Parcel(BaseModel):
    item: str = "pen"


# pack -> ship and label side by side
FLOW = define_workflow(
    "eagerFlow",
    input_model=Parcel,
    steps=[task("pack"), task("ship", after=["pack"]), task("label", after=["pack"])],
    output_from="ship",
)
REGISTRY = WorkflowRegistry([FLOW])
STEPS = ("pack", "ship", "label")

# What `ship` waits for before it returns (set: at once).
ship_may_finish = asyncio.Event()
steps = StepRegistry()


@steps.step("pack")
async def pack(ctx: StepContext[Parcel]) -> dict[str, str]:
    return {"packed": ctx.workflow_id}


@steps.step("ship")
async def ship(ctx: StepContext[Parcel]) -> dict[str, bool]:
    await ship_may_finish.wait()
    return {"shipped": True}


@steps.step("label")
async def label(ctx: StepContext[Parcel]) -> dict[str, bool]:
    return {"labelled": True}


@pytest.fixture
async def declared(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> AsyncIterator[Topology]:
    channel = await amqp_connection.channel()
    await topology.declare(channel, STEPS)
    await channel.close()
    ship_may_finish.set()
    yield topology
    await delete_topology(amqp_connection, topology, STEPS)


@contextlib.asynccontextmanager
async def spy(
    connection: AbstractRobustConnection, topology: Topology, *steps: str
) -> AsyncIterator[AbstractQueue]:
    """A queue of its own that gets a copy of every command published for `steps`."""
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    for step in steps:
        await queue.bind(topology.exchange, step_key(step))
    try:
        yield queue
    finally:
        await channel.close()


async def copies(queue: AbstractQueue) -> list[StepCommand]:
    """The commands the spy has had (taken off it)."""
    found: list[StepCommand] = []
    while (message := await queue.get(fail=False, no_ack=True)) is not None:
        command = decode(message.body)
        assert isinstance(command, StepCommand)
        found.append(command)
    return found


@contextlib.asynccontextmanager
async def step_service(
    pool: asyncpg.Pool[Any],
    connection: AbstractRobustConnection,
    topology: Topology,
    *,
    eager: bool = True,
    prefetch: int = 32,
    inline_budget: float = 0.05,
) -> AsyncIterator[StepWorker]:
    """A step service serving every step of FLOW, wired as `services.steps.service` does."""
    relay_publisher = await Publisher.open(connection)
    relay = OutboxRelay(pool, relay_publisher)
    relay.start(sweep=False)
    worker = StepWorker(
        steps=steps,
        pool=pool,
        connection=connection,
        topology=topology,
        config=WorkerConfig(prefetch=prefetch, inline_budget=inline_budget),
        advancer=StepAdvancer(Processor(REGISTRY, topology), relay),
    )
    if eager:
        hand_over(relay, worker)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop(grace=0.5)
        await relay.stop()
        await relay_publisher.close()


async def start(pool: asyncpg.Pool[Any], topology: Topology, publisher: Publisher) -> str:
    """Start a FLOW and send its `pack` command, as the orchestrator and its relay would."""
    workflow_id = new_workflow_id()
    begin = StartWorkflow(
        message_id=new_message_id(), workflow_id=workflow_id, workflow_name=FLOW.name, input={}
    )
    async with pool.acquire() as conn, conn.transaction():
        await Processor(REGISTRY, topology).apply(conn, [begin], datetime.now(UTC))
    rows = await pool.fetch(
        "DELETE FROM outbox WHERE message_id LIKE $1 RETURNING body", f"%{workflow_id}%"
    )
    (command,) = [m for r in rows if isinstance(m := decode(r["body"]), StepCommand)]
    await publisher.publish(
        OutgoingMessage.of(command, exchange=topology.exchange, routing_key=step_key("pack"))
    )
    return workflow_id


async def status(pool: asyncpg.Pool[Any], workflow_id: str) -> str | None:
    value: str | None = await pool.fetchval(
        "SELECT status FROM workflows WHERE id = $1", workflow_id
    )
    return value


async def executions(pool: asyncpg.Pool[Any], workflow_id: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT step_name, executions FROM step_invocations WHERE workflow_id = $1", workflow_id
    )
    return {row["step_name"]: row["executions"] for row in rows}


async def completed(pool: asyncpg.Pool[Any], workflow_id: str) -> bool:
    return await status(pool, workflow_id) == WorkflowStatus.COMPLETED


async def outbox_empty(pool: asyncpg.Pool[Any], workflow_id: str) -> bool:
    left: int = await pool.fetchval(
        "SELECT count(*) FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%"
    )
    return left == 0


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()


async def test_the_next_commands_run_in_process_and_never_reach_the_broker(
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    async with (
        spy(amqp_connection, declared, "ship", "label") as sent,
        step_service(pool, amqp_connection, declared) as worker,
    ):
        workflow_id = await start(pool, declared, publisher)
        await wait_for(lambda: completed(pool, workflow_id), what="the workflow completed")
        await wait_for(lambda: settled(worker), what="every command settled")
        assert await executions(pool, workflow_id) == {"pack": 1, "ship": 1, "label": 1}
        # The commands of ship and label were committed to the outbox and deleted once run.
        await wait_for(lambda: outbox_empty(pool, workflow_id), what="outbox empty")
        assert await copies(sent) == []


async def test_without_eager_dispatch_every_command_goes_through_the_broker(
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    """The same run with eager dispatch off: what the test above sees is the hand-over's."""
    async with (
        spy(amqp_connection, declared, "ship", "label") as sent,
        step_service(pool, amqp_connection, declared, eager=False),
    ):
        workflow_id = await start(pool, declared, publisher)
        await wait_for(lambda: completed(pool, workflow_id), what="the workflow completed")
        assert sorted(c.step_name for c in await copies(sent)) == ["label", "ship"]


async def test_beyond_prefetch_a_command_is_published_at_once(
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    ship_may_finish.clear()
    async with (
        spy(amqp_connection, declared, "ship", "label") as sent,
        # ship waits within the inline budget: its result is applied here, not sent.
        step_service(pool, amqp_connection, declared, prefetch=1, inline_budget=30.0),
    ):
        workflow_id = await start(pool, declared, publisher)

        async def one_published() -> bool:
            return await queued(amqp_connection, sent.name) >= 1

        await wait_for(one_published, what="the command beyond prefetch published")
        ship_may_finish.set()
        await wait_for(lambda: completed(pool, workflow_id), what="the workflow completed")
        # One of ship and label was handed over; the other went through the broker, and its
        # copy found nothing left to run twice.
        assert len(await copies(sent)) == 1
        assert await executions(pool, workflow_id) == {"pack": 1, "ship": 1, "label": 1}


async def test_a_command_handed_over_and_not_run_by_the_stop_is_published(
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    """`ship` is still running when its step service stops: handed back, its command goes to
    the broker, and the next step service runs it (its lease released by the stop)."""
    ship_may_finish.clear()
    async with spy(amqp_connection, declared, "ship") as sent:
        async with step_service(pool, amqp_connection, declared):
            workflow_id = await start(pool, declared, publisher)

            async def ship_running() -> bool:
                return "ship" in await executions(pool, workflow_id)

            await wait_for(ship_running, what="ship claimed under its lease")
            assert await copies(sent) == []
        (published,) = await copies(sent)
        assert published.step_name == "ship"
        ship_may_finish.set()
        async with step_service(pool, amqp_connection, declared):
            await wait_for(
                lambda: completed(pool, workflow_id),
                what="the workflow completed by the next service",
            )
    assert (await executions(pool, workflow_id))["ship"] == 2
