"""A workflow's signal form in a real browser, against the real services: the seed `approval`
waits for a `decision`, and a person approves it from the workflow page."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from relayflow.contracts import workflow_id_for_key
from tests.browser.conftest import screenshot
from tests.e2e.conftest import System

pytestmark = pytest.mark.browser


async def mark_page(page: Page) -> None:
    """A value that survives only if the page is never reloaded."""
    await page.evaluate("window.__notReloaded = true")


async def assert_not_reloaded(page: Page) -> None:
    assert await page.evaluate("window.__notReloaded === true")


async def start_approval(system: System, key: str) -> str:
    body = {"requestId": f"r-{uuid.uuid4()}", "amount": 120}
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        response = await client.post(
            "/workflows/approval", json=body, headers={"Idempotency-Key": key}
        )
    assert response.status_code == 202, response.text
    workflow_id: str = response.json()["workflowId"]
    return workflow_id


async def test_approve_from_the_workflow_page(page: Page, system: System, tmp_path: Path) -> None:
    """The form the `decision` model gives (an Approve/Reject pair and a `by` input) posts the
    signal: a missing field is shown next to it without a reload, an answer shows in the
    history as `signal.received` with who sent what, the waiting step takes it and the run
    completes — and the form goes away with it. The page is opened before the run exists (a
    link followed right after the start), which knows no definition yet: the card must come
    once the run shows, not only after a reload."""
    key = f"browser-{uuid.uuid4()}"
    workflow_id = workflow_id_for_key("approval", key)
    await page.goto(f"/ui/workflows/{workflow_id}")
    await expect(page.locator("[data-workflow-status]")).to_have_text("accepted")
    await mark_page(page)
    assert await start_approval(system, key) == workflow_id
    signals = page.locator("#signals")
    await expect(signals).to_be_visible()
    form = signals.locator('form[data-signal="decision"]')
    approve = form.get_by_role("button", name="Approve")
    await expect(form.get_by_role("button", name="Reject")).to_be_visible()
    await expect(page.locator('[data-step-status="decision"]')).to_have_text("waiting")

    await approve.click()
    await expect(form.locator('.field-error[data-for="by"]')).to_have_text("Field required")
    await expect(form.locator("[data-form-error]")).to_contain_text("invalid payload")

    await page.locator("#signal-sender").fill("Grace (ops)")
    await form.get_by_label("By").fill("grace")
    await approve.click()
    await expect(page.locator("#toast")).to_have_text("Signal decision sent.")
    received = page.locator('#events tr[data-event="signal.received"]')
    await expect(received).to_have_count(1)
    await expect(received.locator(".details")).to_contain_text("decision from Grace (ops)")
    await expect(received.locator(".details")).to_contain_text('"approved":true')
    await expect(received.locator(".details")).to_contain_text('"by":"grace"')
    await expect(received.locator("time")).not_to_be_empty()
    await screenshot(page, "signal-form.png", tmp_path)

    # The decision step took it; the run goes on (a short durable sleep) to its end.
    await expect(page.locator('[data-step-status="decision"]')).to_have_text("completed")
    await expect(page.locator('#events tr[data-event="step.sleeping"]')).to_have_count(1)
    await expect(page.locator("[data-workflow-status]")).to_have_text("completed", timeout=60_000)
    await expect(signals).to_be_hidden()
    await assert_not_reloaded(page)
