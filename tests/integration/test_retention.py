"""Retention against the real database: one pass removes exactly the finished runs past their
window with everything they own, the inbox ids, invocation records and orphan keys past
theirs, and nothing else; in batches that never delete more than the batch size and that yield
to the hot path instead of waiting on it; and a pruned run's late start copy does not start it
again while its inbox id is kept. Each test runs on a database of its own (a pass deletes
across whole tables)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from relayflow.contracts import StartWorkflow, new_message_id, new_workflow_id
from relayflow.db import Connection, close_pool, create_pool, migrate
from relayflow.orchestration.local import LocalSteps
from relayflow.orchestration.processor import Processor
from relayflow.orchestration.retention import FOREVER, Retention, Windows, prune_once
from relayflow.settings import Settings
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry
from tests.support import create_database, drop_database, unique_name

WINDOW = 100.0  # seconds, every kind, in these tests
OLD, RECENT = 1000.0, 10.0  # ages: past the window, inside it
RETENTION = Retention(Windows(WINDOW, WINDOW, WINDOW, WINDOW), batch_size=50, pause=0.0)

# Every table a run can leave rows in, and the columns that name a row.
TABLES = {
    "workflows": "id",
    "workflow_events": "workflow_id, seq",
    "step_items": "workflow_id, step_name, item_index",
    "step_invocations": "workflow_id, step_name, step_key",
    "signal_keys": "workflow_id, signal_name, key",
    "idempotency_keys": "workflow_id, tenant, workflow_name, key",
    "inbox": "message_id",
    "timers": "workflow_id, step_name, kind",
    "outbox": "message_id",
}


@pytest.fixture
async def db(service_endpoints: tuple[str, str]) -> AsyncIterator[asyncpg.Pool[Any]]:
    """A fresh, migrated database of the core's tables, for one test."""
    server = service_endpoints[1]
    name = unique_name("relayflow_retention_")
    url = await create_database(server, name)
    pool = await create_pool(url, min_size=1, max_size=6)
    async with pool.acquire() as conn:
        await migrate(conn)
    yield pool
    await close_pool(pool)
    await drop_database(server, name)


async def add_run(
    pool: asyncpg.Pool[Any],
    *,
    finished_ago: float | None,
    started_ago: float = OLD + 100,
    parent: str | None = None,
) -> str:
    """A workflow with one of every row a run owns: events, map items, invocation records, a
    signal key, an Idempotency-Key, its start's inbox id, a timer and an outbox row. Finished
    `finished_ago` seconds ago (None: still running)."""
    workflow_id = new_workflow_id()
    status = "running" if finished_ago is None else "completed"
    ended = finished_ago if finished_ago is not None else 0.0
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            """
            INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at,
                                   updated_at, finished_at, parent)
            VALUES ($1, 'test', $2, '{}', 'h', '{}', now() - make_interval(secs => $3),
                    now(), CASE WHEN $4 THEN now() - make_interval(secs => $5) END, $6)
            """,
            workflow_id,
            status,
            started_ago,
            finished_ago is not None,
            ended,
            {"workflowId": parent, "stepName": "child", "stepKey": "", "attempt": 1}
            if parent
            else None,
        )
        await conn.execute(
            "INSERT INTO workflow_events (workflow_id, seq, event, body, created_at) "
            "SELECT $1, s, 'e', '{}', now() FROM generate_series(1, 3) AS s",
            workflow_id,
        )
        await conn.execute(
            "INSERT INTO step_items (workflow_id, step_name, key, item_index, status) "
            "SELECT $1, 'map', s::text, s, 'completed' FROM generate_series(0, 1) AS s",
            workflow_id,
        )
        await conn.execute(
            """
            INSERT INTO step_invocations (workflow_id, step_name, step_key, status, attempt,
                                          started_at, finished_at)
            SELECT $1, 'step' || s, '', 'succeeded', 1,
                   now() - make_interval(secs => $2), now() - make_interval(secs => $2)
            FROM generate_series(1, 2) AS s
            """,
            workflow_id,
            max(RECENT, ended),
        )
        await conn.execute(
            "INSERT INTO signal_keys (workflow_id, signal_name, key, signal_id, request_hash) "
            "VALUES ($1, 'go', 'k', 'sig', 'h')",
            workflow_id,
        )
        await conn.execute(
            "INSERT INTO idempotency_keys (workflow_name, key, workflow_id, request_hash, "
            "created_at) VALUES ('test', $1, $1, 'h', now() - make_interval(secs => $2))",
            workflow_id,
            started_ago,
        )
        await add_inbox(conn, f"start:{workflow_id}", RECENT)
        await conn.execute(
            "INSERT INTO timers (workflow_id, kind, step_name, attempt, fire_at) "
            "VALUES ($1, 'workflow_timeout', '', 1, now() + interval '1 day')",
            workflow_id,
        )
        await conn.execute(
            "INSERT INTO outbox (exchange, routing_key, message_id, type, body, mandatory) "
            "VALUES ('x', 'k', $1, 't', '', true)",
            f"out:{workflow_id}",
        )
    return workflow_id


async def add_inbox(conn: Connection | asyncpg.Pool[Any], id: str, age: float) -> None:
    await conn.execute(
        "INSERT INTO inbox (message_id, received_at) "
        "VALUES ($1, now() - make_interval(secs => $2))",
        id,
        age,
    )


async def add_invocation(
    pool: asyncpg.Pool[Any], key: str, *, status: str, started_ago: float, ended_ago: float
) -> None:
    """An invocation record of no stored workflow; a running one's lease ends `ended_ago`."""
    running = status == "running"
    await pool.execute(
        """
        INSERT INTO step_invocations (workflow_id, step_name, step_key, status, attempt,
                                      lease_owner, lease_expires_at, started_at, finished_at)
        VALUES ('wf_gone', 's', $1, $2, 1, CASE WHEN $3 THEN 'w' END,
                CASE WHEN $3 THEN now() - make_interval(secs => $5) END,
                now() - make_interval(secs => $4),
                CASE WHEN NOT $3 THEN now() - make_interval(secs => $5) END)
        """,
        key,
        status,
        running,
        started_ago,
        ended_ago,
    )


async def add_key(pool: asyncpg.Pool[Any], workflow_id: str, age: float) -> None:
    """An Idempotency-Key naming `workflow_id`, recorded `age` seconds ago."""
    await pool.execute(
        "INSERT INTO idempotency_keys (workflow_name, key, workflow_id, request_hash, "
        "created_at) VALUES ('test', $1, $2, 'h', now() - make_interval(secs => $3))",
        unique_name("key-"),
        workflow_id,
        age,
    )


async def rows(pool: asyncpg.Pool[Any]) -> set[tuple[Any, ...]]:
    """Every row of every table a run can leave rows in, as (table, *its key)."""
    found: set[tuple[Any, ...]] = set()
    for table, columns in TABLES.items():
        for row in await pool.fetch(f"SELECT {columns} FROM {table}"):
            found.add((table, *row.values()))
    return found


def owned_by(before: set[tuple[Any, ...]], workflow_ids: set[str]) -> set[tuple[Any, ...]]:
    """The rows retention removes with these workflows: theirs in every table but the inbox,
    timers and outbox (ids, timers and messages are judged on their own)."""
    kept = {"inbox", "timers", "outbox"}
    gone = set()
    for row in before:
        table, *key = row
        if table in kept:
            continue
        if key[0] in workflow_ids:
            gone.add(row)
    return gone


async def test_a_pass_removes_exactly_what_is_past_its_window(db: asyncpg.Pool[Any]) -> None:
    """Retention removes what it should and nothing else: old finished runs (a parent and its
    finished child too) with all they own; never a running run, a recent one, or a child whose
    parent runs; inbox ids, invocation records and orphan Idempotency-Keys only past their
    windows; timers and outbox rows never (they drain themselves)."""
    old_done = await add_run(db, finished_ago=OLD)
    recent_done = await add_run(db, finished_ago=RECENT)
    running = await add_run(db, finished_ago=None)
    orphaned_child = await add_run(db, finished_ago=OLD, parent=running)
    parent_done = await add_run(db, finished_ago=OLD)
    child_done = await add_run(db, finished_ago=OLD + 50, parent=parent_done)
    grandchild_done = await add_run(db, finished_ago=OLD + 60, parent=child_done)
    recent_parent = await add_run(db, finished_ago=RECENT)
    old_child_of_recent = await add_run(db, finished_ago=OLD, parent=recent_parent)
    await add_inbox(db, "old-id", OLD)
    await add_inbox(db, "edge-id", WINDOW - 5)
    await add_invocation(db, "old-done", status="succeeded", started_ago=OLD, ended_ago=OLD)
    await add_invocation(db, "old-failed", status="failed", started_ago=OLD, ended_ago=OLD)
    await add_invocation(db, "ended-late", status="succeeded", started_ago=OLD, ended_ago=RECENT)
    await add_invocation(db, "lease-lapsed", status="running", started_ago=OLD, ended_ago=OLD)
    await add_invocation(db, "still-leased", status="running", started_ago=OLD, ended_ago=-30)
    await add_key(db, "wf_never_started", OLD)
    await add_key(db, "wf_not_yet_started", RECENT)
    await add_key(db, running, OLD)  # old, but its run is kept: it stays with it
    before = await rows(db)

    # A family goes one generation a pass: the parent, then its children, then theirs.
    reports = [await prune_once(db, RETENTION) for _ in range(4)]
    assert [r.total("workflows") for r in reports] == [2, 1, 1, 0]

    pruned = {old_done, parent_done, child_done, grandchild_done}
    after = await rows(db)
    assert after <= before
    assert before - after == owned_by(before, pruned) | {
        ("inbox", "old-id"),
        *(("step_invocations", "wf_gone", "s", key) for key in ("old-done", "old-failed")),
        ("step_invocations", "wf_gone", "s", "lease-lapsed"),
        *(row for row in before if row[:2] == ("idempotency_keys", "wf_never_started")),
        # Kept runs' invocation records that ended past their own window.
        *(
            row
            for row in before
            if row[0] == "step_invocations" and row[1] in (orphaned_child, old_child_of_recent)
        ),
    }
    assert not any(r.yielded for r in reports)
    for kept in (recent_done, running, orphaned_child, recent_parent, old_child_of_recent):
        assert ("workflows", kept) in after
    # The invocation records of a kept run go by their own window, not with the run.
    assert (
        await db.fetchval("SELECT count(*) FROM step_invocations WHERE workflow_id = $1", running)
        == 2
    )


async def test_each_statement_deletes_at_most_the_batch_size(db: asyncpg.Pool[Any]) -> None:
    """With a batch size of N, a pass over 3N rows of a kind takes several statements, none of
    which deletes more than N rows: no statement holds many locks or runs long."""
    n = 10
    for _ in range(3 * n):
        await add_run(db, finished_ago=OLD)
    async with db.acquire() as conn:
        for i in range(3 * n):
            await add_inbox(conn, f"old-{i}", OLD)
    report = await prune_once(db, Retention(RETENTION.windows, batch_size=n, pause=0.0))
    for table in ("workflows", "workflow_events", "inbox", "step_invocations"):
        statements = report.deleted[table]
        assert max(statements) <= n, (table, statements)
        assert len([rows for rows in statements if rows]) >= 3, (table, statements)
    assert report.total("workflows") == 3 * n
    assert report.total("workflow_events") == 3 * 3 * n
    assert await db.fetchval("SELECT count(*) FROM workflows") == 0
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE message_id LIKE 'old-%'") == 0


async def test_a_row_the_hot_path_holds_is_skipped_not_waited_for(db: asyncpg.Pool[Any]) -> None:
    """A transaction of the hot path that holds an old finished run (a late retry, say) and an
    old inbox id is not waited for: the pass skips them, takes the rest, ends within the lock
    timeout, and never makes the hot path wait (its next write goes through at once)."""
    held, free = await add_run(db, finished_ago=OLD), await add_run(db, finished_ago=OLD)
    await add_inbox(db, "held-id", OLD)
    async with db.acquire() as hot, hot.transaction():
        await hot.execute("SELECT 1 FROM workflows WHERE id = $1 FOR UPDATE", held)
        await hot.execute("SELECT 1 FROM inbox WHERE message_id = 'held-id' FOR UPDATE")
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await prune_once(db, RETENTION)
        took = loop.time() - started
        await hot.execute("SET LOCAL lock_timeout = '50ms'")
        await hot.execute("UPDATE workflows SET updated_at = now() WHERE id = $1", held)
    assert took < RETENTION.lock_timeout_ms / 1000 + 1.0
    assert not report.yielded
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", held) == 1
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", free) == 0
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE message_id = 'held-id'") == 1
    # Released, it goes with the next pass.
    await prune_once(db, RETENTION)
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", held) == 0


async def test_a_batch_that_would_wait_gives_up_within_the_lock_timeout(
    db: asyncpg.Pool[Any],
) -> None:
    """When a batch would have to wait for a lock (here a whole table, held by a migration or
    an operator), it gives up after `lock_timeout` and rolls back: its kind yields until the
    next pass, the other kinds go on, and nothing is half deleted."""
    workflow_id = await add_run(db, finished_ago=OLD)
    await add_inbox(db, "old-id", OLD)
    retention = Retention(RETENTION.windows, lock_timeout_ms=100, pause=0.0)
    async with db.acquire() as other, other.transaction():
        await other.execute("LOCK TABLE workflow_events IN ACCESS EXCLUSIVE MODE")
        loop = asyncio.get_running_loop()
        started = loop.time()
        report = await prune_once(db, retention)
        took = loop.time() - started
    assert took < 1.0
    assert report.yielded == ["workflows"]
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", workflow_id) == 1
    assert (
        await db.fetchval("SELECT count(*) FROM step_items WHERE workflow_id = $1", workflow_id)
        == 2
    )
    assert report.total("inbox") >= 1
    await prune_once(db, retention)
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", workflow_id) == 0


async def test_forever_keeps_a_kind_and_prunes_the_others(db: asyncpg.Pool[Any]) -> None:
    """A window of 0 keeps its kind for ever: here the inbox, while runs are pruned."""
    workflow_id = await add_run(db, finished_ago=OLD)
    await add_inbox(db, "old-id", OLD)
    windows = Windows(workflows=WINDOW, inbox=FOREVER, invocations=WINDOW, keys=WINDOW)
    report = await prune_once(db, Retention(windows, pause=0.0))
    assert "inbox" not in report.deleted
    assert await db.fetchval("SELECT count(*) FROM inbox WHERE message_id = 'old-id'") == 1
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", workflow_id) == 0


async def test_a_late_start_copy_of_a_pruned_run_does_not_start_it_again(
    db: asyncpg.Pool[Any], registry: WorkflowRegistry
) -> None:
    """Pruning a run cannot let a late copy of its start re-create it while the start's inbox id
    is kept (the horizon rule); once both are gone, the same copy would start it afresh, which
    is why the inbox window must cover the broker's redelivery horizon."""
    topology = Topology(namespace=unique_name("t"))
    local = LocalSteps.load(registry, Settings().step_modules, exchange=topology.exchange)
    processor = Processor(registry, topology, local=local)
    workflow_id = new_workflow_id()
    start = StartWorkflow(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        workflow_name="formSubmission",
        input={"name": "Ada", "email": "ada@example.com", "message": "hello"},
    )
    async with db.acquire() as conn, conn.transaction():
        await processor.deliver(conn, [start])
    await db.execute(
        "UPDATE workflows SET status = 'cancelled', finished_at = now() - interval '1 hour' "
        "WHERE id = $1",
        workflow_id,
    )
    runs_only = Windows(workflows=WINDOW, inbox=FOREVER, invocations=WINDOW, keys=WINDOW)
    await prune_once(db, Retention(runs_only, pause=0.0))
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", workflow_id) == 0
    async with db.acquire() as conn, conn.transaction():
        delivered = await processor.deliver(conn, [start])
    assert delivered.fresh == [False]
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", workflow_id) == 0
    # Past the inbox window too, the copy is news.
    await db.execute("UPDATE inbox SET received_at = now() - interval '1 hour'")
    await prune_once(db, RETENTION)
    async with db.acquire() as conn, conn.transaction():
        delivered = await processor.deliver(conn, [start])
    assert delivered.fresh == [True]
    assert await db.fetchval("SELECT count(*) FROM workflows WHERE id = $1", workflow_id) == 1
