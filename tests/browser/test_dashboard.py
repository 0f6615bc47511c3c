"""The dashboard in a real browser, against the real services: what a person sees and does."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Page, expect

from tests.browser.conftest import screenshot
from tests.e2e.conftest import System
from tests.support import wait_for

pytestmark = pytest.mark.browser

STEPS = ["validate", "persist", "publishToMQ", "awaitResponse", "finalize"]


def form(email: str = "ada@example.com") -> dict[str, str]:
    return {"name": "Ada Lovelace", "email": email, "message": f"hello {uuid.uuid4()}"}


async def submit(system: System, body: dict[str, str]) -> str:
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        response = await client.post("/submit", json=body)
    assert response.status_code == 202, response.text
    workflow_id: str = response.json()["workflowId"]
    return workflow_id


async def stored_summary(system: System, workflow_id: str) -> dict[str, Any] | None:
    """The workflow's row in the list; None until the orchestrator has stored its start (the
    202 comes first)."""
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        response = await client.get("/workflows", params={"id": workflow_id})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert len(items) <= 1, items
    return dict(items[0]) if items else None


async def workflow_summary(system: System, workflow_id: str) -> dict[str, Any]:
    summary = await stored_summary(system, workflow_id)
    assert summary is not None, f"{workflow_id} is not stored"
    return summary


async def mark_page(page: Page) -> None:
    """A value that survives only if the page is never reloaded."""
    await page.evaluate("window.__notReloaded = true")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__notReloaded === true")


async def event_seqs(page: Page) -> list[int]:
    seqs: list[str] = await page.locator("#events tr").evaluate_all(
        "rows => rows.map(row => row.dataset.seq)"
    )
    return [int(seq) for seq in seqs]


async def assert_each_event_once(page: Page, system: System, workflow_id: str) -> list[int]:
    """The rendered history is exactly seq 1..lastSeq: nothing lost, nothing repeated."""
    last_seq = (await workflow_summary(system, workflow_id))["lastSeq"]
    await expect(page.locator("#events tr")).to_have_count(last_seq)
    seqs = await event_seqs(page)
    assert seqs == list(range(1, last_seq + 1))
    return seqs


async def test_the_list_updates_live_and_filters(page: Page, system: System) -> None:
    """The list is a live view: workflows started elsewhere appear and progress without a
    reload, and a status filter keeps to its status while updating."""
    await page.goto("/")
    await expect(page.locator("#list-live")).to_have_attribute("data-state", "live")
    await mark_page(page)
    workflow_id = await submit(system, form())
    row = page.locator(f'#rows tr[data-workflow-id="{workflow_id}"]')
    await expect(row).to_be_visible()
    await expect(row.locator(".pill")).to_have_text("completed")
    await assert_not_reloaded(page)

    await page.select_option('#filters select[name="status"]', "failed")
    await page.wait_for_url("**/?*status=failed*")
    await expect(page.locator("#list-live")).to_have_attribute("data-state", "live")
    await mark_page(page)
    failing = await submit(system, form("bob@mailinator.com"))
    await expect(page.locator(f'#rows tr[data-workflow-id="{failing}"] .pill')).to_have_text(
        "failed"
    )
    statuses = await page.locator("#rows tr").evaluate_all(
        "rows => rows.map(r => r.dataset.status)"
    )
    assert set(statuses) == {"failed"}
    await assert_not_reloaded(page)

    await page.fill('#filters input[name="id"]', workflow_id[:12])
    await page.select_option('#filters select[name="status"]', "")
    await page.wait_for_url("**/?*id=*")
    await expect(page.locator(f'#rows tr[data-workflow-id="{workflow_id}"]')).to_be_visible()


async def test_a_page_that_loses_its_gateway_resumes_without_loss_or_repeat(
    page: Page, system: System, tmp_path: Path
) -> None:
    """The SSE promise in a browser: the gateway is restarted while a workflow is mid-way, the
    page reconnects with Last-Event-ID and ends with every event exactly once, in order."""
    workflow_id = await submit(system, form())
    await page.goto(f"/ui/workflows/{workflow_id}")
    await mark_page(page)
    await expect(page.locator('[data-step-status="awaitResponse"]')).to_have_text("waiting")
    seen_before = await event_seqs(page)
    assert seen_before
    assert seen_before == list(range(1, len(seen_before) + 1))

    await system.terminate("gateway")
    await expect(page.locator("#live")).to_have_attribute("data-state", "reconnecting")
    await system.start("gateway")
    async with httpx.AsyncClient(timeout=10) as client:
        await system.wait_ready(client)

    await expect(page.locator("#panel [data-workflow-status]")).to_have_text("completed")
    await expect(page.locator("#live")).to_have_attribute("data-state", "finished")
    seqs = await assert_each_event_once(page, system, workflow_id)
    assert len(seqs) > len(seen_before)
    await assert_not_reloaded(page)
    await screenshot(page, "workflow.png", tmp_path)


async def test_a_page_opened_before_the_workflow_starts_follows_it(
    page: Page, system: System
) -> None:
    """A link followed right after the 202 may reach the gateway before the orchestrator has
    started the workflow: the page must wait for it and then follow it live, not give up."""
    await system.terminate("orchestrator")
    try:
        workflow_id = await submit(system, form())
        await page.goto(f"/ui/workflows/{workflow_id}")
        await mark_page(page)
        await expect(page.locator("#panel [data-workflow-status]")).to_have_text("accepted")
    finally:
        await system.start("orchestrator")
    await expect(page.locator("#panel [data-workflow-status]")).to_have_text("completed")
    await assert_each_event_once(page, system, workflow_id)
    await assert_not_reloaded(page)


async def test_cancel_a_running_workflow_from_its_page(page: Page, system: System) -> None:
    """Cancel is offered only while a workflow runs; pressing it ends the workflow as
    `cancelled`, visibly, and offers a retry instead."""
    workflow_id = await submit(system, form())
    await page.goto(f"/ui/workflows/{workflow_id}")
    await expect(page.locator('[data-step-status="awaitResponse"]')).to_have_text("waiting")
    await expect(page.locator('button[data-action="retry"]')).to_have_count(0)
    await page.click('button[data-action="cancel"]')

    await expect(page.locator("#panel [data-workflow-status]")).to_have_text("cancelled")
    await expect(page.locator('#events tr[data-event="workflow.cancelled"]')).to_have_count(1)
    await expect(page.locator('[data-step-status="awaitResponse"]')).to_have_text("cancelled")
    await expect(page.locator('[data-step-status="finalize"]')).to_have_text("cancelled")
    await expect(page.locator('button[data-action="cancel"]')).to_have_count(0)
    await expect(page.locator('button[data-action="retry"]')).to_be_visible()
    await assert_each_event_once(page, system, workflow_id)


async def test_retry_a_failed_workflow_from_its_page(page: Page, system: System) -> None:
    """Retry runs a failed workflow again from its failed step, and the page follows the new run
    live. (The address is refused on every attempt, so the run fails again, which also shows
    that the page keeps offering the action.)"""
    workflow_id = await submit(system, form("bob@mailinator.com"))

    async def failed() -> bool:
        summary = await stored_summary(system, workflow_id)
        return summary is not None and summary["status"] == "failed"

    await wait_for(failed, timeout=30)
    await page.goto(f"/ui/workflows/{workflow_id}")
    await expect(page.locator("#panel [data-workflow-status]")).to_have_text("failed")
    await expect(page.locator("#live")).to_have_attribute("data-state", "finished")
    await expect(page.locator('[data-step-status="validate"]')).to_have_text("failed")
    await mark_page(page)
    await page.click('button[data-action="retry"]')

    await expect(page.locator('#events tr[data-event="workflow.retried"]')).to_have_count(1)
    await expect(page.locator('#events tr[data-event="workflow.failed"]')).to_have_count(2)
    await expect(page.locator("#panel [data-workflow-status]")).to_have_text("failed")
    await expect(page.locator('button[data-action="retry"]')).to_be_visible()
    await expect(page.locator("#panel .step[data-step=validate]")).to_contain_text("attempt 2")
    await assert_each_event_once(page, system, workflow_id)
    await assert_not_reloaded(page)


# Last of the module, so that the list in the README's screenshot has workflows of every kind.
async def test_submit_the_form_and_watch_it_complete(
    page: Page, system: System, tmp_path: Path
) -> None:
    """The seed's promise: a person submits the form and sees the workflow reach `completed`,
    step by step, without reloading; the live list shows it too."""
    await page.goto("/")
    await expect(page.locator("#list-live")).to_have_attribute("data-state", "live")
    await mark_page(page)
    await page.fill("#name", "Ada Lovelace")
    await page.fill("#email", "ada@example.com")
    await page.fill("#message", "Hello from the dashboard")
    await page.click("#send")

    progress = page.locator("#progress")
    await expect(progress).to_be_visible()
    status = progress.locator("[data-workflow-status]")
    await expect(status).to_have_text("running")
    await expect(status).to_have_text("completed")
    for step in STEPS:
        await expect(progress.locator(f'[data-step-status="{step}"]')).to_have_text("completed")
    workflow_id = (await progress.locator("h1").inner_text()).strip()
    row = page.locator(f'#rows tr[data-workflow-id="{workflow_id}"]')
    await expect(row.locator(".pill")).to_have_text("completed")
    await assert_not_reloaded(page)
    await screenshot(page, "dashboard.png", tmp_path)

    await page.click("#open-workflow")
    await expect(page.locator("#panel [data-workflow-status]")).to_have_text("completed")
    await assert_each_event_once(page, system, workflow_id)


async def test_the_dashboard_fits_a_phone(page: Page, tmp_path: Path) -> None:
    """On a phone the pages stack into one column: nothing needs sideways scrolling, and the
    form and the list are both there."""
    await page.set_viewport_size({"width": 390, "height": 844})
    await page.goto("/")
    await expect(page.locator("#contact")).to_be_visible()
    await expect(page.locator("#rows tr[data-workflow-id]").first).to_be_visible()
    await screenshot(page, "dashboard-phone.png", tmp_path)
    workflow_page = await page.locator("#rows a").first.get_attribute("href")
    assert workflow_page is not None
    for url in ("/", workflow_page):
        await page.goto(url)
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{url} scrolls sideways by {overflow}px on a phone"
