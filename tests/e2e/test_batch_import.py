"""`batchImport` end to end, as the README's run command serves it: a map over the lines, a
summary that reads the map's output, and a child `notification` workflow when asked; and a map
whose step service is SIGKILLed midway, which still writes each line's row exactly once."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from relayflow.model import StepStatus, WorkflowStatus
from tests.e2e.conftest import System
from tests.e2e.test_system import wait_completed
from tests.support import wait_for

pytestmark = pytest.mark.e2e


def lines(count: int, tag: str) -> list[dict[str, Any]]:
    return [{"sku": f"{tag}-{index:05d}", "qty": index % 7} for index in range(count)]


async def start(client: httpx.AsyncClient, system: System, body: dict[str, Any]) -> str:
    response = await client.post(f"{system.base_url}/workflows/batchImport", json=body)
    assert response.status_code == 202, response.text
    workflow_id: str = response.json()["workflowId"]
    return workflow_id


async def test_a_batch_imports_each_line_once_summarises_and_notifies(
    system: System, pool: asyncpg.Pool[Any]
) -> None:
    items = lines(300, "n")
    async with httpx.AsyncClient(timeout=10) as client:
        workflow_id = await start(client, system, {"items": items, "notify": True})
        state = await wait_completed(client, system.base_url, workflow_id, timeout=120)
    assert state["status"] == WorkflowStatus.COMPLETED, state
    assert state["output"] == {"imported": 300, "units": sum(line["qty"] for line in items)}
    rows = await pool.fetch(
        "SELECT sku, qty, item_index FROM imported_items WHERE workflow_id = $1 "
        "ORDER BY item_index",
        workflow_id,
    )
    assert [(r["sku"], r["qty"], r["item_index"]) for r in rows] == [
        (line["sku"], line["qty"], index) for index, line in enumerate(items)
    ]
    steps = await pool.fetchval("SELECT steps FROM workflows WHERE id = $1", workflow_id)
    assert steps["importItem"]["progress"] == {
        "total": 300,
        "completed": 300,
        "failed": 0,
        "running": 0,
    }
    child_id = steps["notifyOwner"]["childWorkflowId"]
    child = await pool.fetchrow("SELECT status, output FROM workflows WHERE id = $1", child_id)
    assert child is not None
    assert child["status"] == WorkflowStatus.COMPLETED
    message = await pool.fetchval(
        "SELECT message FROM import_notifications WHERE workflow_id = $1", child_id
    )
    assert message == child["output"]["message"]


async def test_without_notify_the_child_step_is_skipped(
    system: System, pool: asyncpg.Pool[Any]
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        workflow_id = await start(client, system, {"items": lines(3, "s")})
        state = await wait_completed(client, system.base_url, workflow_id, timeout=60)
    assert state["status"] == WorkflowStatus.COMPLETED, state
    steps = await pool.fetchval("SELECT steps FROM workflows WHERE id = $1", workflow_id)
    assert steps["notifyOwner"]["status"] == StepStatus.SKIPPED


async def test_bad_batches_are_refused_naming_the_field(system: System) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for body, field in [
            ({"items": []}, "items"),
            ({"items": [{"sku": "a", "qty": 1}, {"sku": "a", "qty": 2}]}, "repeats sku"),
            ({"items": [{"sku": "a", "qty": -1}]}, "qty"),
        ]:
            response = await client.post(f"{system.base_url}/workflows/batchImport", json=body)
            assert response.status_code == 422, response.text
            assert field in response.text


async def test_step_service_killed_mid_map_writes_each_row_exactly_once(
    system: System, pool: asyncpg.Pool[Any]
) -> None:
    items = lines(1000, "k")
    async with httpx.AsyncClient(timeout=10) as client:
        workflow_id = await start(client, system, {"items": items})

        async def midway() -> bool:
            done = await pool.fetchval(
                "SELECT count(*) FROM imported_items WHERE workflow_id = $1", workflow_id
            )
            return bool(50 <= done < 900)

        await wait_for(midway, timeout=60, interval=0.01, what="the map to be midway")
        await system.kill("steps")
        await system.start("steps")
        state = await wait_completed(client, system.base_url, workflow_id, timeout=180)
    assert state["status"] == WorkflowStatus.COMPLETED, state
    assert state["output"]["imported"] == 1000
    count = await pool.fetchval(
        "SELECT count(DISTINCT sku) FROM imported_items WHERE workflow_id = $1", workflow_id
    )
    assert count == 1000
    items_done = await pool.fetchval(
        "SELECT count(*) FROM step_items WHERE workflow_id = $1 AND status = 'completed'",
        workflow_id,
    )
    assert items_done == 1000
