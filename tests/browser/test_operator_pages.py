"""The operator's pages in a real Chromium: the timeline of a completed workflow, the overview,
dead letters listed and re-driven through the page (signed in, with the CSRF token), and a dead
letter whose body holds markup shown as inert text under the CSP."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import pytest
from playwright.async_api import Browser, Page, expect

from relayflow.auth import Role, create_key, revoke_key
from relayflow.contracts import DEFAULT_TENANT
from relayflow.settings import Settings
from relayflow.topology import Topology
from tests.browser.test_dashboard import STEPS, form, submit
from tests.browser.test_dashboard_security import IMAGE, SCRIPT, Watch
from tests.e2e.conftest import System
from tests.integration.gateway_harness import RunningGateway, running_gateway
from tests.integration.test_gateway_auth import AUTH, HASHER
from tests.integration.test_gateway_dead_letters import dead_lettered, until_listed

pytestmark = pytest.mark.browser


async def test_a_completed_workflow_shows_its_steps_on_a_timeline(
    page: Page, system: System
) -> None:
    """One row per step, each with the bar of its attempt, on the workflow's page."""
    watch = Watch(page)
    workflow_id = await submit(system, form())
    await page.goto(f"/ui/workflows/{workflow_id}")
    await expect(page.locator('[data-workflow-status=""]')).to_have_text(
        "completed", timeout=60_000
    )
    rows = page.locator("[data-timeline-step]")
    await expect(rows).to_have_count(len(STEPS))
    names = await rows.evaluate_all("rows => rows.map(row => row.dataset.timelineStep)")
    assert names == STEPS
    for step in STEPS:
        bar = page.locator(f'[data-timeline-step="{step}"] .tl-bar[data-outcome="completed"]')
        await expect(bar).to_have_count(1)
        box = await bar.bounding_box()
        assert box is not None, step
        assert box["width"] >= 2, step

    await page.get_by_role("link", name="Overview").click()
    await expect(page).to_have_url(re.compile(r"/ui/overview$"))
    await expect(page.locator('[data-status-count="completed"] .count')).not_to_have_text("0")
    await expect(page.locator(f'[data-queue="{system.namespace}.orchestrator"]')).to_be_visible()
    watch.assert_clean()


@pytest.fixture
async def open_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    """A gateway in this process and nothing else: a re-driven letter stays on its queue."""
    async with running_gateway(settings) as gateway:
        yield gateway


async def test_markup_in_a_dead_letter_stays_text(
    browser: Browser,
    open_gateway: RunningGateway,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    """A dead letter's body and reason are anyone's bytes: escaped on both pages, nothing runs,
    the CSP is never broken."""
    body = f'{{"name": "{SCRIPT}", "message": "{IMAGE}"}}'.encode()
    await dead_lettered(amqp_connection, topology, "xss-1", body=body, reason=IMAGE)
    await until_listed(open_gateway, 1)
    context = await browser.new_context(base_url=open_gateway.base_url)
    context.set_default_timeout(30_000)
    try:
        page = await context.new_page()
        watch = Watch(page)
        await page.goto("/ui/dead-letters")
        await expect(page.locator("[data-auth=open]")).to_be_visible()
        row = page.locator('#rows tr[data-message-id="xss-1"]')
        await expect(row.locator(".reason")).to_have_text(IMAGE)
        await row.get_by_role("link").click()
        await expect(page.locator("#dl-body")).to_contain_text(SCRIPT)
        await expect(page.locator("#dl-body")).to_contain_text(IMAGE)
        await expect(page.locator("[data-reason]")).to_have_text(IMAGE)
        await expect(page.locator("main img")).to_have_count(0)
        await expect(page.locator("main script")).to_have_count(0)
        watch.assert_clean()
    finally:
        await context.close()


@pytest.fixture
async def required_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, AUTH, auth="required") as gateway:
        yield gateway


async def test_an_operator_signs_in_and_redrives_through_the_page(
    browser: Browser,
    required_gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    """The page's POSTs carry the session's CSRF token: one re-drive, then all; each row goes
    as the broker confirms, and the queue is empty after."""
    async with pool.acquire() as conn:
        created = await create_key(conn, HASHER, tenant=DEFAULT_TENANT, role=Role.OPERATOR)
    for message_id in ("ui-1", "ui-2", "ui-3"):
        await dead_lettered(amqp_connection, topology, message_id)
    context = await browser.new_context(base_url=required_gateway.base_url)
    context.set_default_timeout(30_000)
    try:
        page = await context.new_page()
        watch = Watch(page)
        await page.goto("/ui/dead-letters")
        await expect(page).to_have_url(re.compile(r"/signin\?next="))
        await page.locator("#key").fill(created.key)
        await page.locator("#signin-send").click()
        await expect(page).to_have_url(re.compile(r"/ui/dead-letters$"))
        await expect(page.locator("#rows tr[data-message-id]")).to_have_count(3)
        await expect(page.locator("[data-auth=open]")).to_have_count(0)

        await page.locator('button[data-redrive="ui-2"]').click()
        await expect(page.locator("#toast")).to_contain_text("Re-drove ui-2")
        await expect(page.locator('#rows tr[data-message-id="ui-2"]')).to_have_count(0)
        await page.reload()
        ids = await page.locator("#rows tr[data-message-id]").evaluate_all(
            "rows => rows.map(row => row.dataset.messageId)"
        )
        assert ids == ["ui-1", "ui-3"]

        await page.locator("#redrive-all-box summary").click()
        await page.locator("button[data-redrive-all]").click()
        await expect(page.locator("#toast")).to_contain_text("Re-drove 2 dead letters")
        await page.reload()
        await expect(page.locator("#rows tr.empty")).to_be_visible()
        watch.assert_clean()
    finally:
        await context.close()
        async with pool.acquire() as conn:
            await revoke_key(conn, created.record.id)
