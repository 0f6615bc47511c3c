"""A tiny run of the benchmark harness against our own system only, so that `python -m bench`
keeps working: the real services as processes, a few workflows at 1 and 2 in flight."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.cli import parse
from bench.dbcost import render_dbcost, run_dbcost
from bench.floor import run_floor
from bench.hops import render_hops, run_hops
from bench.infra import Infra
from bench.kinds import APP, run_kinds
from bench.openloop import run_open_loop
from bench.ours import Relayflow
from bench.report import figures, render_floor, render_kinds, render_open_loop

pytestmark = pytest.mark.timeout(60)


async def test_bench_harness_drives_relayflow(
    service_endpoints: tuple[str, str], tmp_path: Path
) -> None:
    """Each workflow is submitted over HTTP and completes on its SSE stream; figures come out."""
    amqp_url, server_url = service_endpoints
    system = Relayflow(Infra(amqp_url=amqp_url, server_url=server_url), tmp_path)
    await system.start()
    try:
        serial = await system.run(5, 3, 1)
        load = await system.run(5, 6, 2)
        one = await system.run(1, 2, 1)
        ten = await system.run(10, 2, 1)
        memory = system.memory()
    finally:
        await system.stop()
    assert (serial.errors, load.errors, one.errors, ten.errors) == (0, 0, 0, 0)
    assert len(load.samples) == 6
    assert all(s.accept is not None and s.accept <= s.latency for s in load.samples)
    result = figures({"serial": serial, "load": load, "marginal1": one, "marginal10": ten})
    assert result["throughput"] is not None
    assert result["throughput"] > 0
    assert result["marginal_step"] is not None
    assert set(memory) == {"gateway", "orchestrator1", "steps1"}
    assert all(v is not None and v > 10 for v in memory.values())


async def test_bench_map_and_child_parts(
    service_endpoints: tuple[str, str], tmp_path: Path
) -> None:
    """`--only map,child` keeps working: batchImport served beside the bench's workflows, a tiny
    map measured per item, and the nested chain completing through its child workflows."""
    amqp_url, server_url = service_endpoints
    infra = Infra(amqp_url=amqp_url, server_url=server_url)
    system = Relayflow(infra, tmp_path, name="relayflow-kinds", apps=[APP])
    kinds = await run_kinds(
        system, map_sizes=(3,), child_n=2, n=4, concurrency=2, warmup=0, stats_flush=0.0
    )
    (run,) = kinds["map"]
    assert run["items"] == 3
    assert run["items_per_s"] > 0
    assert run["peak_mib"]["orchestrator1"] is not None
    assert kinds["baseline"]["workflows_per_s"] > 0
    child = kinds["child"]
    assert child["errors"] == 0
    assert child["nested_p50_ms"] > 0
    assert "Map steps" in render_kinds(kinds)


async def test_bench_hops_part(service_endpoints: tuple[str, str], tmp_path: Path) -> None:
    """`--only hops` keeps working: the services record their hops with the setting on, and
    every workflow joins into one chain whose means add up to the measured end-to-end time."""
    amqp_url, server_url = service_endpoints
    env = {"RELAYFLOW_HOP_TRACE": str(tmp_path / "trace")}
    system = Relayflow(Infra(amqp_url, server_url), tmp_path, name="hops", extra_env=env)
    result = await run_hops(system, tmp_path / "trace", n=3, warmup=1)
    assert (result["errors"], result["workflows"], result["joined"]) == (0, 3, 3)
    assert result["sum_of_means_ms"] == pytest.approx(result["e2e_mean_ms"], rel=0.05)
    assert "step: body" in render_hops(result)


async def test_bench_floor_part(service_endpoints: tuple[str, str], tmp_path: Path) -> None:
    """`--only floor` keeps working: the consumer process answers every confirmed publish on
    its quorum queue, the commits run, and the floor of a step is the round trip plus two."""
    amqp_url, server_url = service_endpoints
    floor = await run_floor(Infra(amqp_url, server_url), tmp_path, n=5, warmup=1)
    assert floor["n"] == 5
    assert floor["round_trip_p50_ms"] > 0
    assert floor["commit_p50_ms"] > 0
    assert floor["step_floor_ms"] == pytest.approx(
        floor["round_trip_p50_ms"] + 2 * floor["commit_p50_ms"], abs=0.01
    )
    assert "floor of a step" in render_floor(floor, {"marginal_floor": 2.0})


async def test_bench_open_loop_part(service_endpoints: tuple[str, str], tmp_path: Path) -> None:
    """`--only open-loop` keeps working: without a rate it measures a short closed loop first,
    then sends on its schedule, and every accepted workflow is followed to its completion."""
    amqp_url, server_url = service_endpoints
    system = Relayflow(Infra(amqp_url, server_url), tmp_path, name="open-loop")
    run = await run_open_loop(
        system, rate=None, rate_source="", seconds=1.0, arrivals="even", warmup=0,
        calibrate_n=4, concurrency=2,
    )  # fmt: skip
    assert run["requested_rate"] > 0
    assert "closed loop of 4" in run["rate_source"]
    assert run["sent"] == run["scheduled"]
    assert run["refused"] == run["failed"] == 0
    assert run["accepted"] == run["completed"] == run["sent"]
    assert "Open loop" in render_open_loop(run)


async def test_bench_db_cost_part(service_endpoints: tuple[str, str], tmp_path: Path) -> None:
    """`--only db-cost` keeps working: every service's writes are counted (the step service's
    too, reported once its connections end), per workflow: one row in `workflows` and one
    invocation of each of the five steps, taken and then recorded."""
    amqp_url, server_url = service_endpoints
    system = Relayflow(Infra(amqp_url, server_url), tmp_path, name="db-cost")
    cost = await run_dbcost(system, n=4, concurrency=2)
    assert cost["tables"]["workflows"]["inserted"] == 1
    assert cost["tables"]["step_invocations"]["inserted"] == 5
    assert cost["tables"]["step_invocations"]["updated"] == 5
    assert cost["commits"] > 0
    # At least the primary key of every row inserted: workflows, invocations, events, inbox.
    assert cost["index_entries"] >= 1 + 5 + 5 + 1
    assert "database cost per five-step workflow" in render_dbcost(cost)


def test_bench_cli_selects_the_floor_and_open_loop_parts() -> None:
    """`--only floor,open-loop --quick` runs just those two parts, in their short versions."""
    options = parse(["--quick", "--only", "floor,open-loop", "--arrivals", "even"])
    assert (options.systems, options.floor_n, options.open_seconds) == ((), 100, 10.0)
    assert (options.hops_n, options.child_n, options.fanout, options.arrivals) == (0, 0, 0, "even")
