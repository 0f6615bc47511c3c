"""Figures from phases, medians over repetitions, ratios to the peers, the issue's targets, and
the readable table."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bench.measure import Phase, median

OURS = "relayflow"
SCALE = "relayflow-scale"
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
}


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


def medians(reps: list[dict[str, float | None]]) -> dict[str, float | None]:
    keys = {k for rep in reps for k in rep}
    return {k: median(rep.get(k) for rep in reps) for k in sorted(keys)}


def ratios(systems: Mapping[str, Mapping[str, float | None]]) -> dict[str, dict[str, float]]:
    """Our figure divided by each peer's, metric by metric."""
    ours = systems.get(OURS, {})
    out: dict[str, dict[str, float]] = {}
    for peer, theirs in systems.items():
        if peer in (OURS, SCALE):
            continue
        out[peer] = {}
        for metric in METRICS:
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


def targets(systems: Mapping[str, Mapping[str, float | None]]) -> list[dict[str, Any]]:
    """The issue's targets, each checked on this run's medians (DBOS: its better variant)."""
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
                "target": "HTTP accept p99 (ms)",
                "vs": OURS,
                "value": round(accept, 2),
                "bound": "<= 10",
                "met": accept <= 10,
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
) -> str:
    names = [n for n in (OURS, SCALE, *PEERS) if n in systems]

    def label(metric: str) -> str:
        text, unit, _ = METRICS[metric]
        return text.replace("{c}", str(concurrency)) + (f" ({unit})" if unit else "")

    out = [f"Medians of {repeat} interleaved repetition(s):", ""]
    rows = [
        [label(m), *(_fmt(systems[n].get(m), 0 if m == "errors" else 2) for n in names)]
        for m in METRICS
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
    checks = targets(systems)
    if checks:
        out += ["", "Targets of issue 5 (DBOS: its better variant):"]
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
    for title, value in extra.items():
        out += ["", f"{title}:", f"  {value}"]
    return "\n".join(out)
