"""The dashboard's defences in a real Chromium: markup in a workflow's input stays text under the
Content-Security-Policy, and with keys required a person signs in with a key, follows live
streams on stream tokens, acts with the CSRF token and signs out."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from playwright.async_api import Browser, ConsoleMessage, Dialog, Page, Request, expect

from relayflow.auth import Role, create_key, revoke_key
from relayflow.settings import Settings
from tests.e2e.conftest import System
from tests.integration.gateway_harness import RunningGateway, running_gateway
from tests.integration.test_gateway_auth import AUTH, HASHER, running_workflow
from tests.support import unique_name

pytestmark = pytest.mark.browser

SCRIPT = "<script>alert(1)</script>"
IMAGE = "<img src=x onerror=alert(1)>"


class Watch:
    """What a page did that it must not: open a dialog, break the CSP, throw."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.violations: list[str] = []
        self.errors: list[str] = []
        self.streams: list[str] = []
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("request", self._request)

    async def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        await dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            self.violations.append(message.text)

    def _request(self, request: Request) -> None:
        if "/events" in request.url and request.resource_type == "eventsource":
            self.streams.append(request.url)

    def assert_clean(self) -> None:
        assert not self.dialogs, self.dialogs
        assert not self.violations, self.violations
        assert not self.errors, self.errors


async def test_markup_in_an_input_renders_as_text(page: Page, system: System) -> None:
    """A field holding `<script>` or an `onerror=` attribute shows escaped on the workflow page
    and the home page; nothing runs (no dialog), and the dashboard's own scripts and styles
    break no rule of its CSP."""
    watch = Watch(page)
    body = {"name": SCRIPT, "email": "ada@example.com", "message": IMAGE}
    async with httpx.AsyncClient(base_url=system.base_url, timeout=10) as client:
        response = await client.post("/submit", json=body)
    assert response.status_code == 202, response.text
    workflow_id = response.json()["workflowId"]

    await page.goto(f"/ui/workflows/{workflow_id}")
    shown = page.locator('details[data-key="wf:in"] pre')
    await expect(shown).to_contain_text(SCRIPT)
    await expect(shown).to_contain_text(IMAGE)
    # The live page takes its events and refetches its panel: both paths render the input.
    await expect(page.locator("#events tr").first).to_be_visible()
    await expect(page.locator('[data-workflow-status=""]')).to_have_text(
        "completed", timeout=60_000
    )
    await expect(shown).to_contain_text(SCRIPT)
    await expect(page.locator("main img")).to_have_count(0)
    await expect(page.locator("main script")).to_have_count(0)

    await page.goto("/")
    await expect(page.locator("#list-live")).to_have_attribute("data-state", "live")
    form = page.locator("#contact")
    await form.locator("#name").fill(SCRIPT)
    await form.locator("#email").fill("ada@example.com")
    await form.locator("#message").fill(IMAGE)
    await page.locator("#send").click()
    await expect(page.locator("#progress-panel [data-workflow-status]")).to_have_text(
        "completed", timeout=60_000
    )
    await expect(page.locator("main img")).to_have_count(0)
    watch.assert_clean()


@pytest.fixture
async def required_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    """A gateway that requires keys, in this process (no orchestrator: a stored run is enough
    to follow, and a cancel only needs the broker's confirm)."""
    async with running_gateway(settings, AUTH, auth="required") as gateway:
        yield gateway


async def test_sign_in_follow_act_and_sign_out(
    browser: Browser, required_gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """A link to a workflow lands on sign-in and comes back; its events and the list stream on
    stream tokens; Cancel goes through with the CSRF token; signing out ends it."""
    async with pool.acquire() as conn:
        created = await create_key(conn, HASHER, tenant=unique_name("t-"), role=Role.OPERATOR)
    context = await browser.new_context(base_url=required_gateway.base_url)
    context.set_default_timeout(30_000)
    try:
        page = await context.new_page()
        watch = Watch(page)
        workflow_id = await running_workflow(pool, created.record.tenant)
        await page.goto(f"/ui/workflows/{workflow_id}")
        await expect(page).to_have_url(re.compile(r"/signin\?next="))
        await page.locator("#key").fill(created.key)
        await page.locator("#signin-send").click()
        await expect(page).to_have_url(re.compile(rf"/ui/workflows/{workflow_id}$"))
        await expect(page.locator("#live")).to_have_attribute("data-state", "live")
        assert watch.streams
        assert all("token=" in url for url in watch.streams), watch.streams
        cookie = next(c for c in await context.cookies() if c["name"] == "relayflow_session")
        assert cookie.get("httpOnly") is True
        assert cookie.get("sameSite") == "Strict"

        await page.get_by_role("button", name="Cancel").click()
        await expect(page.locator("#toast")).to_have_text("Cancel requested…")

        await page.goto("/")
        await expect(page.locator("#list-live")).to_have_attribute("data-state", "live")
        assert any("/events?token=" in url for url in watch.streams), watch.streams

        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(re.compile(r"/signin$"))
        await page.goto("/")
        await expect(page).to_have_url(re.compile(r"/signin\?next=%2F$"))
        watch.assert_clean()
    finally:
        await context.close()
        async with pool.acquire() as conn:
            await revoke_key(conn, created.record.id)
