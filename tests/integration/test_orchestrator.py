"""The orchestrator against the real broker and database: inbox, outbox, dead letters, timers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from pydantic import BaseModel

from relayflow.amqp import Publisher
from relayflow.contracts import (
    CancelWorkflow,
    ErrorInfo,
    RetryWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
    decode,
    encode,
    new_message_id,
    new_workflow_id,
)
from relayflow.machine import Ignored, Rejected, Transition
from relayflow.orchestration import store
from relayflow.orchestration.local import LocalSteps
from relayflow.orchestration.processor import Processor
from relayflow.orchestration.relay import OutboxRelay
from relayflow.settings import Settings
from relayflow.topology import CONTROL_KEY, RESULT_KEY, START_KEY, Topology
from relayflow.workflow import RetryPolicy, WorkflowRegistry, define_workflow, task, wait
from services.orchestrator.service import Orchestrator
from tests.integration.orchestrators import running_orchestrator as orchestrator_in_process
from tests.support import get_messages, wait_for

FORM = {"name": "Ada", "email": "ada@example.com", "message": "hello"}
# The running orchestrator's outbox sweep re-sends rows older than this.
STALE_AFTER = 0.5


@contextlib.asynccontextmanager
async def running_orchestrator(settings: Settings) -> AsyncIterator[None]:
    """The real orchestrator service, in this process, on the test's namespace."""
    async with orchestrator_in_process(settings, outbox_stale_after=STALE_AFTER):
        yield


async def publish(
    connection: aio_pika.abc.AbstractRobustConnection, exchange: str, key: str, body: bytes
) -> None:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    async with channel:
        target = await channel.get_exchange(exchange, ensure=False)
        await target.publish(aio_pika.Message(body, message_id=new_message_id()), routing_key=key)


async def next_message(
    connection: aio_pika.abc.AbstractRobustConnection, queue_name: str, timeout: float = 15
) -> aio_pika.abc.AbstractIncomingMessage:
    async with await connection.channel() as channel:
        [message] = [m async for m in get_messages(channel, queue_name, count=1, timeout=timeout)]
    return message


async def event_types(pool: asyncpg.Pool[Any], workflow_id: str) -> list[str]:
    rows = await pool.fetch(
        "SELECT event FROM workflow_events WHERE workflow_id = $1 ORDER BY seq", workflow_id
    )
    return [row["event"] for row in rows]


@pytest.fixture
async def unsent(pool: asyncpg.Pool[Any]) -> AsyncIterator[list[str]]:
    """Workflow ids whose outbox rows a test leaves unpublished (it applied inputs with the
    processor alone, no relay): removed afterwards, so that no later orchestrator on this
    database sweeps them towards exchanges that are gone."""
    workflow_ids: list[str] = []
    yield workflow_ids
    for workflow_id in workflow_ids:
        await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")


def processor_for(registry: WorkflowRegistry, topology: Topology) -> Processor:
    """The processor of the run command's workflows, with the bodies of their local tasks."""
    local = LocalSteps.load(registry, Settings().step_modules, exchange=topology.exchange)
    return Processor(registry, topology, local=local)


def start_message(workflow_id: str) -> StartWorkflow:
    return StartWorkflow(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        workflow_name="formSubmission",
        input=FORM,
    )


async def test_start_dispatches_first_step_and_records_events(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """A StartWorkflow on the broker becomes a workflow row, its events, and the first command."""
    workflow_id = new_workflow_id()
    async with running_orchestrator(settings):
        await publish(
            amqp_connection, topology.exchange, START_KEY, encode(start_message(workflow_id))
        )
        command = decode(
            (await next_message(amqp_connection, topology.step_queue("validate"))).body
        )
    assert isinstance(command, StepCommand)
    assert (command.workflow_id, command.step_name, command.attempt) == (workflow_id, "validate", 1)
    assert command.input == FORM
    assert await event_types(pool, workflow_id) == ["workflow.started", "step.started"]
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


async def test_duplicated_messages_apply_once(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """The same message delivered twice (same message id), and the same start sent again under a
    new id, each change the workflow only once."""
    workflow_id = new_workflow_id()
    start = start_message(workflow_id)
    async with running_orchestrator(settings):
        await publish(amqp_connection, topology.exchange, START_KEY, encode(start))
        await next_message(amqp_connection, topology.step_queue("validate"))
        done = StepResult(
            message_id=f"res:{workflow_id}:validate:0:1",
            workflow_id=workflow_id,
            step_name="validate",
            attempt=1,
            status=StepResultStatus.SUCCEEDED,
            output={"valid": True},
        )
        for message in (done, done, start, start.model_copy(update={"message_id": "again"})):
            await publish(
                amqp_connection,
                topology.exchange,
                RESULT_KEY if message is done else START_KEY,
                encode(message),
            )
        await next_message(amqp_connection, topology.step_queue("persist"))
        # A marker behind the duplicates: once it is dead-lettered every copy has been delivered,
        # and leaving the block stops the orchestrator only after the batches in hand finish.
        await publish(amqp_connection, topology.exchange, START_KEY, b"marker")
        await next_message(amqp_connection, topology.dead_letter_queue)
    assert await event_types(pool, workflow_id) == [
        "workflow.started",
        "step.started",
        "step.completed",
        "step.started",
    ]


async def test_poison_and_unknown_messages_are_dead_lettered_with_reason(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """Bad input goes to the dead-letter queue on first delivery with its reason, and the
    orchestrator goes on consuming."""
    unknown = start_message(new_workflow_id()).model_copy(update={"workflow_name": "noSuchFlow"})
    good_id = new_workflow_id()
    async with running_orchestrator(settings):
        await publish(amqp_connection, topology.exchange, START_KEY, b"{not json")
        await publish(amqp_connection, topology.exchange, START_KEY, b'{"type": "StartWorkflow"}')
        await publish(amqp_connection, topology.exchange, START_KEY, encode(unknown))
        await publish(amqp_connection, topology.exchange, START_KEY, encode(start_message(good_id)))
        reasons = []
        for _ in range(3):
            dead = await next_message(amqp_connection, topology.dead_letter_queue)
            reasons.append(str((dead.headers or {})["x-relayflow-reason"]))
        await next_message(amqp_connection, topology.step_queue("validate"))
    assert "invalid message" in reasons[0]
    assert "JSON" in reasons[0]
    assert "invalid message" in reasons[1]
    assert "workflowId" in reasons[1]
    assert "unknown workflow 'noSuchFlow'" in reasons[2]


async def test_outbox_rows_left_by_a_crash_are_sent_by_the_sweep(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
    registry: WorkflowRegistry,
) -> None:
    """A crash between commit and publish leaves rows in the outbox; the relay's sweep (here or in
    another replica) sends them and empties the outbox."""
    channel = await amqp_connection.channel()
    await topology.declare(channel, registry.task_names())
    workflow_id = new_workflow_id()
    processor = processor_for(registry, topology)
    async with pool.acquire() as conn, conn.transaction():
        result = await processor.apply(conn, [start_message(workflow_id)])
    # ... and the process died here, before the relay published anything. (Two rows: the
    # command, and one broadcast with the batch's events.)
    assert len(result.outbox) == 2
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%"
        )
        == 2
    )
    publisher = await Publisher.open(amqp_connection)
    relay = OutboxRelay(pool, publisher, stale_after=0.01)

    # Swept here or by another replica on this database (a sweep skips rows another one holds):
    # either way the rows go out once and the outbox is left empty.
    async def swept() -> bool:
        await relay.sweep_once()
        left = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%"
        )
        return bool(left == 0)

    await wait_for(swept, what="the sweep to send the rows a crash left")
    command = decode((await next_message(amqp_connection, topology.step_queue("validate"))).body)
    assert isinstance(command, StepCommand)
    assert command.workflow_id == workflow_id
    await publisher.close()
    await channel.close()


async def test_a_stale_outbox_row_is_sent_again_with_its_own_schema_version(
    pool: asyncpg.Pool[Any], unsent: list[str]
) -> None:
    """The header a row is sent again with is its body's `schemaVersion` (absent: 1), not
    today's: a row written by an older or newer relayflow keeps what it said when written."""
    workflow_id = new_workflow_id()
    unsent.append(workflow_id)
    bodies = {
        f"v2:{workflow_id}": orjson.dumps({"schemaVersion": 2, "workflowId": workflow_id}),
        f"v0:{workflow_id}": orjson.dumps({"workflowId": workflow_id}),
    }
    await pool.executemany(
        "INSERT INTO outbox (exchange, routing_key, message_id, type, body, mandatory,"
        " created_at) VALUES ('x', 'k', $1, 'StepCommand', $2, true, now() - interval '1 hour')",
        list(bodies.items()),
    )
    async with pool.acquire() as conn, conn.transaction():
        stale = await store.claim_stale_outbox(conn, 60, 10_000)
        await store.delete_outbox(
            conn, [row.id for row in stale if row.message.message_id in bodies]
        )
    versions = {
        row.message.message_id: row.message.headers["x-schema-version"]
        for row in stale
        if row.message.message_id in bodies
    }
    assert versions == {f"v2:{workflow_id}": 2, f"v0:{workflow_id}": 1}


async def test_claim_and_lock_answers_fresh_ids_with_or_without_workflows(
    pool: asyncpg.Pool[Any], registry: WorkflowRegistry, topology: Topology, unsent: list[str]
) -> None:
    """The one-statement inbox claim must report fresh ids even when no workflow row matches
    (a batch of starts, or results for unknown workflows), and lock the ones that exist."""
    workflow_id = new_workflow_id()
    unsent.append(workflow_id)
    first, again = f"m1:{workflow_id}", f"m2:{workflow_id}"
    async with pool.acquire() as conn, conn.transaction():
        fresh, locked = await store.claim_and_lock(conn, [first], [f"{workflow_id}-unknown"])
    assert (fresh, locked) == ({first}, {})
    async with pool.acquire() as conn, conn.transaction():
        await processor_for(registry, topology).apply(conn, [start_message(workflow_id)])
    async with pool.acquire() as conn, conn.transaction():
        fresh, locked = await store.claim_and_lock(conn, [first, again], [workflow_id])
        assert fresh == {again}
        assert list(locked) == [workflow_id]
        assert locked[workflow_id].name == "formSubmission"
        # Locked: another session cannot take the row until this transaction ends.
        other = await pool.acquire()
        try:
            with pytest.raises(asyncpg.LockNotAvailableError):
                await other.execute(
                    "SELECT 1 FROM workflows WHERE id = $1 FOR UPDATE NOWAIT", workflow_id
                )
        finally:
            await pool.release(other)
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")


async def test_confirmed_outbox_rows_are_deleted_without_a_commit_of_their_own(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """The relay leaves confirmed rows to the next transaction or its flush: a running
    orchestrator empties the outbox soon after publishing, and stopping it empties it too."""
    workflow_id = new_workflow_id()
    async with running_orchestrator(settings):
        await publish(
            amqp_connection, topology.exchange, START_KEY, encode(start_message(workflow_id))
        )
        await next_message(amqp_connection, topology.step_queue("validate"))

        async def outbox_empty() -> bool:
            count = await pool.fetchval(
                "SELECT count(*) FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%"
            )
            return bool(count == 0)

        # Well before the sweep's `stale_after` would send anything again.
        await wait_for(outbox_empty, timeout=STALE_AFTER * 0.9, what="outbox emptied by the relay")


class Empty(BaseModel):
    pass


async def test_wait_timeout_fires_from_a_durable_timer(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """A wait's timeout is a row in PostgreSQL: whichever replica polls next fails the workflow."""
    definition = define_workflow(
        "quickWait",
        input_model=Empty,
        steps=[
            task("ask"),
            wait(
                "hear", after=["ask"], correlation_from="ask.id", timeout=timedelta(milliseconds=50)
            ),
        ],
    )
    registry = WorkflowRegistry([definition])
    channel = await amqp_connection.channel()
    await topology.declare(channel, registry.task_names())
    processor = processor_for(registry, topology)
    workflow_id = new_workflow_id()
    start = StartWorkflow(
        message_id=new_message_id(), workflow_id=workflow_id, workflow_name="quickWait", input={}
    )
    asked = StepResult(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        step_name="ask",
        attempt=1,
        status=StepResultStatus.SUCCEEDED,
        output={"id": "corr-1"},
    )
    async with pool.acquire() as conn, conn.transaction():
        await processor.apply(conn, [start])
    async with pool.acquire() as conn, conn.transaction():
        await processor.apply(conn, [asked])
    publisher = await Publisher.open(amqp_connection)
    relay = OutboxRelay(pool, publisher)
    orchestrator = Orchestrator(pool, processor, relay, publisher, topology)

    async def fired() -> int:
        return await orchestrator.fire_due_timers()

    assert await wait_for(fired) == 1
    row = await pool.fetchrow("SELECT status, error FROM workflows WHERE id = $1", workflow_id)
    assert row is not None
    assert row["status"] == "failed"
    assert row["error"]["type"] == "WaitTimeout"
    assert await event_types(pool, workflow_id) == [
        "workflow.started",
        "step.started",
        "step.completed",
        "step.started",
        "step.failed",
        "workflow.failed",
    ]
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")
    await publisher.close()
    # The shared teardown knows only the seed's steps: remove this workflow's own.
    for step in registry.task_names():
        await channel.queue_delete(topology.step_queue(step))
    await channel.close()


@pytest.mark.parametrize("replicas", [2])
async def test_concurrent_replicas_do_not_double_advance(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
    registry: WorkflowRegistry,
    replicas: int,
) -> None:
    """Two transactions applying copies of the same result at once (as two replicas would) move the
    workflow once: row locks plus the state machine's attempt check."""
    channel = await amqp_connection.channel()
    await topology.declare(channel, registry.task_names())
    processor = processor_for(registry, topology)
    workflow_id = new_workflow_id()
    async with pool.acquire() as conn, conn.transaction():
        await processor.apply(conn, [start_message(workflow_id)])

    async def apply_copy(index: int) -> None:
        copy = StepResult(
            message_id=f"copy-{index}-{workflow_id}",
            workflow_id=workflow_id,
            step_name="validate",
            attempt=1,
            status=StepResultStatus.SUCCEEDED,
            output={"copy": index},
        )
        async with pool.acquire() as conn, conn.transaction():
            await processor.apply(conn, [copy], now=datetime.now(UTC))

    await asyncio.gather(*(apply_copy(i) for i in range(replicas)))
    assert await event_types(pool, workflow_id) == [
        "workflow.started",
        "step.started",
        "step.completed",
        "step.started",
    ]
    steps = orjson.loads(
        orjson.dumps(await pool.fetchval("SELECT steps FROM workflows WHERE id = $1", workflow_id))
    )
    assert steps["persist"]["status"] == "running"
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")
    await channel.close()


async def test_retry_timer_dispatches_the_next_attempt(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """A retryable failure is retried from a timer row in PostgreSQL, so a restart between the
    failure and the retry loses nothing: the next attempt's command is in the outbox once the
    timer fires, whichever replica fires it."""
    definition = define_workflow(
        "flakyCall",
        input_model=Empty,
        steps=[
            task(
                "call",
                retry=RetryPolicy(
                    initial_interval=timedelta(milliseconds=50),
                    max_interval=timedelta(milliseconds=50),
                ),
            )
        ],
    )
    registry = WorkflowRegistry([definition])
    channel = await amqp_connection.channel()
    await topology.declare(channel, registry.task_names())
    processor = processor_for(registry, topology)
    workflow_id = new_workflow_id()
    start = StartWorkflow(
        message_id=new_message_id(), workflow_id=workflow_id, workflow_name="flakyCall", input={}
    )
    failed = StepResult(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        step_name="call",
        attempt=1,
        status=StepResultStatus.FAILED,
        error=ErrorInfo(type="ConnectionError", message="reset", retryable=True),
    )
    for message in (start, failed):
        async with pool.acquire() as conn, conn.transaction():
            await processor.apply(conn, [message])
    publisher = await Publisher.open(amqp_connection)
    # A fresh orchestrator, as after a restart: all it has is the database.
    orchestrator = Orchestrator(pool, processor, OutboxRelay(pool, publisher), publisher, topology)

    async def fired() -> int:
        return await orchestrator.fire_due_timers()

    assert await wait_for(fired) == 1
    commands = await pool.fetch(
        "SELECT message_id FROM outbox WHERE message_id LIKE $1 ORDER BY id", f"cmd:{workflow_id}%"
    )
    assert [row["message_id"] for row in commands] == [
        f"cmd:{workflow_id}:call:0:1",
        f"cmd:{workflow_id}:call:0:2",
    ]
    assert await event_types(pool, workflow_id) == [
        "workflow.started",
        "step.started",
        "step.retrying",
        "step.started",
    ]
    await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")
    await publisher.close()
    # The shared teardown knows only the seed's steps: remove this workflow's own.
    for step in registry.task_names():
        await channel.queue_delete(topology.step_queue(step))
    await channel.close()


async def test_cancel_and_retry_arrive_as_messages(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """Cancel and retry are messages on workflow.control, applied durably and idempotently: the
    cancelled workflow runs again from where it stopped when retried."""
    workflow_id = new_workflow_id()
    async with running_orchestrator(settings):
        await publish(
            amqp_connection, topology.exchange, START_KEY, encode(start_message(workflow_id))
        )
        await next_message(amqp_connection, topology.step_queue("validate"))
        cancel = CancelWorkflow(message_id=new_message_id(), workflow_id=workflow_id, reason="x")
        for _ in range(2):
            await publish(amqp_connection, topology.exchange, CONTROL_KEY, encode(cancel))

        async def status() -> str | None:
            value = await pool.fetchval("SELECT status FROM workflows WHERE id = $1", workflow_id)
            return value if value == "cancelled" else None

        await wait_for(status)
        retry = RetryWorkflow(message_id=new_message_id(), workflow_id=workflow_id)
        await publish(amqp_connection, topology.exchange, CONTROL_KEY, encode(retry))
        command = decode(
            (await next_message(amqp_connection, topology.step_queue("validate"))).body
        )
    assert isinstance(command, StepCommand)
    assert command.attempt == 2
    assert await event_types(pool, workflow_id) == [
        "workflow.started",
        "step.started",
        "workflow.cancelled",
        "workflow.retried",
        "step.started",
    ]


@pytest.mark.parametrize("order", ["differing first", "same first"])
async def test_a_batch_judges_each_repeated_start_against_the_stored_workflow(
    pool: asyncpg.Pool[Any],
    registry: WorkflowRegistry,
    topology: Topology,
    order: str,
    unsent: list[str],
) -> None:
    """Two starts of an existing id in one batch — one with the stored input, one with another —
    must each be judged against the stored workflow: the same input is ignored, only the other
    is rejected (once, the batch compared the second against the first and rejected both)."""
    workflow_id = new_workflow_id()
    unsent.append(workflow_id)
    processor = processor_for(registry, topology)
    async with pool.acquire() as conn, conn.transaction():
        await processor.apply(conn, [start_message(workflow_id)])
    same = start_message(workflow_id)
    differing = start_message(workflow_id).model_copy(
        update={"input": {**FORM, "message": "something else"}}
    )
    batch = [differing, same] if order == "differing first" else [same, differing]
    async with pool.acquire() as conn, conn.transaction():
        result = await processor.apply(conn, batch)
    by_message = dict(zip([m.message_id for m in batch], result.outcomes, strict=True))
    assert isinstance(by_message[same.message_id], Ignored)
    rejected = by_message[differing.message_id]
    assert isinstance(rejected, Rejected)
    assert "different input" in rejected.reason


async def test_a_new_id_started_twice_in_one_batch_runs_once(
    pool: asyncpg.Pool[Any], registry: WorkflowRegistry, topology: Topology, unsent: list[str]
) -> None:
    """Within one batch, a second start of a new id is judged against the first: the same input
    is a no-op, another input is rejected, and the workflow is started once."""
    workflow_id = new_workflow_id()
    unsent.append(workflow_id)
    first, same = start_message(workflow_id), start_message(workflow_id)
    differing = start_message(workflow_id).model_copy(update={"input": {**FORM, "name": "Bob"}})
    async with pool.acquire() as conn, conn.transaction():
        result = await processor_for(registry, topology).apply(conn, [first, same, differing])
    assert isinstance(result.outcomes[0], Transition)
    assert isinstance(result.outcomes[1], Ignored)
    assert isinstance(result.outcomes[2], Rejected)
    assert await event_types(pool, workflow_id) == ["workflow.started", "step.started"]


async def test_starts_that_cannot_be_stored_are_dead_lettered_by_the_broker_path(
    settings: Settings,
    topology: Topology,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    pool: asyncpg.Pool[Any],
) -> None:
    """A start published to the broker with NUL in its input, or an input over the size limit,
    is dead-lettered with a reason naming the problem and never stored; a good start behind
    them is served."""
    nul_id, big_id, good_id = new_workflow_id(), new_workflow_id(), new_workflow_id()
    nul = start_message(nul_id).model_copy(update={"input": {**FORM, "name": "a\x00b"}})
    big = start_message(big_id).model_copy(
        update={"input": {**FORM, "message": "x" * (settings.max_input_bytes + 1)}}
    )
    async with running_orchestrator(settings):
        for message in (nul, big, start_message(good_id)):
            await publish(amqp_connection, topology.exchange, START_KEY, encode(message))
        reasons = {}
        for _ in range(2):
            dead = await next_message(amqp_connection, topology.dead_letter_queue)
            dead_start = decode(dead.body)
            assert isinstance(dead_start, StartWorkflow)
            reasons[dead_start.workflow_id] = str((dead.headers or {})["x-relayflow-reason"])
        await next_message(amqp_connection, topology.step_queue("validate"))
    assert "input.name" in reasons[nul_id]
    assert "NUL" in reasons[nul_id]
    assert "input" in reasons[big_id]
    assert str(settings.max_input_bytes) in reasons[big_id]
    stored = await pool.fetchval(
        "SELECT count(*) FROM workflows WHERE id = ANY($1::text[])", [nul_id, big_id]
    )
    assert stored == 0
