"""formSubmission's table is its own migration set's (`apps.form_submission`), no longer the
core's version 2: on a fresh database only the application creates it, and a database the old
core version 2 created it in upgrades without a failure or a lost row."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from apps.form_submission.steps import QUERIES
from relayflow.db import migrate
from relayflow.db.migrate import CORE, available_migrations
from tests.support import create_database, drop_database, unique_name

APP = "apps.form_submission"

# The core's version 2 as it was released, before the table moved to the application.
OLD_CORE_0002 = """
CREATE TABLE form_submissions (
    workflow_id    text PRIMARY KEY,
    name           text NOT NULL,
    email          text NOT NULL,
    message        text NOT NULL,
    status         text NOT NULL DEFAULT 'received' CHECK (status IN ('received', 'finalized')),
    external_reply jsonb,
    finalize_count integer NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    finalized_at   timestamptz
);
"""

Connect = Callable[[], Awaitable["asyncpg.Connection[Any]"]]


@pytest.fixture
async def new_database(service_endpoints: tuple[str, str]) -> AsyncIterator[Connect]:
    """Empty databases for one test, each dropped at its end."""
    server = service_endpoints[1]
    made: list[tuple[str, asyncpg.Connection[Any]]] = []

    async def connect() -> asyncpg.Connection[Any]:
        name = unique_name("relayflow_mig_")
        conn = await asyncpg.connect(await create_database(server, name))
        made.append((name, conn))
        return conn

    yield connect
    for name, conn in made:
        await conn.close()
        await drop_database(server, name)


async def recorded(conn: asyncpg.Connection[Any]) -> list[tuple[str, int]]:
    rows = await conn.fetch("SELECT package, version FROM relayflow_migrations ORDER BY 1, 2")
    return [(row["package"], row["version"]) for row in rows]


async def table_shape(conn: asyncpg.Connection[Any]) -> list[tuple[Any, ...]]:
    """The table's columns and constraints, as PostgreSQL describes them."""
    columns = await conn.fetch(
        "SELECT column_name, data_type, is_nullable, column_default "
        "FROM information_schema.columns WHERE table_name = 'form_submissions' "
        "ORDER BY ordinal_position"
    )
    constraints = await conn.fetch(
        "SELECT contype, pg_get_constraintdef(oid) AS definition FROM pg_constraint "
        "WHERE conrelid = 'form_submissions'::regclass ORDER BY 1, 2"
    )
    return [tuple(row) for row in [*columns, *constraints]]


def legacy_core(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A package holding the core's migrations as they were before the move: today's, with the
    old version 2 in place of the empty one."""
    package = tmp_path / "legacy_core"
    (package / "migrations").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for entry in resources.files(CORE).joinpath("migrations").iterdir():
        if entry.name.endswith(".sql") and not entry.name.startswith("0002_"):
            shutil.copyfile(str(entry), package / "migrations" / entry.name)
    (package / "migrations" / "0002_form_submissions.sql").write_text(OLD_CORE_0002)
    monkeypatch.syspath_prepend(str(tmp_path))
    return package.name


async def test_a_fresh_database_gets_the_table_from_the_application_only(
    new_database: Connect,
) -> None:
    """The core no longer creates an application's table: the gateway and orchestrator (core
    migrations only) leave it out, and the step service serving the app creates it."""
    conn = await new_database()
    await migrate(conn)
    assert await conn.fetchval("SELECT to_regclass('form_submissions')") is None
    # Version 2 stays taken, empty: a database that applied the old one skips it either way.
    assert (CORE, 2) in await recorded(conn)
    assert await migrate(conn, (CORE, APP)) == [m.version for m in available_migrations(APP)]
    assert await conn.fetchval("SELECT to_regclass('form_submissions')") is not None
    assert (APP, 1) in await recorded(conn)


async def test_a_database_with_the_old_core_table_upgrades_and_keeps_its_rows(
    new_database: Connect, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deployment migrated before the move (core version 2 made the table, rows in it) starts
    the new step service: the app's migration finds the table, records it, and loses nothing;
    the table is then the same as on a fresh database, and the steps' queries work on it."""
    old = await new_database()
    await migrate(old, (legacy_core(tmp_path, monkeypatch),))
    # Recorded under the core's name, as the old core recorded it.
    await old.execute("UPDATE relayflow_migrations SET package = $1", CORE)
    await old.execute(QUERIES.insert_submission, "wf_old", "Ada", "ada@example.com", "hello")

    assert await migrate(old, (CORE, APP)) == [1]
    assert await migrate(old, (CORE, APP)) == []
    assert await recorded(old) == sorted(
        [(CORE, m.version) for m in available_migrations()] + [(APP, 1)]
    )
    row = await old.fetchrow(QUERIES.finalize_submission, "wf_old", '{"ticketId": "T-1"}')
    assert row is not None
    assert (row["workflow_id"], row["finalize_count"]) == ("wf_old", 1)

    fresh = await new_database()
    await migrate(fresh, (CORE, APP))
    assert await table_shape(old) == await table_shape(fresh)
