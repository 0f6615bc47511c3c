"""The bench's arithmetic: percentiles, medians, ratios and the issues' targets."""

from __future__ import annotations

import math
import subprocess
import sys

from bench.floor import Floor
from bench.measure import cpu_split, median, percentile, process_cpu_ms
from bench.openloop import OpenLoop, schedule
from bench.profile import summarise
from bench.report import (
    Baseline,
    ChildRun,
    Kinds,
    MapRun,
    child_figures,
    kind_targets,
    ratios,
    render,
    render_kinds,
    render_open_loop,
    targets,
    with_floor,
)


def test_percentile_interpolates_and_handles_empty() -> None:
    """p50 of an even count is the midpoint; no samples give NaN rather than a crash."""
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert math.isnan(percentile([], 50))
    assert median([None, 3.0, float("nan"), 1.0]) == 2.0


def test_ratios_and_targets_use_the_better_dbos_variant() -> None:
    """Ours ÷ peer per metric; DBOS targets are checked against its stronger variant."""
    systems: dict[str, dict[str, float | None]] = {
        "relayflow": {"throughput": 200.0, "p50_1": 10.0, "p50_c": 100.0, "p99_c": 140.0},
        "celery-pg": {"throughput": 50.0, "p50_1": 20.0},
        "dbos": {"throughput": 80.0, "p50_1": 12.0},
        "dbos-queue": {"throughput": 120.0, "p50_1": 30.0},
    }
    assert ratios(systems)["celery-pg"]["throughput"] == 4.0
    checks = {c["target"]: c for c in targets(systems)}
    assert checks["throughput / DBOS"]["vs"] == "dbos-queue"
    assert not checks["throughput / DBOS"]["met"]
    assert checks["p50 at 1 in flight / DBOS"]["vs"] == "dbos"
    assert checks["p99 / own p50 under load"]["met"]
    assert "relayflow" in render(systems, {}, 50, 1, {})


def test_profile_summary_groups_by_area() -> None:
    """py-spy's collapsed stacks become self/inclusive shares by function and by area."""
    raw = (
        "run (asyncio/base_events.py:1);execute (asyncpg/connection.py:10) 3\n"
        "run (asyncio/base_events.py:1);dumps (services/orchestrator/store.py:5) 1\n"
    )
    text = summarise(raw, "orchestrator")
    assert "4 samples" in text
    assert "75.0% self" in text
    assert "asyncpg (PostgreSQL driver)" in text


# Burns 0.3 s of CPU, says so, then waits for its stdin to close.
_BURN = (
    "import sys, time\n"
    "end = time.process_time() + 0.3\n"
    "while time.process_time() < end: pass\n"
    "print('burnt', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_cpu_split_charges_a_child_to_its_parents_role() -> None:
    """The per-process CPU split must follow process trees (Celery's prefork children, a
    service's subprocesses), or a system's cost would hide under `other`."""
    # The parent only starts the burner (inheriting its pipes) and waits for it.
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {_BURN!r}])"
    before = process_cpu_ms()
    with subprocess.Popen(
        [sys.executable, "-c", spawn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as parent:
        try:
            assert parent.stdout is not None
            assert parent.stdout.readline() == "burnt\n"
            split = cpu_split(before, process_cpu_ms(), {parent.pid: "service"})
        finally:
            parent.kill()
    # Counted whole (neither process existed before), and not under `other`.
    assert split["service"] >= 300


def _map_run(items: int, wall: float, rows: float, cpu: float) -> MapRun:
    return MapRun(
        items=items,
        wall_s=wall,
        items_per_s=items / wall,
        per_item={
            "rows_per_item": rows,
            "wal_bytes_per_item": 4000.0,
            "db_bytes_per_item": 1500.0,
            "cpu_ms_per_item": cpu,
        },
        rows_per_item_by_table={"step_items": 3.0, "imported_items": 1.0},
        cpu_ms_per_item_by_role={"orchestrator1": 1.2, "steps1": 1.1},
        peak_mib={"orchestrator1": 50.0, "steps1": 49.0},
        peak_reset=True,
    )


def test_map_and_child_section_ratios_and_flatness() -> None:
    """Items/s is judged against the same run's steps/s (workflows/s x 5), per-item costs of the
    largest map against the smallest's, and a child step against a task step."""
    kinds = Kinds(
        baseline=Baseline(n=1000, concurrency=50, workflows_per_s=100.0, cpu_ms_per_step=3.0),
        # Given out of order: the section sorts by size.
        map=[_map_run(10_000, 20.0, 12.0, 6.0), _map_run(1000, 2.0, 11.7, 5.0)],
        child=ChildRun(n=100, nested_p50_ms=40.0, plain3_p50_ms=30.0, plain1_p50_ms=14.0, errors=0),
    )
    checks = {c["target"]: c for c in kind_targets(kinds)}
    rate = checks["map items/s ÷ five-step steps/s, 1000 items"]
    assert (rate["value"], rate["met"]) == (1.0, True)  # 500 items/s ÷ 500 steps/s
    rows = checks["per item, 10000 ÷ 1000: rows written (ins+upd+del)"]
    assert rows["met"]
    assert rows["value"] == round(12.0 / 11.7, 3)
    cpu = checks["per item, 10000 ÷ 1000: machine CPU, ms"]
    assert (cpu["value"], cpu["met"]) == (1.2, True)  # at the bound still counts as flat
    assert not any("database growth" in target for target in checks)  # reported, not judged
    child = child_figures(kinds["child"])
    assert child["child_step_ms"] == 13.0
    assert child["task_step_ms"] == 8.0
    assert child["child_over_task"] == 13.0 / 8.0
    text = render({}, {}, 50, 1, {}, kinds=kinds)
    assert text.startswith("Map steps")  # no systems measured: no empty peer table
    assert text.index("1000 items") < text.index("10000 items")
    assert "child step ÷ task step" in text
    assert "Targets of issue 8" in text


def test_map_section_without_baseline_or_second_size() -> None:
    """One map alone, no five-step run: figures shown, no ratio or flatness claimed."""
    kinds = Kinds(map=[_map_run(100, 1.0, 12.0, 5.0)])
    assert kind_targets(kinds) == []
    text = render_kinds(kinds)
    assert "items/s ÷ steps/s" not in text
    assert "100 items" in text


def _floor(step_floor_ms: float) -> Floor:
    return Floor(
        n=10,
        runs=1,
        when="on its own",
        queue_type="quorum",
        round_trip_p50_ms=step_floor_ms - 1.0,
        round_trip_p99_ms=step_floor_ms,
        confirm_p50_ms=1.0,
        commit_p50_ms=0.5,
        commit_p99_ms=1.0,
        transaction_p50_ms=1.2,
        step_floor_ms=step_floor_ms,
        load=(1.0, 1.0, 1.0),
    )


def test_floor_multiples_and_target() -> None:
    """Every system's marginal step and p50 become multiples of the one floor; ours is checked
    against 1.3x, and the multiples are not divided again into peer ratios."""
    systems: dict[str, dict[str, float | None]] = {
        "relayflow": {"marginal_step": 6.0, "p50_1": 40.0},
        "dbos": {"marginal_step": 3.0, "p50_1": None},
    }
    floored = with_floor(systems, _floor(4.0))
    assert floored["relayflow"]["marginal_floor"] == 1.5
    assert floored["relayflow"]["p50_1_floor"] == 10.0
    assert floored["dbos"]["p50_1_floor"] is None
    assert "marginal_floor" not in ratios(floored)["dbos"]
    (check,) = [c for c in targets(floored) if c["vs"] == "floor"]
    assert (check["value"], check["met"]) == (1.5, False)
    assert "floor of a step" in render(floored, {}, 50, 1, {}, floor=_floor(4.0))


def test_open_loop_schedule_and_targets() -> None:
    """Even arrivals are exactly 1/rate apart; Poisson ones are seeded and near the rate; the
    open loop's accept p99 and its completions are targets."""
    assert schedule(4.0, 1.0, "even") == [0.0, 0.25, 0.5, 0.75]
    poisson = schedule(100.0, 10.0, "poisson")
    assert poisson == schedule(100.0, 10.0, "poisson")
    assert 900 < len(poisson) < 1100
    assert all(0 < t < 10 for t in poisson)
    run = OpenLoop(
        arrivals="even", rate_source="--rate", requested_rate=20.0, scheduled_rate=20.0,
        seconds=0.5, scheduled=10, sent=10, achieved_rate=20.0, accepted=10, refused=0,
        completed=9, failed=1, accept_p50_ms=4.0, accept_p99_ms=8.0, accept_max_ms=8.0,
        e2e_p50_ms=50.0, e2e_p99_ms=60.0, lag_p50_ms=0.1, lag_p99_ms=0.2, connections=1,
        client_cpu_share=0.02, cpu_ms_per_wf_by_role={}, client_ok=True, client_notes=[],
        load=(1.0, 1.0, 1.0),
    )  # fmt: skip
    checks = {c["target"]: c for c in targets({}, open_loop=run)}
    assert checks["HTTP accept p99, open loop at 20.0/s (ms)"]["met"]
    assert not checks["open loop: accepted workflows completed"]["met"]
    assert "the client kept up" in render_open_loop(run)
