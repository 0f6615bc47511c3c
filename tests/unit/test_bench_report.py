"""The bench's arithmetic: percentiles, medians, ratios and the issue's targets."""

from __future__ import annotations

import math
import subprocess
import sys

from bench.measure import cpu_split, median, percentile, process_cpu_ms
from bench.profile import summarise
from bench.report import ratios, render, targets


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
