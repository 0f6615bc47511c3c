"""Browser tests: the real services as processes (the `System` of tests/e2e) on this run's
database and their own namespace, and Debian's Chromium driven by Playwright.

Chromium is the system one (`apt-get install chromium`; scripts/test and .ci/run install it), never
a browser download: Playwright only brings its driver. `RELAYFLOW_CHROMIUM` points elsewhere.
Set `RELAYFLOW_SCREENSHOTS=docs` to refresh the README's screenshot while the tests run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from relayflow.workflow import WorkflowRegistry
from tests.e2e.conftest import ROOT, System, running_system

CHROMIUM = Path(os.environ.get("RELAYFLOW_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The external system answers after this long, so that a workflow spends a while in its
# `awaitResponse` step: long enough to cancel it, or to restart the gateway under a live page.
REPLY_DELAY = 3.0
# What an `expect(...)` waits for at most (Playwright's own default is 5 s): conditions such as
# "completed" after a service restart take longer than that on a loaded 2-core CI machine. Each
# expectation still returns as soon as it holds; this only bounds how long a failing one waits.
expect.set_options(timeout=30_000)
SCREENSHOTS = os.environ.get("RELAYFLOW_SCREENSHOTS")


def _chromium_missing() -> bool:
    return not CHROMIUM.is_file()


def _screenshot_folder() -> Path | None:
    if not SCREENSHOTS:
        return None
    folder = ROOT / SCREENSHOTS
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
async def system(
    amqp_url: str,
    database_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[System]:
    async with running_system(
        prefix="b",
        amqp_url=amqp_url,
        database_url=database_url,
        amqp_connection=amqp_connection,
        registry=registry,
        log_dir=tmp_path_factory.mktemp("logs"),
        env={"RELAYFLOW_EXTERNAL_REPLY_DELAY": str(REPLY_DELAY)},
    ) as system:
        yield system


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    if _chromium_missing():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: install Debian's package (`apt-get install chromium`, "
            "which scripts/test does when run as root) or set RELAYFLOW_CHROMIUM",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@pytest.fixture
async def page(browser: Browser, system: System) -> AsyncIterator[Page]:
    """A fresh browser context on the system's gateway; a script error fails the test."""
    context: BrowserContext = await browser.new_context(
        base_url=system.base_url, viewport={"width": 1280, "height": 860}
    )
    context.set_default_timeout(30_000)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    await context.close()
    assert not errors, f"script errors on the page: {errors}"


async def screenshot(page: Page, name: str, tmp_path: Path) -> None:
    """Always into the test's tmp_path; also into RELAYFLOW_SCREENSHOTS (e.g. `docs`) if set."""
    await page.screenshot(path=tmp_path / name)
    folder = _screenshot_folder()
    if folder is not None:
        await page.screenshot(path=folder / name)
