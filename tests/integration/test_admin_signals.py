"""`relayflow-admin workflows signal`: a SignalWorkflow straight to the broker, confirmed, after
the same checks as the gateway's signal route when the database knows the workflow."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from relayflow.contracts import SignalWorkflow, decode, new_workflow_id
from relayflow.model import ids
from relayflow.settings import Settings
from relayflow.topology import SIGNAL_KEY, Topology
from relayflow.workflow import WorkflowRegistry
from tests.integration.gateway_harness import WITH_TEST_WORKFLOWS
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


async def admin(settings: Settings, *args: str) -> tuple[int, str, str]:
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
        "relayflow.admin",
        *args,
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
    code, out, err = await admin(
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
    code, out, err = await admin(
        settings, "workflows", "signal", workflow_id, signal, "--data", data
    )
    assert code == 1, (out, err)
    assert problem in err
    assert await queued(channel, topology) == 0


async def test_a_workflow_the_database_does_not_know_is_signalled_unchecked_with_a_warning(
    settings: Settings, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """The database may lag or be elsewhere: the signal goes, and the operator is told that
    only the orchestrator will check it."""
    workflow_id = new_workflow_id()
    code, _, err = await admin(
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
