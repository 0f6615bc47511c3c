"""Figures from phases, medians over repetitions, ratios to the peers, the issue's targets, and
the readable table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

from bench.measure import Phase, median

if TYPE_CHECKING:
    from bench.floor import Floor
    from bench.openloop import OpenLoop

OURS = "relayflow"
SCALE = "relayflow-scale"
# Ours again, with every step of the chains a local task (run inside the orchestrator).
LOCAL = "relayflow-local"
# Ours again, on classic queues instead of quorum queues (RELAYFLOW_QUEUE_TYPE=classic).
CLASSIC = "relayflow-classic"
# Ours again, every command through the broker (RELAYFLOW_STEP_EAGER=false): no step's command
# handed over in process (eager dispatch), as before it.
BROKER = "relayflow-broker"
# Our variants: not peers, no ratios against them.
VARIANTS = (SCALE, LOCAL, CLASSIC, BROKER)
PEERS = ("celery-pg", "celery-rpc", "dbos", "dbos-queue")
DBOS_VARIANTS = ("dbos", "dbos-queue")

# metric -> (label, unit, lower is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "throughput": ("workflows/s at {c} in flight", "/s", False),
    "p50_1": ("latency p50, 1 in flight", "ms", True),
    "p99_1": ("latency p99, 1 in flight", "ms", True),
    "p50_c": ("latency p50, {c} in flight", "ms", True),
    "p99_c": ("latency p99, {c} in flight", "ms", True),
    "accept_p50": ("HTTP accept p50 under load", "ms", True),
    "accept_p99": ("HTTP accept p99 under load", "ms", True),
    "marginal_step": ("marginal cost per step", "ms", True),
    "cpu_per_wf": ("machine CPU per workflow at {c} in flight", "ms", True),
    "errors": ("failed workflows (all phases)", "", True),
    # Against the machine's floor of a step, measured once in the run (`bench.floor`).
    "marginal_floor": ("marginal cost per step ÷ the machine's floor of a step", "x", True),
    "p50_1_floor": ("latency p50, 1 in flight ÷ the floor of a step (5 steps)", "x", True),
}
# Multiples of the floor: a ratio of two systems' multiples is their ratio of the figure itself.
FLOOR_METRICS = ("marginal_floor", "p50_1_floor")
# Issue 12: a remote step's marginal cost at most this multiple of the machine's floor.
FLOOR_BOUND = 1.3
# Issue 12: HTTP accept p99 in the open loop at half the maximum throughput, ms.
OPEN_ACCEPT_BOUND_MS = 10.0


def figures(phases: Mapping[str, Phase]) -> dict[str, float | None]:
    """One repetition's figures for one system, from its phases (any may be missing)."""
    out: dict[str, float | None] = {}
    load, serial = phases.get("load"), phases.get("serial")
    one, ten = phases.get("marginal1"), phases.get("marginal10")
    if load is not None:
        out["throughput"] = load.throughput
        out["p50_c"] = load.latency_ms(50)
        out["p99_c"] = load.latency_ms(99)
        out["accept_p50"] = load.accept_ms(50)
        out["accept_p99"] = load.accept_ms(99)
        out["cpu_per_wf"] = load.cpu_ms_per_workflow
    if serial is not None:
        out["p50_1"] = serial.latency_ms(50)
        out["p99_1"] = serial.latency_ms(99)
    if one is not None and ten is not None:
        out["marginal_step"] = (ten.latency_ms(50) - one.latency_ms(50)) / 9
    out["errors"] = float(sum(p.errors for p in phases.values()))
    return out


def with_floor(
    systems: Mapping[str, Mapping[str, float | None]], floor: Floor
) -> dict[str, dict[str, float | None]]:
    """Every system's figures, with the marginal cost of a step and the p50 at 1 in flight also
    as multiples of the machine's floor of a step (the same floor for every system)."""
    base = floor["step_floor_ms"]
    out: dict[str, dict[str, float | None]] = {}
    for name, figs in systems.items():
        out[name] = dict(figs)
        for key, metric in zip(FLOOR_METRICS, ("marginal_step", "p50_1"), strict=True):
            value = figs.get(metric)
            out[name][key] = value / base if value is not None and base > 0 else None
    return out


def medians(reps: list[dict[str, float | None]]) -> dict[str, float | None]:
    keys = {k for rep in reps for k in rep}
    return {k: median(rep.get(k) for rep in reps) for k in sorted(keys)}


def ratios(systems: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float]]:
    """Our figure divided by each peer's, metric by metric."""
    ours = systems.get(OURS, {})
    out: dict[str, dict[str, float]] = {}
    for peer, theirs in systems.items():
        if peer == OURS or peer in VARIANTS:
            continue
        out[peer] = {}
        for metric in METRICS:
            if metric in FLOOR_METRICS:
                continue
            a, b = ours.get(metric), theirs.get(metric)
            if metric != "errors" and a is not None and b:
                out[peer][metric] = a / b
    return out


def _best(systems: Mapping[str, Mapping[str, float | None]], metric: str, low: bool) -> str | None:
    candidates = [
        (v, name) for name in DBOS_VARIANTS if (v := systems.get(name, {}).get(metric)) is not None
    ]
    if not candidates:
        return None
    return (min if low else max)(candidates)[1]


def targets(
    systems: Mapping[str, Mapping[str, float | None]], *, open_loop: OpenLoop | None = None
) -> list[dict[str, Any]]:
    """The issues' targets, each checked on this run's medians (DBOS: its better variant), and
    the open loop's when it ran."""
    ours = systems.get(OURS, {})
    checks: list[dict[str, Any]] = []

    def ratio_check(name: str, metric: str, peer: str | None, bound: float, le: bool) -> None:
        if peer is None:
            return
        a, b = ours.get(metric), systems.get(peer, {}).get(metric)
        if a is None or not b:
            return
        value = a / b
        checks.append(
            {
                "target": name,
                "vs": peer,
                "value": round(value, 3),
                "bound": f"{'<=' if le else '>='} {bound}",
                "met": value <= bound if le else value >= bound,
            }
        )

    dbos_tp = _best(systems, "throughput", low=False)
    dbos_lat = _best(systems, "p50_1", low=True)
    dbos_step = _best(systems, "marginal_step", low=True)
    ratio_check("throughput / Celery-pg", "throughput", "celery-pg", 2.4, le=False)
    ratio_check("throughput / DBOS", "throughput", dbos_tp, 2.0, le=False)
    ratio_check("throughput / Celery-rpc", "throughput", "celery-rpc", 1.0, le=False)
    ratio_check("p50 at 1 in flight / Celery-pg", "p50_1", "celery-pg", 0.85, le=True)
    ratio_check("p50 at 1 in flight / DBOS", "p50_1", dbos_lat, 0.75, le=True)
    ratio_check("marginal step cost / DBOS", "marginal_step", dbos_step, 0.8, le=True)
    ratio_check("CPU per workflow / Celery-pg", "cpu_per_wf", "celery-pg", 0.5, le=True)
    # Issue 12, with the remote steps of today's design.
    ratio_check("issue 12: p50 at 1 in flight / DBOS", "p50_1", dbos_lat, 1.25, le=True)
    ratio_check("issue 12: throughput / DBOS", "throughput", dbos_tp, 1.5, le=False)
    # Issue 12, with the light steps local.
    local = systems.get(LOCAL, {})

    def local_check(name: str, metric: str, peer: str | None, bound: float) -> None:
        a, b = local.get(metric), systems.get(peer, {}).get(metric) if peer else None
        if a is not None and b:
            checks.append(
                {
                    "target": name,
                    "vs": peer,
                    "value": round(a / b, 3),
                    "bound": f"<= {bound}",
                    "met": a / b <= bound,
                }
            )

    local_check("local steps: p50 at 1 in flight / DBOS", "p50_1", dbos_lat, 0.6)
    local_check("local steps: marginal step cost / DBOS", "marginal_step", dbos_step, 0.5)
    p50, p99 = ours.get("p50_c"), ours.get("p99_c")
    if p50 and p99 is not None:
        checks.append(
            {
                "target": "p99 / own p50 under load",
                "vs": OURS,
                "value": round(p99 / p50, 3),
                "bound": "<= 1.5",
                "met": p99 / p50 <= 1.5,
            }
        )
    accept = ours.get("accept_p99")
    if accept is not None:
        checks.append(
            {
                "target": "HTTP accept p99, closed loop (ms)",
                "vs": OURS,
                "value": round(accept, 2),
                "bound": "<= 10",
                "met": accept <= 10,
            }
        )
    for name, what in ((OURS, ""), (BROKER, ", every command through the broker")):
        multiple = systems.get(name, {}).get("marginal_floor")
        if multiple is not None:
            checks.append(
                {
                    "target": f"marginal cost of a remote step{what} ÷ machine floor",
                    "vs": "floor",
                    "value": round(multiple, 3),
                    "bound": f"<= {FLOOR_BOUND}",
                    "met": multiple <= FLOOR_BOUND,
                }
            )
    if open_loop is not None and open_loop["accepted"]:
        p99 = open_loop["accept_p99_ms"]
        checks.append(
            {
                "target": f"HTTP accept p99, open loop at {open_loop['requested_rate']:.1f}/s (ms)",
                "vs": OURS,
                "value": p99,
                "bound": f"<= {OPEN_ACCEPT_BOUND_MS:g}",
                "met": p99 <= OPEN_ACCEPT_BOUND_MS,
            }
        )
        share = open_loop["completed"] / open_loop["accepted"]
        checks.append(
            {
                "target": "open loop: accepted workflows completed",
                "vs": OURS,
                "value": round(share, 4),
                "bound": ">= 1",
                "met": share >= 1,
            }
        )
    return checks


def _fmt(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def render(
    systems: Mapping[str, Mapping[str, float | None]],
    memory: Mapping[str, Mapping[str, float | None]],
    concurrency: int,
    repeat: int,
    extra: Mapping[str, Any],
    *,
    kinds: Kinds | None = None,
    floor: Floor | None = None,
    open_loop: OpenLoop | None = None,
) -> str:
    names = [n for n in (OURS, BROKER, LOCAL, CLASSIC, SCALE, *PEERS) if n in systems]

    def label(metric: str) -> str:
        text, unit, _ = METRICS[metric]
        return text.replace("{c}", str(concurrency)) + (f" ({unit})" if unit else "")

    out: list[str] = []
    if names:
        out += [f"Medians of {repeat} interleaved repetition(s):", ""]
        rows = [
            [label(m), *(_fmt(systems[n].get(m), 0 if m == "errors" else 2) for n in names)]
            for m in METRICS
            if m not in FLOOR_METRICS or floor is not None
        ]
        out.append(_table(["", *names], rows))
    peer_ratios = ratios(systems)
    if peer_ratios:
        out += ["", "relayflow ÷ peer (throughput: higher is better; the rest: lower is better):"]
        peers = list(peer_ratios)
        rows = [
            [label(m), *(_fmt(peer_ratios[p].get(m), 2) for p in peers)]
            for m in METRICS
            if m != "errors" and any(m in peer_ratios[p] for p in peers)
        ]
        out.append(_table(["", *peers], rows))
    if floor is not None:
        out += ["", render_floor(floor, systems.get(OURS, {}))]
    if open_loop is not None:
        out += ["", render_open_loop(open_loop)]
    checks = targets(systems, open_loop=open_loop)
    if checks:
        out += ["", "Targets of issues 5 and 12 (DBOS: its better variant):"]
        rows = [
            [c["target"], c["vs"], _fmt(c["value"], 2), c["bound"], "met" if c["met"] else "MISSED"]
            for c in checks
        ]
        out.append(_table(["target", "vs", "value", "bound", ""], rows))
    if memory:
        out += ["", "Peak resident memory (VmHWM, MiB, median):"]
        for name, roles in memory.items():
            parts = ", ".join(f"{role} {_fmt(v)}" for role, v in roles.items())
            out.append(f"  {name}: {parts}")
    if kinds:
        section = render_kinds(kinds)
        if section:
            out += ["", section] if out else [section]
    for title, value in extra.items():
        out += ["", f"{title}:", f"  {value}"]
    return "\n".join(out)


def _load(load: tuple[float, float, float]) -> str:
    return "load average " + " / ".join(f"{v:.2f}" for v in load)


def render_floor(floor: Floor, ours: Mapping[str, float | None]) -> str:
    """The machine's floor of a step, and our figures as multiples of it."""
    rows = [
        ["round trip: confirmed publish -> other process -> confirmed reply, p50 (ms)",
         _fmt(floor["round_trip_p50_ms"], 2)],
        ["round trip p99 (ms)", _fmt(floor["round_trip_p99_ms"], 2)],
        ["  of which the publish's own confirm, p50 (ms)", _fmt(floor["confirm_p50_ms"], 2)],
        ["INSERT, autocommit, p50 / p99 (ms)",
         f"{_fmt(floor['commit_p50_ms'], 2)} / {_fmt(floor['commit_p99_ms'], 2)}"],
        ["BEGIN / INSERT / COMMIT, p50 (ms)", _fmt(floor["transaction_p50_ms"], 2)],
        ["floor of a step: round trip + 2 commits (ms)", _fmt(floor["step_floor_ms"], 2)],
    ]  # fmt: skip
    marginal, p50 = ours.get("marginal_floor"), ours.get("p50_1_floor")
    if marginal is not None:
        rows.append(["relayflow: marginal cost of a step ÷ floor", f"{_fmt(marginal, 2)}x"])
    if p50 is not None:
        rows.append(["relayflow: p50 at 1 in flight (5 steps) ÷ floor", f"{_fmt(p50, 2)}x"])
    return "\n".join([
        f"The machine's floor ({floor['n']} of each at 1 in flight, {floor['queue_type']} "
        f"queues, aio-pika + asyncpg; median of {floor['runs']} run(s), {floor['when']}; "
        f"{_load(floor['load'])}):",
        _table(["", "value"], rows),
    ])  # fmt: skip


def render_open_loop(run: OpenLoop) -> str:
    """The open-loop phase: accept latency at a fixed arrival rate, and the client's health."""
    rows = [
        ["arrival rate requested / scheduled / achieved (/s)",
         f"{_fmt(run['requested_rate'], 1)} / {_fmt(run['scheduled_rate'], 1)} / "
         f"{_fmt(run['achieved_rate'], 1)}"],
        ["requests sent / accepted (202) / refused",
         f"{run['sent']} / {run['accepted']} / {run['refused']}"],
        ["accepted workflows completed / not", f"{run['completed']} / {run['failed']}"],
        ["HTTP accept p50 / p99 / max (ms)", f"{_fmt(run['accept_p50_ms'], 2)} / "
         f"{_fmt(run['accept_p99_ms'], 2)} / {_fmt(run['accept_max_ms'], 2)}"],
        ["workflow end to end p50 / p99 (ms)",
         f"{_fmt(run['e2e_p50_ms'], 1)} / {_fmt(run['e2e_p99_ms'], 1)}"],
        ["client: late against schedule p50 / p99 (ms)",
         f"{_fmt(run['lag_p50_ms'], 2)} / {_fmt(run['lag_p99_ms'], 2)}"],
        ["client: CPU (share of one core), connections",
         f"{run['client_cpu_share']:.1%}, {run['connections']}"],
    ]  # fmt: skip
    split = ", ".join(f"{role} {ms}" for role, ms in run["cpu_ms_per_wf_by_role"].items())
    verdict = "the client kept up" if run["client_ok"] else "; ".join(run["client_notes"])
    return "\n".join([
        f"Open loop: {run['arrivals']} arrivals of bench5 for {run['seconds']:g} s at "
        f"{run['requested_rate']:.1f}/s ({run['rate_source']}); {_load(run['load'])}:",
        _table(["", "value"], rows),
        f"  machine CPU ms per workflow by process: {split}",
        f"  client: {verdict}",
    ])  # fmt: skip


# --- Map and child steps (issue 8) ---------------------------------------------------------

# Items/s of a map ÷ steps/s of the five-step workload, at least; and a per-item cost of the
# largest map ÷ that of the smallest, at most ("flat": no cost that grows with the map's size).
MAP_RATE_BOUND = 0.8
FLAT_BOUND = 1.1
FLAT_CPU_BOUND = 1.2  # machine CPU is noisier than row and WAL counts

# per-item figure -> (label, digits, flatness bound or None)
MAP_COSTS: dict[str, tuple[str, int, float | None]] = {
    "rows_per_item": ("rows written (ins+upd+del)", 1, FLAT_BOUND),
    "wal_bytes_per_item": ("WAL bytes (whole cluster)", 0, FLAT_BOUND),
    "db_bytes_per_item": ("database growth, bytes", 0, None),
    "cpu_ms_per_item": ("machine CPU, ms", 2, FLAT_CPU_BOUND),
}


class Baseline(TypedDict):
    """The five-step workload on the same processes, just before the maps."""

    n: int
    concurrency: int
    workflows_per_s: float
    cpu_ms_per_step: float  # machine CPU per workflow ÷ 5


class MapRun(TypedDict):
    """One `batchImport` of `items` lines, submit to `workflow.completed`."""

    items: int
    wall_s: float
    items_per_s: float
    # The costs of MAP_COSTS, each divided by `items`.
    per_item: dict[str, float]
    rows_per_item_by_table: dict[str, float]
    cpu_ms_per_item_by_role: dict[str, float]
    # VmHWM during this run (reset before it when the kernel allows, else the process's peak).
    peak_mib: dict[str, float | None]
    peak_reset: bool


class ChildRun(TypedDict):
    """`n` workflows of each shape at 1 in flight: p50 latencies, ms."""

    n: int
    nested_p50_ms: float
    plain3_p50_ms: float
    plain1_p50_ms: float
    errors: int


class Kinds(TypedDict, total=False):
    baseline: Baseline
    map: list[MapRun]
    child: ChildRun


def steps_per_s(baseline: Baseline) -> float:
    return baseline["workflows_per_s"] * 5


def child_figures(run: ChildRun) -> dict[str, float]:
    """The 3-level chain against 3 plain steps, and one child step's cost against one task
    step's: each beyond the one-step workflow, halved (two steps are added to it either way)."""
    nested, plain3, plain1 = run["nested_p50_ms"], run["plain3_p50_ms"], run["plain1_p50_ms"]
    child_step = (nested - plain1) / 2
    task_step = (plain3 - plain1) / 2
    out = {"nested_over_plain": nested / plain3 if plain3 else math.nan}
    out["child_step_ms"] = child_step
    out["task_step_ms"] = task_step
    out["child_over_task"] = child_step / task_step if task_step > 0 else math.nan
    return out


def kind_targets(kinds: Kinds) -> list[dict[str, Any]]:
    """Issue 8's targets: each map's items/s against the same run's steps/s; per-item costs of
    the largest map against the smallest's."""
    checks: list[dict[str, Any]] = []
    runs = sorted(kinds.get("map", []), key=lambda r: r["items"])
    baseline = kinds.get("baseline")
    if baseline is not None and steps_per_s(baseline) > 0:
        for run in runs:
            value = run["items_per_s"] / steps_per_s(baseline)
            checks.append(
                {
                    "target": f"map items/s ÷ five-step steps/s, {run['items']} items",
                    "value": round(value, 3),
                    "bound": f">= {MAP_RATE_BOUND}",
                    "met": value >= MAP_RATE_BOUND,
                }
            )
    if len(runs) >= 2:
        small, large = runs[0], runs[-1]
        for key, (label, _, bound) in MAP_COSTS.items():
            a, b = small["per_item"].get(key), large["per_item"].get(key)
            if bound is None or a is None or b is None or a <= 0:
                continue
            value = b / a
            checks.append(
                {
                    "target": f"per item, {large['items']} ÷ {small['items']}: {label}",
                    "value": round(value, 3),
                    "bound": f"<= {bound}",
                    "met": value <= bound,
                }
            )
    return checks


def render_kinds(kinds: Kinds) -> str:
    """The map and child section of the report."""
    out: list[str] = []
    baseline = kinds.get("baseline")
    runs = sorted(kinds.get("map", []), key=lambda r: r["items"])
    if runs:
        out.append("Map steps: batchImport (max_concurrency 8, one transactional row per item):")
        if baseline is not None:
            out.append(
                f"  five-step workload on the same processes ({baseline['n']} at "
                f"{baseline['concurrency']} in flight): {baseline['workflows_per_s']:.1f} "
                f"workflows/s = {steps_per_s(baseline):.1f} steps/s, machine CPU "
                f"{baseline['cpu_ms_per_step']:.2f} ms per step"
            )
        out.append("")
        header = ["", *(f"{r['items']} items" for r in runs)]
        rows = [
            ["wall time (s)", *(_fmt(r["wall_s"], 2) for r in runs)],
            ["items/s", *(_fmt(r["items_per_s"], 1) for r in runs)],
        ]
        if baseline is not None and steps_per_s(baseline) > 0:
            rate = steps_per_s(baseline)
            rows.append(["items/s ÷ steps/s", *(_fmt(r["items_per_s"] / rate, 2) for r in runs)])
        rows += [
            [f"per item: {label}", *(_fmt(r["per_item"].get(key), digits) for r in runs)]
            for key, (label, digits, _) in MAP_COSTS.items()
        ]
        roles = sorted({role for r in runs for role in r["peak_mib"]})
        rows += [[f"peak RSS {role} (MiB)", *(_fmt(r["peak_mib"].get(role)) for r in runs)]
                 for role in roles]  # fmt: skip
        out.append(_table(header, rows))
        for run in runs:
            tables = ", ".join(f"{t} {v:.2f}" for t, v in run["rows_per_item_by_table"].items())
            cpu = ", ".join(f"{k} {v:.2f}" for k, v in run["cpu_ms_per_item_by_role"].items())
            out.append(f"  {run['items']} items, rows per item by table: {tables}")
            out.append(f"  {run['items']} items, CPU ms per item by process: {cpu}")
        if not all(r["peak_reset"] for r in runs):
            out.append("  (peak RSS could not be reset between runs: peaks since start)")
    child = kinds.get("child")
    if child is not None:
        f = child_figures(child)
        if out:
            out.append("")
        out.append(f"Child steps: parent -> child -> grandchild, one step each, {child['n']} "
                   "of each shape at 1 in flight (p50):")  # fmt: skip
        rows = [
            ["3-level chain (ms)", _fmt(child["nested_p50_ms"], 2)],
            ["3 plain task steps (ms)", _fmt(child["plain3_p50_ms"], 2)],
            ["1 plain task step (ms)", _fmt(child["plain1_p50_ms"], 2)],
            ["chain ÷ 3 plain steps", _fmt(f["nested_over_plain"], 2)],
            ["one child step, beyond a 1-step workflow (ms)", _fmt(f["child_step_ms"], 2)],
            ["one task step, beyond a 1-step workflow (ms)", _fmt(f["task_step_ms"], 2)],
            ["child step ÷ task step", _fmt(f["child_over_task"], 2)],
        ]
        if child["errors"]:
            rows.append(["failed workflows", str(child["errors"])])
        out.append(_table(["", "value"], rows))
    checks = kind_targets(kinds)
    if checks:
        out += ["", "Targets of issue 8:"]
        rows = [[c["target"], _fmt(c["value"], 2), c["bound"], "met" if c["met"] else "MISSED"]
                for c in checks]  # fmt: skip
        out.append(_table(["target", "value", "bound", ""], rows))
    return "\n".join(out)
