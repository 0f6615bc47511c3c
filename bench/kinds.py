"""Map and child steps on our system (issue 8): `batchImport` maps of a few sizes, and a chain
parent -> child -> grandchild against plain task steps, on one set of processes that also runs
the five-step workload first, so that a map's items/s compares with steps/s of the same run.

Database cost per item comes from deltas around each map. Rows are `n_tup_ins + n_tup_upd +
n_tup_del` of `pg_stat_user_tables` in the system's own database, read once PostgreSQL has
published them: a backend that flushed its statistics less than a second before going idle
holds the rest for 10 s (PostgreSQL 15's PGSTAT_IDLE_INTERVAL), so the counters are read after
that, and again until two reads agree. WAL bytes are the `pg_current_wal_lsn()` delta from
submit to completion, which is the whole cluster's (other users of a shared server show up in
it); database growth is the `pg_database_size` delta over the same span.
Peak memory is VmHWM of each process, reset before each map through `/proc/<pid>/clear_refs`.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.measure import CpuMeter, percentile, status_kib
from bench.ours import Relayflow
from bench.report import Baseline, ChildRun, Kinds, MapRun
from bench.workflows import BY_LENGTH, NESTED

APP = "apps.batch_import"
WORKFLOW = "batchImport"
# Statistics held by an idle backend reach the shared counters within this long (s) ...
STATS_IDLE_FLUSH = 10.5
# ... and then the counters are read every SETTLE_INTERVAL until two agree, for at most this long.
SETTLE_TIMEOUT = 20.0
SETTLE_INTERVAL = 1.0

_TABLE_ROWS = """
SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS rows FROM pg_stat_user_tables
"""
_TOTALS = """
SELECT pg_current_wal_lsn() - '0/0'::pg_lsn AS wal, pg_database_size(current_database()) AS size
"""


@dataclass(frozen=True, slots=True)
class Totals:
    wal_bytes: int
    db_bytes: int


async def read_rows(conn: asyncpg.Connection) -> dict[str, int]:
    return {r["relname"]: int(r["rows"]) for r in await conn.fetch(_TABLE_ROWS)}


async def read_totals(conn: asyncpg.Connection) -> Totals:
    totals = await conn.fetchrow(_TOTALS)
    assert totals is not None
    return Totals(int(totals["wal"]), int(totals["size"]))


async def settled_rows(
    conn: asyncpg.Connection, idle_flush: float = STATS_IDLE_FLUSH
) -> dict[str, int]:
    """Rows written per table, once every backend has published what it counted: after
    `idle_flush` seconds, when two reads `SETTLE_INTERVAL` apart agree (or at the timeout)."""
    loop = asyncio.get_running_loop()
    await asyncio.sleep(idle_flush)
    deadline = loop.time() + SETTLE_TIMEOUT
    previous = await read_rows(conn)
    while loop.time() < deadline:
        await asyncio.sleep(SETTLE_INTERVAL)
        current = await read_rows(conn)
        if current == previous:
            return current
        previous = current
    return previous


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux 4.0+, own processes)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def batch(size: int, run: int) -> dict[str, object]:
    items = [{"sku": f"r{run}-{i:05d}", "qty": i % 100} for i in range(size)]
    return {"items": items, "notify": False}


async def map_run(
    system: Relayflow,
    conn: asyncpg.Connection,
    size: int,
    run: int,
    before: dict[str, int],
    *,
    idle_flush: float = STATS_IDLE_FLUSH,
) -> tuple[MapRun, dict[str, int]]:
    """One `batchImport` of `size` lines: submit, wait for `workflow.completed`, then its costs
    from the settled rows `before` it; returns those after it too (the next run's before)."""
    pids = system.pids()
    body = batch(size, run)
    start = await read_totals(conn)
    resets = [reset_peak(pid) for pid in pids.values()]  # every one, no short cut
    loop = asyncio.get_running_loop()
    meter = CpuMeter({pid: role for role, pid in pids.items()})
    t0 = loop.time()
    workflow_id = await system.submit(WORKFLOW, body)
    await system.completion(workflow_id, timeout=120 + size * 0.2)
    wall = loop.time() - t0
    cpu, by_role = meter.read()
    end = await read_totals(conn)
    peaks = {role: status_kib(pid, "VmHWM") for role, pid in pids.items()}
    after = await settled_rows(conn, idle_flush)
    tables = {
        table: (rows - before.get(table, 0)) / size
        for table, rows in sorted(after.items())
        if rows != before.get(table, 0)
    }
    ordered = sorted(by_role.items(), key=lambda item: -item[1])
    result = MapRun(
        items=size,
        wall_s=round(wall, 3),
        items_per_s=round(size / wall, 2),
        per_item={
            "rows_per_item": round((sum(after.values()) - sum(before.values())) / size, 3),
            "wal_bytes_per_item": round((end.wal_bytes - start.wal_bytes) / size, 1),
            "db_bytes_per_item": round((end.db_bytes - start.db_bytes) / size, 1),
            "cpu_ms_per_item": round(cpu / size, 3),
        },
        rows_per_item_by_table={t: round(v, 3) for t, v in tables.items()},
        cpu_ms_per_item_by_role={role: round(ms / size, 3) for role, ms in ordered},
        peak_mib={role: round(kib / 1024, 1) if kib else None for role, kib in peaks.items()},
        peak_reset=all(resets),
    )
    return result, after


async def child_run(system: Relayflow, n: int) -> ChildRun:
    """`n` of each shape at 1 in flight, in rounds that alternate the shapes (a drift of the
    machine's speed then touches all three alike)."""
    shapes = {NESTED: 3, BY_LENGTH[3]: 3, BY_LENGTH[1]: 1}
    rounds = max(1, min(5, n // 10))
    latencies: dict[str, list[float]] = {name: [] for name in shapes}
    errors = 0
    for index in range(rounds):
        share = n // rounds + (1 if index < n % rounds else 0)
        for name, steps in shapes.items():
            phase = await system.run_workflow(name, steps, share, 1)
            latencies[name] += [s.latency for s in phase.samples]
            errors += phase.errors

    def p50(name: str) -> float:
        return round(percentile(latencies[name], 50) * 1000, 3)

    return ChildRun(
        n=n,
        nested_p50_ms=p50(NESTED),
        plain3_p50_ms=p50(BY_LENGTH[3]),
        plain1_p50_ms=p50(BY_LENGTH[1]),
        errors=errors,
    )


async def run_kinds(
    system: Relayflow,
    *,
    map_sizes: tuple[int, ...],
    child_n: int,
    n: int,
    concurrency: int,
    warmup: int,
    profile: Path | None = None,
    stats_flush: float = STATS_IDLE_FLUSH,
) -> Kinds:
    """Start `system` (made with `apps=[APP]`), warm it up, run the five-step baseline when
    maps are asked for, then the maps (smallest first) and the child chains; stop it.
    `profile`: py-spy the services during the largest map, summaries in that folder.
    `stats_flush`: how long statistics may take to be published (tests: 0, rows then approximate).
    """
    kinds = Kinds()
    try:
        await system.start()
        if warmup:
            await system.run(5, warmup, min(concurrency, 10))
        conn = await asyncpg.connect(system.database_url)
        try:
            if map_sizes:
                load = await system.run(5, n, concurrency)
                kinds["baseline"] = Baseline(
                    n=n,
                    concurrency=concurrency,
                    workflows_per_s=round(load.throughput, 2),
                    cpu_ms_per_step=round(load.cpu_ms_per_workflow / 5, 3),
                )
                kinds["map"] = []
                rows = await settled_rows(conn, stats_flush)
                for run, size in enumerate(sorted(map_sizes)):
                    if profile is not None and size == max(map_sizes):
                        from bench.profile import Profiler

                        async with Profiler(system.pids(), profile):
                            result, rows = await map_run(
                                system, conn, size, run, rows, idle_flush=stats_flush
                            )
                    else:
                        result, rows = await map_run(
                            system, conn, size, run, rows, idle_flush=stats_flush
                        )
                    print(f"  map {size} items: {result['wall_s']:.2f} s, "
                          f"{result['items_per_s']:.1f} items/s", flush=True)  # fmt: skip
                    kinds["map"].append(result)
            if child_n:
                kinds["child"] = await child_run(system, child_n)
        finally:
            await conn.close()
    finally:
        await system.stop()
    return kinds
