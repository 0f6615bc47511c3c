"""`python -m bench`: relayflow against Celery and DBOS, side by side in one run.

Each repetition starts every system afresh (its own database and queue names on the shared
RabbitMQ and PostgreSQL), runs its phases, records peak memory and stops it; the systems'
order rotates from one repetition to the next, and the figures are medians over repetitions.
Phases per system: warm-up; `--serial-n` five-step workflows at 1 in flight; `--n` at
`--concurrency` in flight (throughput, latency, HTTP accept, machine CPU per workflow); 1- and
10-step workflows at 1 in flight (`--marginal-n` each) for the marginal cost of a step.
`relayflow-local` is relayflow again, the same phases on chains whose every step is a local task
(run inside the orchestrator's transaction: issue 12's "light steps local").
`relayflow-broker` is relayflow with every command through the broker
(`RELAYFLOW_STEP_EAGER=false`): no step handed over in process by the step service that advanced
its workflow (eager dispatch).
`relayflow-classic` is relayflow on classic queues (`RELAYFLOW_QUEUE_TYPE=classic`): no
replication and no delivery limit, against the quorum queues of the default.
Then the scale-out run (2 orchestrators, 2 step services) and the SSE fan-out run.

The parts `map` and `child` (issue 8) run once, after the repetitions, on their own set of our
processes that also serves `apps.batch_import`: warm-up, `--n` five-step workflows at
`--concurrency` (steps/s of the same run), one `batchImport` per `--map-items` size (wall time,
items/s, rows, WAL and bytes written per item, peak memory), then `--child-n` workflows each of
a parent -> child -> grandchild chain, three plain steps and one step, at 1 in flight.
`--only map,child` runs just those.

The part `hops` (issue 12) runs `--hops-n` five-step workflows at 1 in flight on its own set of
our processes with `RELAYFLOW_HOP_TRACE` on, and prints where the time of a step goes: each hop
from the gateway's accept to the SSE event written, its median and p99 (`bench.hops`).

The part `floor` (issue 12) measures the machine's floor of a step on the same broker and
database, with a tiny aio-pika + asyncpg program (`bench.floor`): `--floor-n` round trips at 1
in flight of a persistent, confirmed publish on a quorum queue to a consumer in another process
and its confirmed reply, and `--floor-n` small INSERT + COMMITs; floor of a step = round trip
p50 + 2 commits p50. It runs right after relayflow's phases in each repetition (the median of
those is the floor), or once when relayflow does not run. Our marginal cost of a step and our
p50 at 1 in flight are shown as multiples of it, and the target "marginal cost of a remote step
<= 1.3x the floor" is checked.

The part `open-loop` (issue 12) sends POST /workflows/bench5 at a fixed arrival rate (Poisson,
or `--arrivals even`) for `--open-seconds` on its own set of our processes: by default half of
our workflows/s of this run's loaded phase (without one, of a closed loop of `--n` on those
processes first), or `--rate`. It reports the 202's latency p50 and p99, that every accepted
workflow completed, and the client's own health: its CPU, how late requests left against the
schedule, the rate achieved against the rate scheduled (`bench.openloop`).

The part `db-cost` (issues 12 and 13) runs `--n` five-step workflows at `--concurrency` on its own
set of our processes and reports what each cost the database: commits, rows written by table,
WAL bytes (`bench.dbcost`).

`--soak MINUTES` (issue 11, retention) runs only the soak (`bench.soak`): relayflow with short
retention windows at half the throughput measured at its start, for MINUTES, sampling each
service's memory, the database's size and the main tables' rows every `--soak-every` seconds,
and reports the table and whether the last half is flat.

The last line of output is `BENCH_JSON {...}`, everything in one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bench.dbcost import render_dbcost, run_dbcost
from bench.driver import System
from bench.fanout import fanout
from bench.floor import Floor, median_floor, run_floor
from bench.hops import render_hops, run_hops
from bench.infra import Infra
from bench.kinds import APP, run_kinds
from bench.measure import Phase, median
from bench.openloop import Arrivals, OpenLoop, run_open_loop
from bench.ours import Relayflow
from bench.report import (
    BROKER,
    CLASSIC,
    LOCAL,
    OURS,
    PEERS,
    SCALE,
    figures,
    kind_targets,
    medians,
    ratios,
    render,
    targets,
    with_floor,
)
from bench.soak import ENV as SOAK_ENV
from bench.soak import render_soak, run_soak

ALL = (OURS, BROKER, LOCAL, CLASSIC, *PEERS)
MAP, CHILD, HOPS, FLOOR, OPEN = "map", "child", "hops", "floor", "open-loop"
DBCOST = "db-cost"
PARTS = (MAP, CHILD, HOPS, FLOOR, OPEN, DBCOST)
NEEDS = {
    "celery-pg": ("celery", "sqlalchemy", "psycopg2"),
    "celery-rpc": ("celery", "psycopg2"),
    "dbos": ("dbos", "psycopg2"),
    "dbos-queue": ("dbos", "psycopg2"),
}


@dataclass(frozen=True)
class Options:
    n: int
    concurrency: int
    serial_n: int
    marginal_n: int
    warmup: int
    repeat: int
    only: tuple[str, ...]
    scale: bool
    fanout: int
    log_dir: Path
    profile: Path | None
    map_items: tuple[int, ...] = ()
    child_n: int = 0
    hops_n: int = 0
    floor_n: int = 0
    open_seconds: float = 0.0
    rate: float | None = None
    arrivals: Arrivals = "poisson"
    soak: float = 0.0
    soak_every: float = 15.0
    db_cost: bool = False
    cluster: bool = False

    @property
    def systems(self) -> tuple[str, ...]:
        return tuple(name for name in self.only if name in ALL)


def parse(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, help="workflows in the loaded phase (default 1000)")
    parser.add_argument("--concurrency", type=int, default=50, help="in flight (default 50)")
    parser.add_argument("--serial-n", type=int, help="workflows at 1 in flight (default 300)")
    parser.add_argument("--marginal-n", type=int, help="1- and 10-step workflows each (100)")
    parser.add_argument("--warmup", type=int, help="warm-up workflows per system (default 50)")
    parser.add_argument("--repeat", type=int, help="interleaved repetitions (default 3)")
    parser.add_argument(
        "--only",
        default=",".join((*ALL, *PARTS)),
        help=f"comma-separated systems and parts (default: all of {','.join((*ALL, *PARTS))})",
    )
    parser.add_argument(
        "--map-items",
        help="comma-separated batchImport sizes of the map part (default 1000,10000; "
        "quick 100,1000)",
    )
    parser.add_argument(
        "--child-n", type=int, help="workflows of each shape in the child part (default 100)"
    )
    parser.add_argument(
        "--hops-n", type=int, help="workflows of the per-hop breakdown (default 200)"
    )
    parser.add_argument(
        "--floor-n", type=int, help="round trips and commits of the floor part (default 500)"
    )
    parser.add_argument(
        "--open-seconds", type=float, help="duration of the open-loop part (default 30 s)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        help="arrivals/s of the open-loop part (default: half of the loaded phase's workflows/s)",
    )
    parser.add_argument(
        "--arrivals",
        choices=("poisson", "even"),
        default="poisson",
        help="open-loop arrivals: Poisson (default) or evenly spaced",
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="run only the soak: MINUTES at half the measured throughput, retention windows "
        "short, memory and database size sampled (bench.soak)",
    )
    parser.add_argument(
        "--soak-every", type=float, default=15.0, help="seconds between soak samples (15)"
    )
    parser.add_argument("--no-scale", action="store_true", help="skip the scale-out run")
    parser.add_argument(
        "--fanout", type=int, help="SSE subscribers of the fan-out run, 0 to skip (default 1000)"
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="a short run: n 200, serial 50, marginal 30, warm-up 20, 1 repetition, fan-out 200, "
        "maps of 100 and 1000 items, child 30, hops 50, floor 100, open loop 10 s",
    )  # fmt: skip
    parser.add_argument(
        "--cluster",
        action="store_true",
        help="on a private three-node RabbitMQ cluster and a PostgreSQL primary with a "
        "synchronous standby (issue 13); our systems and parts only",
    )
    parser.add_argument("--log-dir", type=Path, help="service logs (default: a temp dir)")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="py-spy each of our services during relayflow's loaded phase (first repetition) "
        "and the largest map (in DIR/map), and write text summaries to DIR",
    )
    args = parser.parse_args(argv)
    quick = args.quick
    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = sorted(set(only) - set(ALL) - set(PARTS))
    if unknown or not only:
        parser.error(f"unknown systems {unknown}; choose from {','.join((*ALL, *PARTS))}")
    peers = sorted(set(only) - {OURS, BROKER, LOCAL, CLASSIC, DBCOST})
    if args.cluster and peers:
        parser.error(f"--cluster runs our systems and db-cost only, not {peers}")

    def pick(value: int | None, full: int, short: int) -> int:
        return value if value is not None else (short if quick else full)

    sizes = args.map_items or ("100,1000" if quick else "1000,10000")
    try:
        map_items = tuple(sorted({int(size) for size in sizes.split(",") if size.strip()}))
    except ValueError:
        parser.error(f"--map-items takes comma-separated integers, not {sizes!r}")
    if MAP in only and (not map_items or not all(1 <= size <= 10_000 for size in map_items)):
        parser.error("--map-items: sizes from 1 to 10000 (batchImport's limit)")

    return Options(
        n=pick(args.n, 1000, 200),
        concurrency=args.concurrency,
        serial_n=pick(args.serial_n, 300, 50),
        marginal_n=pick(args.marginal_n, 100, 30),
        warmup=pick(args.warmup, 50, 20),
        repeat=pick(args.repeat, 3, 1),
        only=only,
        scale=not args.no_scale and OURS in only,
        fanout=pick(args.fanout, 1000, 200) if OURS in only else 0,
        log_dir=args.log_dir or Path(tempfile.mkdtemp(prefix="relayflow-bench-")),
        profile=args.profile,
        map_items=map_items if MAP in only else (),
        child_n=pick(args.child_n, 100, 30) if CHILD in only else 0,
        hops_n=pick(args.hops_n, 200, 50) if HOPS in only else 0,
        floor_n=pick(args.floor_n, 500, 100) if FLOOR in only else 0,
        open_seconds=_seconds(args.open_seconds, quick) if OPEN in only else 0.0,
        rate=args.rate,
        arrivals=args.arrivals,
        soak=args.soak or 0.0,
        soak_every=args.soak_every,
        db_cost=DBCOST in only,
        cluster=args.cluster,
    )


def _seconds(value: float | None, quick: bool) -> float:
    """The open loop's duration: as given (0 skips it), else 30 s, 10 s under --quick."""
    return value if value is not None else (10.0 if quick else 30.0)


def missing_packages(name: str) -> list[str]:
    return [pkg for pkg in NEEDS.get(name, ()) if importlib.util.find_spec(pkg) is None]


# Our variants that differ from the default by their environment alone.
VARIANT_ENV = {
    BROKER: {"RELAYFLOW_STEP_EAGER": "false"},
    CLASSIC: {"RELAYFLOW_QUEUE_TYPE": "classic"},
}


def make_system(name: str, infra: Infra, log_dir: Path) -> System:
    if name == OURS:
        return Relayflow(infra, log_dir)
    if name == LOCAL:
        return Relayflow(infra, log_dir, name=LOCAL, local=True)
    if name in VARIANT_ENV:
        return Relayflow(infra, log_dir, name=name, extra_env=VARIANT_ENV[name])
    if name == SCALE:
        return Relayflow(infra, log_dir, orchestrators=2, step_services=2, name=SCALE)
    if name.startswith("celery-"):
        from bench.celery_peer import CeleryPeer

        return CeleryPeer(infra, log_dir, backend=name.removeprefix("celery-"))
    from bench.dbos_peer import DbosPeer

    return DbosPeer(infra, log_dir, queued=name == "dbos-queue")


async def run_system(
    system: System, options: Options, *, load_only: bool = False, profile: Path | None = None
) -> tuple[dict[str, Phase], dict[str, float | None]]:
    phases: dict[str, Phase] = {}
    c = options.concurrency
    try:
        await system.start()  # inside: a system that fails to start is still cleaned up
        if options.warmup:
            await system.run(5, options.warmup, min(c, 10))
        if not load_only:
            phases["serial"] = await system.run(5, options.serial_n, 1)
        if profile is not None and isinstance(system, Relayflow):
            from bench.profile import Profiler

            async with Profiler(system.pids(), profile):
                phases["load"] = await system.run(5, options.n, c)
        else:
            phases["load"] = await system.run(5, options.n, c)
        if not load_only:
            phases["marginal1"] = await system.run(1, options.marginal_n, 1)
            phases["marginal10"] = await system.run(10, options.marginal_n, 1)
        memory = system.memory()
    finally:
        await system.stop()
    return phases, memory


def _brief(name: str, phases: dict[str, Phase]) -> str:
    parts = []
    for key, phase in phases.items():
        parts.append(
            f"{key} {phase.throughput:.1f}/s p50 {phase.latency_ms(50):.1f} ms "
            f"p99 {phase.latency_ms(99):.1f} ms cpu {phase.cpu_ms_per_workflow:.1f} ms/wf"
            + (f" errors {phase.errors}" if phase.errors else "")
        )
    line = f"  {name}: " + "; ".join(parts)
    load = phases.get("load")
    if load is not None and load.cpu_by_role:
        split = ", ".join(f"{role} {ms}" for role, ms in load.cpu_per_workflow_by_role().items())
        line += f"\n    load CPU ms/wf by process: {split}"
    return line


async def amain(options: Options) -> dict[str, Any]:
    if not options.cluster:
        return await _amain(options, Infra.from_env())
    # Imported only here: the test tooling is not the bench's, but it is what starts them.
    from tests.tools.pg_standby import PostgresPair
    from tests.tools.rabbit_cluster import RabbitCluster

    async with RabbitCluster() as rabbits, PostgresPair() as pair:
        print(f"on a private three-node RabbitMQ cluster ({rabbits.url}) and a PostgreSQL "
              f"primary with a synchronous standby ({pair.url()})", flush=True)  # fmt: skip
        return await _amain(options, Infra(amqp_url=rabbits.url, server_url=pair.url()))


async def _amain(options: Options, infra: Infra) -> dict[str, Any]:
    unavailable: dict[str, str] = {}
    systems = [name for name in ALL if name in options.systems]
    for name in list(systems):
        missing = missing_packages(name)
        if missing:
            unavailable[name] = f"not installed: {', '.join(missing)} (pip install -e '.[bench]')"
            systems.remove(name)
    if options.scale:
        systems.append(SCALE)
    per_rep: dict[str, list[dict[str, float | None]]] = {name: [] for name in systems}
    memory: dict[str, list[dict[str, float | None]]] = {name: [] for name in systems}
    raw: dict[str, list[dict[str, Any]]] = {name: [] for name in systems}
    # The floor, measured right after our phases in each repetition: the machine's load moves
    # from minute to minute, and the multiples compare figures of the same minutes.
    floors: list[Floor] = []
    for rep in range(options.repeat if systems else 0):
        order = [s for s in systems if s not in unavailable]
        shift = rep % max(1, len(order))
        order = order[shift:] + order[:shift]
        print(f"repetition {rep + 1}/{options.repeat}: {', '.join(order)}", flush=True)
        for name in order:
            system = make_system(name, infra, options.log_dir / f"rep{rep + 1}")
            profile = options.profile if rep == 0 and name == OURS else None
            try:
                phases, mem = await run_system(
                    system, options, load_only=name == SCALE, profile=profile
                )
            except Exception as exc:  # a peer that cannot run here is reported, not fatal
                if name in (OURS, BROKER, LOCAL, CLASSIC):
                    raise
                unavailable[name] = f"failed: {exc!r}"[:500]
                print(f"  {name}: could not run ({exc!r}); skipping it from now on", flush=True)
                continue
            per_rep[name].append(figures(phases))
            memory[name].append(mem)
            raw[name].append({key: phase.summary() for key, phase in phases.items()})
            print(_brief(name, phases), flush=True)
            if name == OURS and options.floor_n:
                floors.append(await _floor(infra, options, "right after our phases"))
    if options.floor_n and not floors:
        floors.append(await _floor(infra, options, "on its own"))
    result = _collect(per_rep, memory, raw, unavailable, floors)
    await _parts(infra, options, result)
    floor: Floor | None = result.get("floor")
    if floor is not None:
        result["systems"] = with_floor(result["systems"], floor)
    result["targets"] = targets(result["systems"], open_loop=result.get("open_loop"))
    return result


def _collect(
    per_rep: dict[str, list[dict[str, float | None]]],
    memory: dict[str, list[dict[str, float | None]]],
    raw: dict[str, list[dict[str, Any]]],
    unavailable: dict[str, str],
    floors: list[Floor],
) -> dict[str, Any]:
    """The repetitions' medians, ratios and memory, and the floor's median."""
    medians_by_system = {name: medians(reps) for name, reps in per_rep.items() if reps}
    memory_medians = {
        name: {role: median(m.get(role) for m in mems) for role in mems[0]}
        for name, mems in memory.items()
        if mems
    }
    result: dict[str, Any] = {
        "systems": medians_by_system,
        "ratios": ratios(medians_by_system),
        "memory_mib": memory_medians,
        "unavailable": unavailable,
        "runs": raw,
    }
    if floors:
        result["floor"] = median_floor(floors)
        result["floor_runs"] = floors
    if SCALE in medians_by_system and OURS in medians_by_system:
        one, two = medians_by_system[OURS], medians_by_system[SCALE]
        single, scaled = one.get("throughput"), two.get("throughput")
        if single and scaled:
            result["scale_throughput_ratio"] = scaled / single
    return result


async def _parts(infra: Infra, options: Options, result: dict[str, Any]) -> None:
    """The parts that run once, after the repetitions, each on its own set of processes."""
    if options.map_items or options.child_n:
        print(f"map and child steps: maps of {', '.join(map(str, options.map_items)) or 'none'} "
              f"items, {options.child_n} chains of each shape", flush=True)  # fmt: skip
        result["kinds"] = await run_kinds(
            Relayflow(infra, options.log_dir / "kinds", name="relayflow-kinds", apps=[APP]),
            map_sizes=options.map_items,
            child_n=options.child_n,
            n=options.n,
            concurrency=options.concurrency,
            warmup=options.warmup,
            profile=options.profile / "map" if options.profile is not None else None,
        )
    if options.hops_n:
        result["hops"] = await _hops(infra, options)
    if options.db_cost:
        print(
            f"database cost: {options.n} workflows at {options.concurrency} in flight", flush=True
        )
        result["db_cost"] = await run_dbcost(
            Relayflow(infra, options.log_dir / "db-cost", name="relayflow-db-cost"),
            n=options.n,
            concurrency=options.concurrency,
        )
    if options.open_seconds:
        result["open_loop"] = await _open_loop(infra, options, result)
    if options.fanout:
        print(f"fan-out: {options.fanout} SSE subscribers of one workflow", flush=True)
        system = Relayflow(infra, options.log_dir / "fanout", name="relayflow-fanout")
        try:
            await system.start()
            result["fanout"] = await fanout(system, options.fanout)
        finally:
            await system.stop()


async def _floor(infra: Infra, options: Options, when: str) -> Floor:
    floor = await run_floor(
        infra, options.log_dir, n=options.floor_n, warmup=min(options.warmup, 50), when=when
    )
    print(f"  machine floor ({options.floor_n} of each at 1 in flight): round trip p50 "
          f"{floor['round_trip_p50_ms']:.2f} ms p99 {floor['round_trip_p99_ms']:.2f} ms, commit "
          f"p50 {floor['commit_p50_ms']:.2f} ms; a step {floor['step_floor_ms']:.2f} ms",
          flush=True)  # fmt: skip
    return floor


async def _hops(infra: Infra, options: Options) -> dict[str, Any]:
    print(f"per-hop breakdown: {options.hops_n} workflows at 1 in flight", flush=True)
    where = options.log_dir / "hops"
    trace_dir = where / "trace"
    system = Relayflow(
        infra, where, name="relayflow-hops", extra_env={"RELAYFLOW_HOP_TRACE": str(trace_dir)}
    )
    return await run_hops(system, trace_dir, n=options.hops_n, warmup=options.warmup)


async def _open_loop(infra: Infra, options: Options, result: dict[str, Any]) -> OpenLoop:
    rate, source = options.rate, "--rate"
    loaded = result["systems"].get(OURS, {}).get("throughput")
    if rate is None and loaded:
        rate, source = loaded / 2, f"half of {loaded:.1f}/s, this run's loaded phase"
    print(f"open loop: {options.arrivals} arrivals for {options.open_seconds:g} s at "
          f"{f'{rate:.1f}/s' if rate else 'half of a closed loop first'}", flush=True)  # fmt: skip
    system = Relayflow(infra, options.log_dir / "open-loop", name="relayflow-open-loop")
    return await run_open_loop(
        system,
        rate=rate,
        rate_source=source,
        seconds=options.open_seconds,
        arrivals=options.arrivals,
        warmup=options.warmup,
        calibrate_n=options.n,
        concurrency=options.concurrency,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    logging.basicConfig(level=logging.WARNING)
    started = time.time()
    print(f"relayflow bench: logs in {options.log_dir}", flush=True)
    if options.soak:
        _soak(options)
        return
    result = asyncio.run(amain(options))
    extra: dict[str, Any] = {}
    if "scale_throughput_ratio" in result:
        extra["Scale-out (2 orchestrators + 2 step services) ÷ 1 + 1, throughput"] = (
            f"{result['scale_throughput_ratio']:.2f}x"
        )
    if "fanout" in result:
        extra["SSE fan-out on one gateway"] = ", ".join(
            f"{k} {v}" for k, v in result["fanout"].items()
        )
    for name, why in result["unavailable"].items():
        extra[f"{name} not measured"] = why
    print()
    print(render(result["systems"], result["memory_mib"], options.concurrency, options.repeat,
                 extra, kinds=result.get("kinds"), floor=result.get("floor"),
                 open_loop=result.get("open_loop")))  # fmt: skip
    if "hops" in result:
        print()
        print(render_hops(result["hops"]))
    if "db_cost" in result:
        print()
        print(render_dbcost(result["db_cost"]))
    if "kinds" in result:
        result["kind_targets"] = kind_targets(result["kinds"])
    result["config"] = {
        "n": options.n,
        "concurrency": options.concurrency,
        "serial_n": options.serial_n,
        "marginal_n": options.marginal_n,
        "warmup": options.warmup,
        "repeat": options.repeat,
        "map_items": list(options.map_items),
        "child_n": options.child_n,
        "hops_n": options.hops_n,
        "floor_n": options.floor_n,
        "open_seconds": options.open_seconds,
        "rate": options.rate,
        "arrivals": options.arrivals,
        "load_at_end": os.getloadavg(),
        "cpus": _cpus(),
        "python": platform.python_version(),
        "seconds": round(time.time() - started, 1),
    }
    print("BENCH_JSON " + orjson.dumps(result).decode())
    sys.stdout.flush()


def _soak(options: Options) -> None:
    system = Relayflow(
        Infra.from_env(), options.log_dir / "soak", name="relayflow-soak", extra_env=SOAK_ENV
    )
    result = asyncio.run(
        run_soak(
            system,
            minutes=options.soak,
            every=options.soak_every,
            calibrate_n=options.n,
            concurrency=options.concurrency,
            warmup=options.warmup,
        )
    )
    print()
    print(render_soak(result))
    print("BENCH_JSON " + orjson.dumps({"soak": result}).decode())
    sys.stdout.flush()


def _cpus() -> int:
    return len(os.sched_getaffinity(0))
