"""A compensating run in a real browser: the page shows which completed steps are being undone,
then — as the undo events arrive live — the undo that failed with its error, and the list shows
the new status with its own style and the run's version."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from playwright.async_api import Page, expect

from relayflow.contracts import EventType, WorkflowEvent, encode, new_workflow_id
from relayflow.model import StepStatus, WorkflowStatus
from relayflow.topology import Topology
from tests.e2e.conftest import System

pytestmark = pytest.mark.browser

# No definition of this name is registered: the page shows the steps its stored state holds.
NAME = "storedSaga"
REFUSED = {"type": "RefundRefused", "message": "the card is closed", "retryable": False}


def event(workflow_id: str, seq: int, kind: EventType, **fields: Any) -> WorkflowEvent:
    return WorkflowEvent(
        message_id=f"evt:{workflow_id}:{seq}",
        workflow_id=workflow_id,
        seq=seq,
        event=kind,
        workflow_name=NAME,
        **fields,
    )


async def commit(
    pool: asyncpg.Pool[Any],
    connection: aio_pika.abc.AbstractRobustConnection,
    system: System,
    message: WorkflowEvent,
) -> None:
    """What the orchestrator does with an event: the row and the seq, then the broadcast."""
    await pool.execute(
        "INSERT INTO workflow_events (workflow_id, seq, event, body, created_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        message.workflow_id,
        message.seq,
        str(message.event),
        orjson.loads(encode(message)),
        message.created_at,
    )
    await pool.execute(
        "UPDATE workflows SET last_seq = $2 WHERE id = $1", message.workflow_id, message.seq
    )
    channel = await connection.channel()
    try:
        exchange = await channel.get_exchange(Topology(system.namespace).events_exchange)
        await exchange.publish(aio_pika.Message(encode(message)), routing_key="")
    finally:
        await channel.close()


def steps(charge_undo: dict[str, Any]) -> dict[str, Any]:
    started = datetime.now(UTC).isoformat()
    return {
        "reserve": {
            "status": StepStatus.COMPLETED.value,
            "attempts": 1,
            "undo": {"status": StepStatus.PENDING.value, "attempts": 0},
        },
        "charge": {
            "status": StepStatus.COMPLETED.value,
            "attempts": 1,
            "undo": {"attempts": 1, "startedAt": started, **charge_undo},
        },
        "ship": {
            "status": StepStatus.FAILED.value,
            "attempts": 1,
            "error": {"type": "NoCourier", "message": "none free", "retryable": False},
        },
    }


async def test_a_compensation_shows_its_undos_live_and_its_failure(
    page: Page,
    system: System,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """Undoing is a phase of its own: a user must see which completed steps are undone, and
    why an undo failed, without reloading the page."""
    workflow_id = new_workflow_id()
    now = datetime.now(UTC)
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, error, version,
                               created_at, updated_at)
        VALUES ($1, $2, $3, '{}', 'h', $4, $5, 'v7', $6, $6)
        """,
        workflow_id,
        NAME,
        WorkflowStatus.COMPENSATING.value,
        steps({"status": StepStatus.RUNNING.value}),
        {"type": "NoCourier", "message": "none free", "retryable": False, "cause": "failed"},
        now,
    )
    await commit(
        pool,
        amqp_connection,
        system,
        event(workflow_id, 1, EventType.WORKFLOW_COMPENSATING, data={"steps": ["reserve"]}),
    )
    await page.goto(f"/ui/workflows/{workflow_id}")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    panel = page.locator("#panel")
    await expect(panel.locator("[data-workflow-status]")).to_have_text("compensating")
    await expect(panel.locator('.badge.version[data-version="v7"]')).to_be_visible()
    charge = panel.locator('[data-undo="charge"]')
    await expect(charge).to_have_attribute("data-compensation", "compensating")
    await expect(charge).to_contain_text("undo running")
    await expect(panel.locator('[data-undo="reserve"]')).to_contain_text("undo pending")
    await expect(panel.locator('[data-undo="ship"]')).to_have_count(0)

    # The undo of charge fails for good, and so does the compensation: the events refresh the
    # page, which shows the error where the undo is.
    await pool.execute(
        "UPDATE workflows SET status = $2, steps = $3, error = $4 WHERE id = $1",
        workflow_id,
        WorkflowStatus.COMPENSATION_FAILED.value,
        steps({"status": StepStatus.FAILED.value, "error": REFUSED}),
        {**REFUSED, "message": "the undo of step 'charge' failed: the card is closed"},
    )
    await commit(
        pool,
        amqp_connection,
        system,
        event(
            workflow_id,
            2,
            EventType.STEP_COMPENSATION_FAILED,
            step_name="charge",
            data={"attempt": 1, "error": REFUSED},
        ),
    )
    await commit(
        pool,
        amqp_connection,
        system,
        event(workflow_id, 3, EventType.WORKFLOW_COMPENSATION_FAILED, data={"error": REFUSED}),
    )
    await expect(charge).to_have_attribute("data-compensation", "compensation_failed")
    await expect(charge.locator(".error")).to_contain_text("RefundRefused")
    await expect(charge.locator(".error")).to_contain_text("the card is closed")
    await expect(panel.locator("[data-workflow-status]")).to_have_text("compensation_failed")
    await expect(panel.locator('button[data-action="retry"]')).to_have_text("Retry failed undos")
    await expect(page.locator('#events tr[data-event="step.compensation_failed"]')).to_have_count(1)
    # The stream ends with the compensation: the page says the run has finished.
    await expect(page.locator("#live")).to_have_attribute("data-state", "finished")

    await page.goto("/?status=compensation_failed&version=v7")
    row = page.locator(f'tr[data-workflow-id="{workflow_id}"]')
    await expect(row.locator(".pill.s-compensation_failed")).to_have_text("compensation_failed")
    await expect(row.locator('.badge.version[data-version="v7"]')).to_be_visible()
    pill = row.locator(".pill")
    assert await pill.evaluate("el => getComputedStyle(el).backgroundColor") != await page.evaluate(
        """() => { const probe = document.createElement('span'); probe.className = 'pill';
                   document.body.append(probe); return getComputedStyle(probe).backgroundColor; }"""
    )
