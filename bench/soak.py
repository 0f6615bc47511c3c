"""The soak (issue 11, retention): relayflow for `minutes` at half its measured throughput, with
retention windows short enough to catch up within the run, sampling each service's memory and
the database's size over time. Once retention has caught up, both should be flat.

The system runs with `RELAYFLOW_DELIVERY_LIMIT=2` and `RELAYFLOW_ORCHESTRATOR_DEFER_LIMIT=2`, which
bring the broker's redelivery horizon down to 66 s, so that every window can be `WINDOW` (70 s)
and still keep the rule the orchestrator checks at start-up; a retention pass runs every
`PASS_INTERVAL` seconds. After a warm-up, a closed loop of `calibrate_n` five-step workflows at
`concurrency` in flight measures the throughput; then an open loop (`bench.openloop`, Poisson
arrivals) runs at half of it for `minutes`, while every `every` seconds a sampler reads each
service's resident set (VmRSS of its process tree), `pg_database_size`, the row counts of the
main tables and their dead rows. Deleted rows' space is reused once vacuumed: where autovacuum
is off (as on the shared bench server), the sampler runs a plain VACUUM of those tables before
each sample in its place. The verdict, per series: the least-squares slope over the last half
of the samples, as the drift it predicts over that half, is flat when within the noise:
`FLAT_SHARE` of the series' mean there, or twice the spread of the samples around the line,
whichever is larger.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from dataclasses import dataclass
from typing import Any, TypedDict

import asyncpg

from bench.measure import process_tree, status_kib
from bench.openloop import OpenLoop, open_loop
from bench.ours import Relayflow

WINDOW = 70
PASS_INTERVAL = 5
FLAT_SHARE = 0.05
ENV = {
    "RELAYFLOW_DELIVERY_LIMIT": "2",
    "RELAYFLOW_ORCHESTRATOR_DEFER_LIMIT": "2",
    "RELAYFLOW_RETENTION_WORKFLOWS_SECONDS": str(WINDOW),
    "RELAYFLOW_RETENTION_INBOX_SECONDS": str(WINDOW),
    "RELAYFLOW_RETENTION_INVOCATIONS_SECONDS": str(WINDOW),
    "RELAYFLOW_RETENTION_KEYS_SECONDS": str(WINDOW),
    "RELAYFLOW_RETENTION_INTERVAL_SECONDS": str(PASS_INTERVAL),
}
TABLES = ("workflows", "workflow_events", "step_invocations", "inbox", "outbox", "timers")


class Verdict(TypedDict):
    series: str
    mean: float
    drift: float  # what the last half's slope predicts over the last half
    noise: float
    flat: bool


class Soak(TypedDict):
    rate: float
    calibrated: float
    minutes: float
    window_s: int
    vacuum: str  # who reclaimed dead rows' space
    samples: list[dict[str, float]]
    verdicts: list[Verdict]
    flat: bool
    open_loop: OpenLoop


def rss_mib(pid: int) -> float:
    """The current resident set of `pid` and its descendants, MiB."""
    kib = [status_kib(p, "VmRSS") for p in process_tree(pid)]
    return sum(v for v in kib if v is not None) / 1024


async def sample(system: Relayflow, conn: asyncpg.Connection[Any], t: float) -> dict[str, float]:
    row: dict[str, float] = {"t": round(t, 1)}
    for role, pid in system.pids().items():
        row[f"{role} MiB"] = round(rss_mib(pid), 1)
    size = await conn.fetchval("SELECT pg_database_size(current_database())")
    row["db MiB"] = round(size / 2**20, 2)
    for table in TABLES:
        row[table] = await conn.fetchval(f"SELECT count(*) FROM {table}")
    row["dead rows"] = await conn.fetchval(
        "SELECT coalesce(sum(n_dead_tup), 0)::bigint FROM pg_stat_user_tables"
    )
    return row


def verdict(name: str, points: list[tuple[float, float]]) -> Verdict:
    """Flat or not, from the least-squares line through `points` (t, value)."""
    ts, vs = [t for t, _ in points], [v for _, v in points]
    mean_t, mean_v = statistics.fmean(ts), statistics.fmean(vs)
    var_t = sum((t - mean_t) ** 2 for t in ts)
    slope = sum((t - mean_t) * (v - mean_v) for t, v in points) / var_t if var_t else 0.0
    residuals = [v - (mean_v + slope * (t - mean_t)) for t, v in points]
    spread = statistics.pstdev(residuals) if len(residuals) > 1 else 0.0
    drift = slope * (max(ts) - min(ts))
    noise = max(FLAT_SHARE * abs(mean_v), 2 * spread)
    return Verdict(
        series=name,
        mean=round(mean_v, 2),
        drift=round(drift, 2),
        noise=round(noise, 2),
        flat=abs(drift) <= noise,
    )


@dataclass
class _Sampler:
    system: Relayflow
    every: float
    rows: list[dict[str, float]]
    vacuum: bool

    async def run(self, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        conn = await asyncpg.connect(self.system.database_url)
        try:
            t0 = loop.time()
            while True:
                if self.vacuum:
                    # In autovacuum's place (off on this server): plain VACUUM, which makes
                    # the space of deleted rows reusable, as autovacuum would.
                    await conn.execute(f"VACUUM {', '.join(TABLES)}")
                self.rows.append(await sample(self.system, conn, loop.time() - t0))
                print(f"    {self.rows[-1]}", flush=True)
                try:
                    await asyncio.wait_for(stop.wait(), self.every)
                    return
                except TimeoutError:
                    pass
        finally:
            await conn.close()


async def run_soak(
    system: Relayflow,
    *,
    minutes: float,
    every: float,
    calibrate_n: int,
    concurrency: int,
    warmup: int,
) -> Soak:
    """Start `system`, calibrate, soak at half the throughput, sample; stop it."""
    try:
        await system.start()
        if warmup:
            await system.run(5, warmup, min(concurrency, 10))
        calibration = await system.run(5, calibrate_n, concurrency)
        rate = calibration.throughput / 2
        print(f"  soak: {calibration.throughput:.1f}/s measured, soaking at {rate:.1f}/s for "
              f"{minutes:g} min, sampling every {every:g} s", flush=True)  # fmt: skip
        rows: list[dict[str, float]] = []
        conn = await asyncpg.connect(system.database_url)
        try:
            vacuum = await conn.fetchval("SHOW autovacuum") != "on"
        finally:
            await conn.close()
        if vacuum:
            print(f"  soak: autovacuum is off on this server; the sampler runs VACUUM every "
                  f"{every:g} s in its place", flush=True)  # fmt: skip
        stop = asyncio.Event()
        sampler = asyncio.create_task(_Sampler(system, every, rows, vacuum).run(stop))
        try:
            loaded = await open_loop(system, rate=rate, seconds=minutes * 60, rate_source="soak")
        finally:
            stop.set()
            await sampler
    finally:
        await system.stop()
    half = rows[len(rows) // 2 :]
    series = [key for key in rows[0] if key.endswith("MiB")] + [*TABLES, "dead rows"]
    verdicts = [verdict(key, [(r["t"], r[key]) for r in half]) for key in series]
    return Soak(
        rate=round(rate, 2),
        calibrated=round(calibration.throughput, 2),
        minutes=minutes,
        window_s=WINDOW,
        vacuum=f"the soak's VACUUM every {every:g} s (autovacuum off)" if vacuum else "autovacuum",
        samples=rows,
        verdicts=verdicts,
        flat=all(v["flat"] for v in verdicts),
        open_loop=loaded,
    )


def render_soak(soak: Soak) -> str:
    """The samples as a table, then the verdict per series."""
    rows = soak["samples"]
    keys = list(rows[0])
    labels = [k.replace("orchestrator", "orch") for k in keys]
    widths = [
        max(len(label), *(len(_num(r[k])) for r in rows))
        for label, k in zip(labels, keys, strict=True)
    ]
    lines = [
        f"Soak: {soak['minutes']:g} min at {soak['rate']:.1f} workflows/s (half of "
        f"{soak['calibrated']:.1f}/s measured), every retention window {soak['window_s']} s, "
        f"dead rows reclaimed by {soak['vacuum']}",
        "  ".join(label.rjust(w) for label, w in zip(labels, widths, strict=True)),
    ]
    lines.extend(
        "  ".join(_num(r[k]).rjust(w) for k, w in zip(keys, widths, strict=True)) for r in rows
    )
    lines.append("")
    lines.append("Last half of the samples: the drift its slope predicts over it, and the noise")
    lines.extend(
        f"  {v['series']:<22} mean {v['mean']:>10} drift {v['drift']:>+10} noise "
        f"{v['noise']:>8}  {_shape(v)}"
        for v in soak["verdicts"]
    )
    loaded = soak["open_loop"]
    lines.append(
        f"Verdict: {'flat' if soak['flat'] else 'not flat'}; {loaded['completed']} of "
        f"{loaded['sent']} workflows completed ({loaded['failed']} failed, {loaded['refused']} "
        f"refused), accept p99 {loaded['accept_p99_ms']} ms"
    )
    return "\n".join(lines)


def _shape(v: Verdict) -> str:
    return "flat" if v["flat"] else "GROWING" if v["drift"] > 0 else "falling"


def _num(value: float) -> str:
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return str(int(value))
    return f"{value:.1f}" if not math.isnan(value) else "-"
