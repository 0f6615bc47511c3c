"""What one workflow costs the database (issues 12 and 13): commits, rows written by table, and
write-ahead log, per five-step workflow under load.

On its own set of our processes: `n` five-step workflows at `concurrency` in flight (no warm-up:
counts do not depend on it), with the database's cumulative statistics read before and after
(`pg_stat_database`, `pg_stat_user_tables`: this system's database alone) and the server's WAL
position (the whole server: on a shared machine others' writes count too, so read it on a quiet
one). The "after" reading is taken once the processes have stopped (see `run_dbcost`), when two
readings a second apart agree. The figures say what one PostgreSQL primary must sustain per
workflow: divided into a server's measured commits/s and WAL MB/s, they give the ceiling
(`docs/scaling.md`).
"""

from __future__ import annotations

import asyncio
from typing import TypedDict

import asyncpg

from bench.ours import Relayflow

STEPS = 5


class TableCost(TypedDict):
    inserted: float
    updated: float
    hot_updated: float
    deleted: float


class DbCost(TypedDict):
    n: int
    concurrency: int
    commits: float
    rollbacks: float
    rows_written: float
    # Entries written to the tables' non-partial indexes: one per index for each row inserted
    # and for each update that was not HOT.
    index_entries: float
    wal_bytes: float
    tables: dict[str, TableCost]


_DATABASE = """
SELECT xact_commit, xact_rollback, tup_inserted + tup_updated + tup_deleted AS written
FROM pg_stat_database WHERE datname = current_database()
"""
_TABLES = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del FROM pg_stat_user_tables
"""
_INDEXES = """
SELECT t.relname, count(*) AS indexes
FROM pg_index AS i JOIN pg_stat_user_tables AS t ON t.relid = i.indrelid
WHERE i.indpred IS NULL
GROUP BY t.relname
"""


class _Reading(TypedDict):
    commits: int
    rollbacks: int
    written: int
    wal: int
    tables: dict[str, tuple[int, int, int, int]]


async def _read(conn: asyncpg.Connection) -> _Reading:
    database = await conn.fetchrow(_DATABASE)
    assert database is not None
    tables = {
        row["relname"]: (row["n_tup_ins"], row["n_tup_upd"], row["n_tup_hot_upd"], row["n_tup_del"])
        for row in await conn.fetch(_TABLES)
    }
    wal = await conn.fetchval("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")
    return _Reading(
        commits=database["xact_commit"],
        rollbacks=database["xact_rollback"],
        written=database["written"],
        wal=int(wal),
        tables=tables,
    )


async def _settled(conn: asyncpg.Connection) -> _Reading:
    """A reading once the backends have reported what they did (two readings a second apart
    agree on the rows written)."""
    previous = await _read(conn)
    for _ in range(30):
        await asyncio.sleep(1.1)
        reading = await _read(conn)
        if reading["tables"] == previous["tables"] and reading["written"] == previous["written"]:
            return reading
        previous = reading
    return previous


async def run_dbcost(system: Relayflow, *, n: int, concurrency: int) -> DbCost:
    await system.start()
    try:
        conn = await asyncpg.connect(system.database_url)
        try:
            # Every statement reads the statistics afresh, not a snapshot of the first.
            await conn.execute("SET stats_fetch_consistency = none")
            before = await _settled(conn)
            await system.run(STEPS, n, concurrency)
            # A backend reports its counts when it goes idle outside a transaction, and the
            # step service keeps its connections in one opened ahead: they report as they end.
            assert system.processes is not None
            await system.processes.stop()
            system.processes = None
            after = await _settled(conn)
            indexes = {row["relname"]: row["indexes"] for row in await conn.fetch(_INDEXES)}
        finally:
            await conn.close()
    finally:
        await system.stop()
    tables: dict[str, TableCost] = {}
    entries = 0
    for name, counts in sorted(after["tables"].items()):
        old = before["tables"].get(name, (0, 0, 0, 0))
        ins, upd, hot, dele = (new - was for new, was in zip(counts, old, strict=True))
        entries += (ins + upd - hot) * indexes.get(name, 0)
        if ins or upd or dele:
            tables[name] = TableCost(
                inserted=ins / n, updated=upd / n, hot_updated=hot / n, deleted=dele / n
            )
    return DbCost(
        n=n,
        concurrency=concurrency,
        # Includes the settling readings' own few (read-only) ones: a few in `n` thousand.
        commits=(after["commits"] - before["commits"]) / n,
        rollbacks=(after["rollbacks"] - before["rollbacks"]) / n,
        rows_written=(after["written"] - before["written"]) / n,
        index_entries=entries / n,
        wal_bytes=(after["wal"] - before["wal"]) / n,
        tables=tables,
    )


def render_dbcost(cost: DbCost) -> str:
    lines = [
        f"database cost per five-step workflow ({cost['n']} at {cost['concurrency']} in flight): "
        f"{cost['commits']:.2f} commits, {cost['rollbacks']:.2f} rollbacks, "
        f"{cost['rows_written']:.1f} rows written, {cost['index_entries']:.1f} index entries "
        f"(partial indexes aside), {cost['wal_bytes'] / 1024:.1f} KiB of WAL (the whole server's)",
        f"  {'table':<24} {'inserted':>9} {'updated':>9} {'(HOT)':>7} {'deleted':>9}",
    ]
    for name, t in cost["tables"].items():
        lines.append(
            f"  {name:<24} {t['inserted']:>9.2f} {t['updated']:>9.2f} {t['hot_updated']:>7.2f} "
            f"{t['deleted']:>9.2f}"
        )
    return "\n".join(lines)
