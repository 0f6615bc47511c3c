"""A map step on the workflow page, in a real browser: its progress bar follows `step.progress`
events in place, and an item event updates its row, without refetching the workflow."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aio_pika
import asyncpg
import orjson
import pytest
from playwright.async_api import Page, Request, expect

from relayflow.contracts import EventType, WorkflowEvent, encode, new_workflow_id
from relayflow.model import StepStatus
from relayflow.topology import Topology
from tests.e2e.conftest import System

pytestmark = pytest.mark.browser

TOTAL = 10_000
# No definition of this name is registered: the page shows the map its stored state describes.
NAME = "storedMap"


def event(workflow_id: str, seq: int, kind: EventType, **fields: Any) -> WorkflowEvent:
    return WorkflowEvent(
        message_id=f"evt:{workflow_id}:{seq}",
        workflow_id=workflow_id,
        seq=seq,
        event=kind,
        workflow_name=NAME,
        step_name="rows",
        **fields,
    )


async def record(pool: asyncpg.Pool[Any], message: WorkflowEvent) -> None:
    """What the orchestrator commits before it publishes: the event row and the workflow's seq."""
    body = orjson.loads(encode(message))
    await pool.execute(
        "INSERT INTO workflow_events (workflow_id, seq, event, body, created_at) "
        "VALUES ($1, $2, $3, $4, $5)",
        message.workflow_id,
        message.seq,
        str(message.event),
        body,
        message.created_at,
    )
    await pool.execute(
        "UPDATE workflows SET last_seq = $2 WHERE id = $1", message.workflow_id, message.seq
    )


async def publish(
    connection: aio_pika.abc.AbstractRobustConnection, system: System, message: WorkflowEvent
) -> None:
    channel = await connection.channel()
    try:
        exchange = await channel.get_exchange(Topology(system.namespace).events_exchange)
        await exchange.publish(aio_pika.Message(encode(message)), routing_key="")
    finally:
        await channel.close()


async def test_a_map_steps_progress_bar_follows_its_events_in_place(
    page: Page,
    system: System,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """A 10,000-item map sends about a hundred progress events: each must move the bar where it
    is, not refetch the workflow, and the page must show only the first items."""
    workflow_id = new_workflow_id()
    now = datetime.now(UTC)
    progress = {"total": TOTAL, "completed": 100, "failed": 0, "running": 10}
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at, updated_at)
        VALUES ($1, $2, 'running', '{}', 'h', $3, $4, $4)
        """,
        workflow_id,
        NAME,
        {"rows": {"status": StepStatus.RUNNING.value, "attempts": 1, "progress": progress}},
        now,
    )
    await pool.execute(
        """
        INSERT INTO step_items (workflow_id, step_name, key, item_index, status, attempts)
        SELECT $1, 'rows', i::text, i,
               CASE WHEN i < 100 THEN 'completed' WHEN i < 110 THEN 'running' ELSE 'pending' END,
               CASE WHEN i < 110 THEN 1 ELSE 0 END
        FROM generate_series(0, $2 - 1) AS i
        """,
        workflow_id,
        TOTAL,
    )
    await record(pool, event(workflow_id, 1, EventType.STEP_STARTED, data={"items": TOTAL}))

    panel_fetches: list[str] = []

    def on_request(request: Request) -> None:
        if request.url.endswith("/panel"):
            panel_fetches.append(request.url)

    page.on("request", on_request)
    # The replayed step.started refreshes the panel once, as any step event does.
    async with page.expect_response(lambda response: response.url.endswith("/panel")):
        await page.goto(f"/ui/workflows/{workflow_id}")
    await expect(page.locator("#live")).to_have_attribute("data-state", "live")
    await expect(page.locator("#events tr")).to_have_count(1)
    bar = page.locator('[data-map-step="rows"]')
    await expect(bar.locator('[data-count="completed"]')).to_have_text("100")
    await expect(bar.locator('[data-count="total"]')).to_have_text(str(TOTAL))
    await expect(page.locator('[data-step="rows"] tr[data-item-key]')).to_have_count(20)
    before = len(panel_fetches)

    moved = event(
        workflow_id,
        2,
        EventType.STEP_PROGRESS,
        data={"total": TOTAL, "completed": 5000, "failed": 1, "running": 10},
    )
    failed = event(
        workflow_id,
        3,
        EventType.STEP_ITEM_FAILED,
        step_key="5",
        data={"attempt": 1, "error": {"type": "BadRow", "message": "no", "retryable": False}},
    )
    # What the orchestrator commits with each event, so that any refresh would agree.
    progress = moved.data
    await pool.execute(
        "UPDATE workflows SET steps = jsonb_set(steps, '{rows,progress}', $2) WHERE id = $1",
        workflow_id,
        progress,
    )
    await record(pool, moved)
    await publish(amqp_connection, system, moved)
    await pool.execute(
        "UPDATE step_items SET status = $2, error = $3 WHERE workflow_id = $1 AND key = '5'",
        workflow_id,
        StepStatus.FAILED.value,
        failed.data["error"],
    )
    await record(pool, failed)
    await publish(amqp_connection, system, failed)

    await expect(page.locator("#events tr")).to_have_count(3)
    await expect(bar.locator('[data-count="completed"]')).to_have_text("5000")
    await expect(bar.locator('[data-count="failed"]')).to_have_text("1")
    await expect(bar.locator('[role="progressbar"]')).to_have_attribute("aria-valuenow", "5001")
    width = await bar.locator('[data-part="completed"]').evaluate("el => el.style.width")
    assert width == "50%"
    row = page.locator('[data-step="rows"] tr[data-item-key="5"]')
    await expect(row).to_have_attribute("data-status", StepStatus.FAILED.value)
    await expect(row.locator(".details")).to_have_text("BadRow: no")
    assert panel_fetches[before:] == [], "an item event refetched the workflow"
