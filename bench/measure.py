"""What the harness measures: percentiles, machine CPU from /proc/stat, peak memory from
/proc/<pid>/status, and the result of one closed-loop phase."""

from __future__ import annotations

import math
import os
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_TICK_MS = 1000.0 / os.sysconf("SC_CLK_TCK")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.median(present) if present else None


def machine_busy_ms() -> float:
    """CPU time the whole machine spent busy (every core, all but idle and iowait), in ms."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()[1:]
    ticks = [int(v) for v in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest time is already counted in user/nice
    total = sum(ticks[:8])
    return (total - idle) * _TICK_MS


# Command names of the shared servers, so that their share of a phase's CPU can be told apart.
_SERVERS = {"beam.smp": "rabbitmq", "erl_child_setup": "rabbitmq", "postgres": "postgresql"}


def process_cpu_ms() -> dict[int, tuple[str, int, float]]:
    """Every process's command name, parent pid and CPU time so far (user + system, ms)."""
    found: dict[int, tuple[str, int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        # fields[0] is field 3 of proc(5): state; ppid is field 4, utime 14, stime 15.
        cpu_ms = (int(fields[11]) + int(fields[12])) * _TICK_MS
        found[int(entry.name)] = (name, int(fields[1]), cpu_ms)
    return found


def cpu_split(
    before: dict[int, tuple[str, int, float]],
    after: dict[int, tuple[str, int, float]],
    roles: dict[int, str],
) -> dict[str, float]:
    """CPU ms spent between two `process_cpu_ms` snapshots, by role: the processes in `roles` and
    their descendants under their role, the broker and the database by name, this process as
    `client`, everything else as `other`. (A process that ended in between is not counted.)"""
    roles = {**roles, os.getpid(): "client"}

    def role_of(pid: int) -> str:
        seen = 0
        current = pid
        while current > 1 and seen < 64:
            if current in roles:
                return roles[current]
            info = after.get(current)
            if info is None:
                break
            current, seen = info[1], seen + 1
        return _SERVERS.get(after[pid][0], "other")

    split: dict[str, float] = {}
    for pid, (_, _, ms) in after.items():
        spent = ms - before[pid][2] if pid in before else ms
        if spent > 0:
            role = role_of(pid)
            split[role] = split.get(role, 0.0) + spent
    return split


class CpuMeter:
    """The machine's CPU (ms) since it was made, and its split by process role (`cpu_split`)."""

    def __init__(self, roles: dict[int, str] | None = None) -> None:
        self._roles = roles or {}
        self._processes = process_cpu_ms()
        self._busy = machine_busy_ms()

    def read(self) -> tuple[float, dict[str, float]]:
        busy = machine_busy_ms() - self._busy
        return busy, cpu_split(self._processes, process_cpu_ms(), self._roles)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (no psutil needed)."""
    children: dict[int, list[int]] = {}
    for child, (_, ppid, _) in process_cpu_ms().items():
        children.setdefault(ppid, []).append(child)
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def status_kib(pid: int, key: str) -> int | None:
    """A `kB` line of /proc/<pid>/status (VmHWM: peak resident set, VmRSS: current)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return None


def peak_mib(pids: Iterable[int]) -> float | None:
    """Sum of the peak resident sets (VmHWM) of the processes, in MiB."""
    values = [status_kib(pid, "VmHWM") for pid in pids]
    present = [v for v in values if v is not None]
    return sum(present) / 1024 if present else None


@dataclass
class Sample:
    """One workflow: submit → completion, and (ours) submit → HTTP 202, in seconds."""

    latency: float
    accept: float | None = None
    # (workflow id, request sent, 202 read, terminal event read) on the wall clock, ns (ours):
    # what the hop breakdown joins with the services' records (`bench.hops`).
    trace: tuple[str, int, int, int] | None = None


@dataclass
class Phase:
    """One closed-loop phase: `n` workflows of `steps` steps, `concurrency` in flight."""

    steps: int
    n: int
    concurrency: int
    wall: float
    cpu_ms: float
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    # CPU ms of the phase by process role (see `cpu_split`).
    cpu_by_role: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return len(self.samples) / self.wall if self.wall > 0 else float("nan")

    def latency_ms(self, q: float) -> float:
        return percentile([s.latency for s in self.samples], q) * 1000

    def accept_ms(self, q: float) -> float | None:
        accepts = [s.accept for s in self.samples if s.accept is not None]
        return percentile(accepts, q) * 1000 if accepts else None

    @property
    def cpu_ms_per_workflow(self) -> float:
        return self.cpu_ms / max(1, len(self.samples))

    def summary(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "n": self.n,
            "concurrency": self.concurrency,
            "completed": len(self.samples),
            "errors": self.errors,
            "wall_s": round(self.wall, 3),
            "throughput": round(self.throughput, 2),
            "p50_ms": round(self.latency_ms(50), 2),
            "p99_ms": round(self.latency_ms(99), 2),
            "cpu_ms_per_wf": round(self.cpu_ms_per_workflow, 2),
            "cpu_ms_per_wf_by_role": self.cpu_per_workflow_by_role(),
        }

    def cpu_per_workflow_by_role(self) -> dict[str, float]:
        done = max(1, len(self.samples))
        ordered = sorted(self.cpu_by_role.items(), key=lambda item: -item[1])
        return {role: round(ms / done, 2) for role, ms in ordered}
