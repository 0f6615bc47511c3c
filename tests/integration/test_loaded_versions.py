"""Stranded runs are seen, not silently stuck: each orchestrator replica announces the workflow
versions it loads (`loaded_definitions`), and the gateway marks a run that no live replica can
apply — in its view, in the list and on the dashboard — or says it does not know when no replica
announces at all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from relayflow.contracts import SignalWorkflow, StartWorkflow, new_message_id, new_workflow_id
from relayflow.machine import Rejected
from relayflow.orchestration.log_limit import LogLimit
from relayflow.orchestration.processor import Processor
from relayflow.settings import Settings
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry
from services.orchestrator.__main__ import serve
from services.orchestrator.announce import Announcer, replica_id
from services.orchestrator.settings import OrchestratorSettings
from tests.integration.gateway_harness import RunningGateway, running_gateway
from tests.integration.test_gateway_workflows import insert_workflow
from tests.integration.test_versions import V1, V2, apply, commands, run_to_end
from tests.support import wait_for

# Short enough that a test sees a refresh, long enough that a slow machine keeps its rows live.
INTERVAL = 0.3


async def announced(pool: asyncpg.Pool[Any], replica: str) -> dict[tuple[str, str], datetime]:
    rows = await pool.fetch(
        "SELECT name, version, seen_at FROM loaded_definitions WHERE replica = $1", replica
    )
    return {(row["name"], row["version"]): row["seen_at"] for row in rows}


async def replicas(pool: asyncpg.Pool[Any]) -> set[str]:
    rows = await pool.fetch("SELECT DISTINCT replica FROM loaded_definitions")
    return {row["replica"] for row in rows}


async def test_a_replica_announces_what_it_loads_refreshes_it_and_withdraws_at_stop(
    settings: Settings, pool: asyncpg.Pool[Any], registry: WorkflowRegistry
) -> None:
    """What the gateway shows is only as true as these rows: there from start-up, kept fresh
    while the replica runs, gone the moment it stops cleanly."""
    before = await replicas(pool)
    own = OrchestratorSettings(**{**settings.model_dump(), "announce_interval": INTERVAL})
    stop = asyncio.Event()
    task = asyncio.create_task(serve(own, stop))
    try:

        async def started() -> set[str]:
            if task.done():
                task.result()
            return await replicas(pool) - before

        [replica] = await wait_for(started, what="the replica's announcement")
        host, pid, suffix = replica.split(":")
        assert (host, int(pid)) == (socket.gethostname(), os.getpid())
        assert len(suffix) == 8
        first = await announced(pool, replica)
        assert set(first) == {(d.name, d.version) for d in registry.all_versions()}

        async def refreshed() -> bool:
            now = await announced(pool, replica)
            return all(now[key] > seen for key, seen in first.items())

        await wait_for(refreshed, what="a refresh of every row")
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert await announced(pool, replica) == {}


async def test_rows_of_a_replica_that_died_lapse_and_are_cleared(pool: asyncpg.Pool[Any]) -> None:
    """A replica killed with SIGKILL never withdraws: its rows must stop counting and go, or a
    version it loaded would look served for ever."""
    dead, alive = f"dead:{new_workflow_id()}", replica_id()
    await pool.execute(
        "INSERT INTO loaded_definitions (replica, name, version, seen_at) "
        "VALUES ($1, 'versioned', '1', now() - interval '10 minutes')",
        dead,
    )
    announcer = Announcer(pool, [V1, V2], replica=alive, interval=30, stale_after=90)
    await announcer.announce()
    assert await announced(pool, dead) == {}
    assert set(await announced(pool, alive)) == {("versioned", "1"), ("versioned", "2")}
    await announcer.withdraw()
    assert await announced(pool, alive) == {}


@pytest.fixture
async def outbox_of(pool: asyncpg.Pool[Any]) -> AsyncIterator[list[str]]:
    """Runs whose outbox rows a processor-only test removes afterwards, so that no later
    test's relay sweeps them towards exchanges that are gone."""
    made: list[str] = []
    yield made
    for workflow_id in made:
        await pool.execute("DELETE FROM outbox WHERE message_id LIKE $1", f"%{workflow_id}%")


async def test_a_stranded_run_is_warned_about_once_a_minute_not_per_input(
    pool: asyncpg.Pool[Any],
    topology: Topology,
    caplog: pytest.LogCaptureFixture,
    outbox_of: list[str],
) -> None:
    """Every input of a stranded run is dead-lettered; one warning line per input would bury
    the log, so the warning comes once per (run, version) a minute and counts the rest."""
    now = [0.0]
    old = Processor(WorkflowRegistry([V1]), topology)
    new = Processor(
        WorkflowRegistry([V2]), topology, unloaded_warnings=LogLimit(60, clock=lambda: now[0])
    )
    run = new_workflow_id()
    outbox_of.append(run)
    start = StartWorkflow(
        message_id=new_message_id(), workflow_id=run, workflow_name="versioned", input={}
    )
    await run_to_end(pool, old, commands(await apply(pool, old, [start])))

    def signal() -> SignalWorkflow:
        return SignalWorkflow(
            message_id=new_message_id(), workflow_id=run, signal_name="go", payload={"go": True}
        )

    caplog.set_level(logging.WARNING, logger="relayflow.orchestration.processor")
    refused = await apply(pool, new, [signal(), signal(), signal()])
    assert all(isinstance(outcome, Rejected) for outcome in refused.outcomes)
    refused = await apply(pool, new, [signal()])
    warned = [r.getMessage() for r in caplog.records if "not loaded here" in r.getMessage()]
    assert len(warned) == 1, warned
    assert run in warned[0]
    assert "deployed beside the new one" in warned[0]
    now[0] += 60
    await apply(pool, new, [signal()])
    warned = [r.getMessage() for r in caplog.records if "not loaded here" in r.getMessage()]
    assert len(warned) == 2, warned
    assert "(3 more refused since the last warning)" in warned[1]


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings) as gateway:
        yield gateway


@contextlib.asynccontextmanager
async def only_announcing(pool: asyncpg.Pool[Any], *loaded: tuple[str, str]) -> AsyncIterator[None]:
    """The table as if one live replica loaded `loaded` (none at all: nothing announced); what
    it held before is put back, so that a replica of another test keeps its rows."""
    async with pool.acquire() as conn:
        kept = await conn.fetch("DELETE FROM loaded_definitions RETURNING *")
        replica = f"test:{new_workflow_id()}"
        for name, version in loaded:
            await conn.execute(
                "INSERT INTO loaded_definitions (replica, name, version) VALUES ($1, $2, $3)",
                replica,
                name,
                version,
            )
    try:
        yield
    finally:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM loaded_definitions")
            await conn.executemany(
                "INSERT INTO loaded_definitions (replica, name, version, seen_at) "
                "VALUES ($1, $2, $3, $4)",
                [(r["replica"], r["name"], r["version"], r["seen_at"]) for r in kept],
            )


def seeded() -> tuple[str, dict[str, str]]:
    """A workflow name of this test, and the ids of its runs by what they show."""
    name = f"stranded{new_workflow_id()[-8:]}"
    return name, {kind: f"wf_{name}_{kind}" for kind in ("gone", "served", "old", "done")}


async def seed(pool: asyncpg.Pool[Any], name: str, runs: dict[str, str]) -> None:
    await insert_workflow(pool, runs["gone"], name=name, version="1")
    await insert_workflow(pool, runs["served"], name=name, version="2")
    # From before versions: it takes the newest version loaded, so any version serves it.
    await insert_workflow(pool, runs["old"], name=name)
    # Finished: nothing more to apply, whatever is loaded.
    await insert_workflow(pool, runs["done"], name=name, version="1", status="completed")


async def loaded_flags(gateway: RunningGateway, name: str) -> dict[str, bool | None]:
    listed = await gateway.client.get("/workflows", params={"workflow": name})
    assert listed.status_code == 200, listed.text
    return {item["workflowId"]: item["versionLoaded"] for item in listed.json()["items"]}


async def test_the_gateway_marks_a_run_whose_version_no_live_replica_loads(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """After a deploy that dropped version 1, its runs are stuck until it comes back: the
    operator must find them (API, list, page) and read what to do, while the runs a replica
    serves are not flagged."""
    name, runs = seeded()
    await seed(pool, name, runs)
    async with only_announcing(pool, (name, "2"), ("other", "1")):
        view = (await gateway.client.get(f"/workflows/{runs['gone']}")).json()
        assert view["versionLoaded"] is False
        assert (await gateway.client.get(f"/workflows/{runs['served']}")).json()[
            "versionLoaded"
        ] is True
        assert await loaded_flags(gateway, name) == {
            runs["gone"]: False,
            runs["served"]: True,
            runs["old"]: True,
            runs["done"]: None,
        }

        page = await gateway.client.get(f"/ui/workflows/{runs['gone']}")
        assert 'class="badge version" data-version="1"' in page.text
        assert 'class="badge unloaded" data-version-loaded="false"' in page.text
        assert "No running orchestrator loads version <code>1</code>" in page.text
        assert "Deploy that version beside the new one" in page.text
        assert "redrive the dead-lettered inputs" in page.text
        served = await gateway.client.get(f"/ui/workflows/{runs['served']}")
        assert 'data-version-loaded="false"' not in served.text
        rows = (await gateway.client.get("/ui/list", params={"workflow": name})).text
        assert rows.count('data-version-loaded="false"') == 1
        row_of_gone = rows.split(f'data-workflow-id="{runs["gone"]}"')[1].split("</tr>")[0]
        assert 'class="badge unloaded"' in row_of_gone


async def test_with_no_replica_announcing_the_gateway_says_unknown(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """Before the first orchestrator starts (or when every one has stopped) nothing is known:
    flagging every run as stranded would be a false alarm on each of them."""
    name, runs = seeded()
    await seed(pool, name, runs)
    async with only_announcing(pool):
        assert set((await loaded_flags(gateway, name)).values()) == {None}
        view = (await gateway.client.get(f"/workflows/{runs['gone']}")).json()
        assert view["versionLoaded"] is None
        page = await gateway.client.get(f"/ui/workflows/{runs['gone']}")
        assert 'data-version-loaded="false"' not in page.text
    async with pool.acquire() as conn:
        kept = await conn.fetch("SELECT * FROM loaded_definitions")
    # A replica that died long ago counts as none.
    async with only_announcing(pool, (name, "1")):
        await pool.execute(
            "UPDATE loaded_definitions SET seen_at = $1 WHERE name = $2",
            datetime(2020, 1, 1, tzinfo=UTC),
            name,
        )
        view = (await gateway.client.get(f"/workflows/{runs['gone']}")).json()
        assert view["versionLoaded"] is None
    assert len(await pool.fetch("SELECT * FROM loaded_definitions")) == len(kept)
