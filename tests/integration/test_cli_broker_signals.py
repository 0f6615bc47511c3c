"""`relayflow workflows signal --broker`: a SignalWorkflow straight to the broker, confirmed,
after the same checks as the gateway's signal route when the database knows the workflow; and
`relayflow-admin workflows signal`, its deprecated alias, is the same command."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from relayflow.contracts import (
    SignalWorkflow,
    StartWorkflow,
    decode,
    new_message_id,
    new_workflow_id,
)
from relayflow.model import ids
from relayflow.orchestration import store
from relayflow.orchestration.processor import BatchResult, Input, Processor
from relayflow.settings import Settings
from relayflow.topology import SIGNAL_KEY, Topology
from relayflow.workflow import WorkflowRegistry
from tests.integration.gateway_harness import WITH_TEST_WORKFLOWS, WORKFLOWS, running_gateway
from tests.support import get_messages

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def channel(
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
    registry: WorkflowRegistry,
) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    """The namespace's topology, as the services declare it (none runs here)."""
    channel = await amqp_connection.channel()
    await topology.declare(channel, registry.task_names())
    yield channel
    await channel.close()


async def insert_workflow(pool: asyncpg.Pool[Any], *, status: str = "running") -> str:
    workflow_id = new_workflow_id()
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at, updated_at)
        VALUES ($1, 'review', $2, $3, 'h', '{}'::jsonb, now(), now())
        """,
        workflow_id,
        status,
        {"subject": "a raise"},
    )
    return workflow_id


async def cli(settings: Settings, *args: str, alias: bool = False) -> tuple[int, str, str]:
    """`relayflow … --broker` as a process (`relayflow-admin …` with `alias`)."""
    env = {
        **os.environ,
        "AMQP_URL": settings.amqp_url,
        "DATABASE_URL": settings.database_url,
        "RELAYFLOW_NAMESPACE": settings.namespace,
        "RELAYFLOW_WORKFLOWS": ",".join(WITH_TEST_WORKFLOWS),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *(("relayflow.admin", *args) if alias else ("relayflow.cli", *args, "--broker")),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def queued(channel: aio_pika.abc.AbstractChannel, topology: Topology) -> int:
    queue = await channel.declare_queue(topology.orchestrator_queue, passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_a_checked_signal_reaches_the_orchestrator_queue(
    settings: Settings,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
) -> None:
    """An operator's signal is the gateway's: the payload its model normalised, the sender
    given, and with a key the id the gateway would derive from it (so either counts once)."""
    workflow_id = await insert_workflow(pool)
    code, out, err = await cli(
        settings,
        "workflows",
        "signal",
        workflow_id,
        "note",
        "--data",
        '{"text": "see the memo"}',
        "--by",
        "ops",
        "--idempotency-key",
        "k-1",
    )
    assert code == 0, err
    expected = ids.signal_id(workflow_id, "note", "k-1")
    assert expected in out
    async for message in get_messages(channel, topology.orchestrator_queue, count=1):
        assert message.routing_key == SIGNAL_KEY
        assert message.message_id == expected
        signal = decode(message.body)
        assert isinstance(signal, SignalWorkflow)
        assert (signal.workflow_id, signal.signal_name) == (workflow_id, "note")
        assert signal.payload == {"text": "see the memo", "priority": 1}
        assert signal.sent_by == "ops"
        assert signal.idempotency_key == "k-1"


@pytest.mark.parametrize(
    ("signal", "data", "status", "problem"),
    [
        pytest.param("decision", '{"approved": true}', "running", "by: Field required", id="field"),
        pytest.param("decision", "[1]", "running", "must be a JSON object", id="array"),
        pytest.param("decision", "{", "running", "--data is not valid JSON", id="not-json"),
        pytest.param("veto", "{}", "running", "it declares decision, note", id="undeclared"),
        pytest.param(
            "decision", '{"approved": true, "by": "G"}', "completed", "finished", id="done"
        ),
    ],
)
async def test_a_signal_the_workflow_cannot_take_is_refused_and_nothing_is_sent(
    settings: Settings,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    signal: str,
    data: str,
    status: str,
    problem: str,
) -> None:
    """The orchestrator would dead-letter or ignore it; the operator hears why at once, with
    the field to fix, and the command fails."""
    workflow_id = await insert_workflow(pool, status=status)
    code, out, err = await cli(settings, "workflows", "signal", workflow_id, signal, "--data", data)
    assert code == 2, (out, err)
    assert problem in err
    assert await queued(channel, topology) == 0


async def test_a_workflow_the_database_does_not_know_is_signalled_unchecked_with_a_warning(
    settings: Settings, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """The database may lag or be elsewhere: the signal goes, and the operator is told that
    only the orchestrator will check it."""
    workflow_id = new_workflow_id()
    code, _, err = await cli(
        settings, "workflows", "signal", workflow_id, "decision", "--data", '{"any": 1}'
    )
    assert code == 0, err
    assert "sending the signal unchecked" in err
    async for message in get_messages(channel, topology.orchestrator_queue, count=1):
        signal = decode(message.body)
        assert isinstance(signal, SignalWorkflow)
        assert (signal.workflow_id, signal.payload, signal.sent_by) == (
            workflow_id,
            {"any": 1},
            None,
        )


async def apply(
    pool: asyncpg.Pool[Any], processor: Processor, inputs: list[StartWorkflow | SignalWorkflow]
) -> BatchResult:
    """One batch through the orchestrator's processor as its consumer runs it: the message ids
    claimed in the inbox first, and only those it has not seen applied."""
    async with pool.acquire() as conn, conn.transaction():
        about = [item.workflow_id for item in inputs if not isinstance(item, StartWorkflow)]
        unseen, locked = await store.claim_and_lock(
            conn, [item.message_id for item in inputs], about
        )
        applied: list[Input] = [item for item in inputs if item.message_id in unseen]
        return await processor.apply(conn, applied, datetime.now(UTC), locked=locked)


async def signal_rows(pool: asyncpg.Pool[Any], workflow_id: str) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT signal_name, key, signal_id FROM signal_keys WHERE workflow_id = $1", workflow_id
    )


async def test_a_repeated_send_with_the_same_key_is_one_signal(
    settings: Settings,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
) -> None:
    """An operator who runs the command again (a timeout, a doubt) must not signal twice, and
    the same key for another payload is refused like the gateway refuses it: the admin command
    did not record its keys, so a resend with another payload went out under the first id (the
    inbox dropped it without a word) and the gateway took the key as new."""
    processor = Processor(WorkflowRegistry(WORKFLOWS), topology)
    workflow_id = new_workflow_id()
    try:
        await _repeated_send(settings, pool, channel, topology, processor, workflow_id)
    finally:
        # Applied with the processor alone, no relay: its outbox rows would be swept by a later
        # test's orchestrator towards this test's exchanges, which are gone by then.
        await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")


async def _repeated_send(
    settings: Settings,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    processor: Processor,
    workflow_id: str,
) -> None:
    start = StartWorkflow(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        workflow_name="review",
        input={"subject": "a raise"},
    )
    await apply(pool, processor, [start])
    send = ("workflows", "signal", workflow_id, "note", "--data", '{"text": "memo"}')
    first = await cli(settings, *send, "--by", "ops", "--key", "k-1")
    # The deprecated alias is the same command: the same key, the same signal.
    again = await cli(settings, *send, "--by", "ops", "--idempotency-key", "k-1", alias=True)
    assert "deprecated" in again[2]
    assert first[0] == again[0] == 0, (first, again)
    expected = ids.signal_id(workflow_id, "note", "k-1")
    sent = [
        decode(message.body)
        async for message in get_messages(channel, topology.orchestrator_queue, count=2)
    ]
    assert [message.message_id for message in sent] == [expected, expected]
    assert [(row["key"], row["signal_id"]) for row in await signal_rows(pool, workflow_id)] == [
        ("k-1", expected)
    ]
    # Applied as the orchestrator applies them, one batch each: one signal.
    for message in sent:
        assert isinstance(message, SignalWorkflow)
        await apply(pool, processor, [message])
    received = await pool.fetchval(
        "SELECT count(*) FROM workflow_events WHERE workflow_id = $1 AND event = $2",
        workflow_id,
        "signal.received",
    )
    assert received == 1
    assert (
        await pool.fetchval(
            "SELECT jsonb_array_length(mailbox -> 'note') FROM workflows WHERE id = $1", workflow_id
        )
        == 1
    )

    # The same key for another payload: refused, whether the command or the gateway sends it;
    # nothing goes out.
    other = await cli(
        settings, *send[:-1], '{"text": "other"}', "--by", "ops", "--idempotency-key", "k-1"
    )
    assert other[0] == 2, other
    assert "Idempotency-Key 'k-1' was already used" in other[2]
    async with running_gateway(settings, workflows=WITH_TEST_WORKFLOWS) as gateway:
        refused = await gateway.client.post(
            f"/workflows/{workflow_id}/signals/note",
            json={"text": "memo"},
            headers={"Idempotency-Key": "k-1", "X-Relayflow-Sender": "someone else"},
        )
        assert refused.status_code == 409, refused.text
        resent = await gateway.client.post(
            f"/workflows/{workflow_id}/signals/note",
            json={"text": "memo"},
            headers={"Idempotency-Key": "k-1", "X-Relayflow-Sender": "ops"},
        )
        assert resent.status_code == 202, resent.text
        assert resent.json()["signalId"] == expected
    [copy] = [
        decode(message.body)
        async for message in get_messages(channel, topology.orchestrator_queue, count=1)
    ]
    assert copy.message_id == expected
    assert await queued(channel, topology) == 0


async def test_a_key_needs_the_database(
    settings: Settings, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """Without the record, the same key could later be taken for another payload: a keyed send
    that cannot reach PostgreSQL sends nothing and says why."""
    code, out, err = await cli(
        settings,
        "--database-url",
        "postgresql://nobody@127.0.0.1:1/none",
        "workflows",
        "signal",
        new_workflow_id(),
        "note",
        "--data",
        '{"text": "memo"}',
        "--idempotency-key",
        "k-1",
    )
    assert code == 2, (out, err)
    assert "--idempotency-key is recorded" in err
    assert await queued(channel, topology) == 0
