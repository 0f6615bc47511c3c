"""Schema migrations, run by every service at start-up.

Migrations are numbered `.sql` files in the `migrations` folder of a package: the core's in
`relayflow/db/migrations`, every service applies them; an application's (its own tables, beside
its step bodies) in its own package, applied by the step service that serves it. A session-level
advisory lock serialises services that start together; each migration applies in its own
transaction and is recorded in `relayflow_migrations` under its package.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from relayflow.db.hosts import connect
from relayflow.db.pool import Connection

log = logging.getLogger(__name__)

# Any constant works as long as every service uses the same one.
_LOCK_KEY = 0x72656C6179  # "relay"
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


# The package of the core's migrations.
CORE = "relayflow.db"

# The ledger of applied migrations; made idempotently, and moved from one numbering for the
# core alone to one numbering per package without losing what it records.
_LEDGER = """
CREATE TABLE IF NOT EXISTS relayflow_migrations (
    version integer NOT NULL,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE relayflow_migrations ADD COLUMN IF NOT EXISTS package text NOT NULL
    DEFAULT 'relayflow.db';
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint WHERE conname = 'relayflow_migrations_package_pkey'
    ) THEN
        ALTER TABLE relayflow_migrations DROP CONSTRAINT IF EXISTS relayflow_migrations_pkey;
        ALTER TABLE relayflow_migrations
            ADD CONSTRAINT relayflow_migrations_package_pkey PRIMARY KEY (package, version);
    END IF;
END
$$;
"""


def available_migrations(package: str = CORE) -> list[Migration]:
    folder = resources.files(package).joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"duplicate migration numbers in {package}: {versions}")
    return found


async def migrate(conn: Connection, packages: Sequence[str] = (CORE,)) -> list[int]:
    """Apply what is missing of each package's migrations, in the order given (the core
    first: an application's tables may refer to it); returns the versions applied now."""
    applied_now: list[int] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_LEDGER)
        rows = await conn.fetch("SELECT package, version FROM relayflow_migrations")
        done = {(row["package"], row["version"]) for row in rows}
        for package in dict.fromkeys(packages):
            for migration in available_migrations(package):
                if (package, migration.version) in done:
                    continue
                async with conn.transaction():
                    await conn.execute(migration.sql)
                    await conn.execute(
                        "INSERT INTO relayflow_migrations (package, version, name) "
                        "VALUES ($1, $2, $3)",
                        package,
                        migration.version,
                        migration.name,
                    )
                log.info("applied migration %s %04d_%s", package, migration.version, migration.name)
                applied_now.append(migration.version)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return applied_now


async def ensure_database(dsn: str) -> None:
    """Create the database named in `dsn` if it does not exist (the quick start needs no manual
    `createdb`). Services racing to create it are fine: the loser sees it exists."""
    try:
        conn = await connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return
    parts = urlsplit(dsn)
    name = parts.path.lstrip("/")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,62}", name):
        raise ValueError(f"refusing to create a database with the unusual name {name!r}")
    admin = await connect(urlunsplit(parts._replace(path="/postgres")))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        log.info("created database %s", name)
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        # Another service won the race (PostgreSQL reports the loser either way).
        pass
    finally:
        await admin.close()
