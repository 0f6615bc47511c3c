"""A run stranded on a version no orchestrator loads any more, in a real browser: beside its
version badge a warning, and on its page what to do about it; a run of a version the system's
orchestrator loads shows neither."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest
from playwright.async_api import Page, expect

from relayflow.contracts import new_workflow_id
from relayflow.model import WorkflowStatus
from relayflow.workflow import WorkflowRegistry
from tests.e2e.conftest import System
from tests.support import wait_for

pytestmark = pytest.mark.browser

NAME = "formSubmission"
INPUT = {"name": "Ada", "email": "ada@example.com", "message": "hi"}


async def insert_run(pool: asyncpg.Pool[Any], workflow_id: str, version: str) -> None:
    """A run waiting in its first step, as the orchestrator left it (nothing will move it)."""
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, version,
                               created_at, updated_at)
        VALUES ($1, $2, $3, $4, 'h', '{}', $5, $6, $6)
        """,
        workflow_id,
        NAME,
        WorkflowStatus.RUNNING.value,
        INPUT,
        version,
        datetime.now(UTC),
    )


async def test_a_run_of_a_version_no_orchestrator_loads_is_flagged_with_what_to_do(
    page: Page, system: System, pool: asyncpg.Pool[Any], registry: WorkflowRegistry
) -> None:
    """After a deploy that dropped a version its runs are stuck: an operator browsing the
    dashboard must spot them and read how to get them moving, without reading logs."""
    current = registry.versions(NAME)[-1]

    async def announced() -> bool:
        return bool(
            await pool.fetchval(
                "SELECT count(*) FROM loaded_definitions WHERE name = $1 AND version = $2",
                NAME,
                current,
            )
        )

    await wait_for(announced, what="the system's orchestrator announcing what it loads")
    stranded, served = new_workflow_id(), new_workflow_id()
    await insert_run(pool, stranded, "retired")
    await insert_run(pool, served, current)
    try:
        await see_the_warning(page, stranded, served, current)
    finally:
        await pool.execute("DELETE FROM workflows WHERE id = ANY($1::text[])", [stranded, served])


async def see_the_warning(page: Page, stranded: str, served: str, current: str) -> None:
    await page.goto(f"/ui/workflows/{stranded}")
    panel = page.locator("#panel")
    await expect(panel.locator('.badge.version[data-version="retired"]')).to_be_visible()
    warning = panel.locator(".badge.unloaded")
    await expect(warning).to_have_text("not loaded")
    await expect(warning).to_have_attribute("title", re.compile("^No running orchestrator loads"))
    note = panel.locator('.notice.unloaded[role="alert"]')
    await expect(note).to_contain_text("No running orchestrator loads version retired")
    await expect(note).to_contain_text("Deploy that version beside the new one")
    await expect(note).to_contain_text("redrive the dead-lettered inputs")

    await page.goto(f"/ui/workflows/{served}")
    await expect(page.locator(f'#panel .badge.version[data-version="{current}"]')).to_be_visible()
    await expect(page.locator("#panel .badge.unloaded")).to_have_count(0)
    await expect(page.locator("#panel .notice.unloaded")).to_have_count(0)

    await page.goto(f"/?workflow={NAME}&status=running")
    await expect(page.locator(f'tr[data-workflow-id="{stranded}"] .badge.unloaded')).to_be_visible()
    await expect(page.locator(f'tr[data-workflow-id="{served}"] .badge.unloaded')).to_have_count(0)
