"""`approval` end to end, as the run command serves it: a decision signal (sent before its wait
began, and twice), a durable sleep that survives an orchestrator SIGKILL, a rejection that
releases, and a failure that compensates — still once each when the step service is SIGKILLed
in the middle of it."""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from relayflow.contracts import SignalWorkflow, encode
from relayflow.model import WorkflowStatus
from relayflow.topology import SIGNAL_KEY, Topology
from tests.e2e.conftest import System
from tests.support import wait_for

pytestmark = pytest.mark.e2e

ENDED = {
    WorkflowStatus.COMPLETED,
    WorkflowStatus.FAILED,
    WorkflowStatus.COMPENSATED,
    WorkflowStatus.COMPENSATION_FAILED,
}


async def start(client: httpx.AsyncClient, system: System, fail_at: str | None = None) -> str:
    body = {"requestId": f"r-{uuid.uuid4()}", "amount": 120, "failAt": fail_at}
    response = await client.post(f"{system.base_url}/workflows/approval", json=body)
    assert response.status_code == 202, response.text
    workflow_id: str = response.json()["workflowId"]
    return workflow_id


async def decide(
    connection: aio_pika.abc.AbstractRobustConnection,
    system: System,
    workflow_id: str,
    *,
    approved: bool,
    copies: int = 1,
) -> None:
    message = SignalWorkflow(
        message_id=f"sig-{uuid.uuid4()}",
        workflow_id=workflow_id,
        signal_name="decision",
        payload={"approved": approved, "by": "ada"},
        sent_by="ada",
    )
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(Topology(system.namespace).exchange, ensure=False)
    for _ in range(copies):
        await exchange.publish(
            aio_pika.Message(encode(message), message_id=message.message_id), routing_key=SIGNAL_KEY
        )
    await channel.close()


async def ended(pool: asyncpg.Pool[Any], workflow_id: str, timeout: float = 60) -> asyncpg.Record:
    async def done() -> asyncpg.Record | None:
        row = await pool.fetchrow(
            "SELECT status, output, error, steps FROM workflows WHERE id = $1", workflow_id
        )
        return row if row is not None and row["status"] in ENDED else None

    row: asyncpg.Record = await wait_for(done, timeout=timeout, interval=0.05)
    return row


async def ledger(pool: asyncpg.Pool[Any], workflow_id: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT effect, count FROM approval_ledger WHERE workflow_id = $1", workflow_id
    )
    return {row["effect"]: row["count"] for row in rows}


async def events(pool: asyncpg.Pool[Any], workflow_id: str) -> list[tuple[str, str | None]]:
    rows = await pool.fetch(
        "SELECT event, body ->> 'stepName' AS step FROM workflow_events WHERE workflow_id = $1 "
        "ORDER BY seq",
        workflow_id,
    )
    return [(row["event"], row["step"]) for row in rows]


async def test_an_approval_sent_early_and_twice_counts_once_and_sleeps_through_a_kill(
    system: System,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        workflow_id = await start(client, system)
    # Sent at once, most likely before `reserve` has completed and the wait begun; twice, with
    # one message id.
    await decide(amqp_connection, system, workflow_id, approved=True, copies=2)

    async def sleeping() -> bool:
        return ("step.sleeping", "cooldown") in await events(pool, workflow_id)

    await wait_for(sleeping, timeout=30, what="the cooldown to begin")
    await system.kill("orchestrator")
    await system.start("orchestrator")
    row = await ended(pool, workflow_id)
    assert row["status"] == WorkflowStatus.COMPLETED, row
    assert row["output"] == {"approved": True, "by": "ada"}
    history = await events(pool, workflow_id)
    assert history.count(("signal.received", None)) == 1
    assert history.count(("step.completed", "cooldown")) == 1
    assert await ledger(pool, workflow_id) == {"reserve": 1, "charge": 1, "notify": 1}


async def test_a_rejection_releases_and_completes(
    system: System,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        workflow_id = await start(client, system)
    await decide(amqp_connection, system, workflow_id, approved=False)
    row = await ended(pool, workflow_id)
    assert row["status"] == WorkflowStatus.COMPLETED, row
    assert row["output"] == {"approved": False, "by": "ada"}
    assert await ledger(pool, workflow_id) == {"reserve": 1, "release": 1}


async def test_a_late_failure_compensates_each_step_once_across_a_step_service_kill(
    system: System,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        workflow_id = await start(client, system, fail_at="notify")
    await decide(amqp_connection, system, workflow_id, approved=True)

    async def compensating() -> bool:
        status = await pool.fetchval("SELECT status FROM workflows WHERE id = $1", workflow_id)
        return status in (WorkflowStatus.COMPENSATING, WorkflowStatus.COMPENSATED)

    await wait_for(compensating, timeout=30, interval=0.005, what="compensation to begin")
    await system.kill("steps")
    await system.start("steps")
    row = await ended(pool, workflow_id)
    assert row["status"] == WorkflowStatus.COMPENSATED, row
    assert row["error"]["step"] == "notify"
    assert await ledger(pool, workflow_id) == {
        "reserve": 1,
        "charge": 1,
        "refund": 1,
        "release": 1,
    }
    history = [event for event, _ in await events(pool, workflow_id)]
    assert history.index("workflow.compensating") < history.index("workflow.compensated")
    undone = [
        step for event, step in await events(pool, workflow_id) if event == "step.compensated"
    ]
    assert undone == ["charge", "reserve"]
