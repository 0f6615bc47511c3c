"""`relayflow migrate`: apply the database migrations the services apply when they start (the
core's, then those of the applications in `RELAYFLOW_STEP_MODULES`), creating the database if
it is missing: for a deploy that migrates before it starts the services, or a database the
services do not own. The same advisory lock serialises it with services starting at the same
time (`relayflow.db.migrate`)."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
import typer

from relayflow.cli import connections, output
from relayflow.cli.context import current
from relayflow.db import ensure_database, migrate
from relayflow.db.migrate import CORE
from relayflow.steps import StepRegistry

_APPLIED = "SELECT package, version, name FROM relayflow_migrations"


async def _applied(conn: asyncpg.Connection[Any]) -> set[tuple[str, int, str]]:
    try:
        rows = await conn.fetch(_APPLIED)
    except asyncpg.UndefinedTableError:
        return set()
    return {(row["package"], row["version"], row["name"]) for row in rows}


def migrate_command(
    ctx: typer.Context,
    *,
    core_only: Annotated[
        bool, typer.Option(help="only the core's tables, not the applications'")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON: one object per migration applied")
    ] = False,
) -> None:
    """Apply the database migrations (DATABASE_URL), as the services do at start-up."""
    context = current(ctx)
    packages = [CORE]
    if not core_only:
        packages += StepRegistry.from_modules(context.settings.step_modules).migrations

    async def main() -> list[tuple[str, int, str]]:
        try:
            await ensure_database(context.database_url)
        except (OSError, asyncpg.PostgresError) as exc:
            output.warn(f"could not check that the database exists: {exc}")
        async with connections.database(context.database_url) as conn:
            before = await _applied(conn)
            await migrate(conn, packages)
            return sorted(await _applied(conn) - before)

    applied = connections.run(main())
    if as_json:
        for package, version, name in applied:
            output.write_json({"package": package, "version": version, "name": name})
        return
    output.write_lines(
        f"applied {package} {version:04d}_{name}" for package, version, name in applied
    )
    output.write_lines(
        [
            f"{len(applied)} migration(s) applied; the database is up to date "
            f"({', '.join(dict.fromkeys(packages))})"
        ]
    )
