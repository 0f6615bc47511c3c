"""Where the time of a step goes (issue 12): the per-hop breakdown at 1 in flight.

On its own set of our processes, with `RELAYFLOW_HOP_TRACE` on (so that the tracing does not
touch the other phases' figures): a warm-up, then `n` five-step workflows at 1 in flight. Each
service records when each message reached each hop (`relayflow.hops`, which lists them); the
harness records when it sent each request and read each terminal event, on the same wall clock.
Joined by message id and workflow, each workflow is one chain of points, from the request to the
terminal event read by the client, and the hops between consecutive points add up to its
end-to-end time exactly. The table gives each hop's median and p99 over all workflows (a step's
hops over every step of every workflow) and its share of its part (the start, a step, the end:
of the sum of the part's medians). Confirms are aside: nothing on the critical path waits for
them, except the 202 (the client's stream opens after it, but the workflow does not wait).

The sum of the medians is compared with the measured end-to-end p50: medians do not add (a
hop's slow cases rarely coincide with another's), so the two differ by a little; a large gap
would say a chain is not joined right.
"""

from __future__ import annotations

import itertools
import shutil
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from bench.measure import Phase, percentile
from bench.ours import Relayflow
from bench.report import _fmt, _table
from relayflow import hops as trace
from relayflow.model import ids

WORKFLOW_STEPS = 5
TERMINAL = "workflow.completed"

Part = Literal["start", "step", "end", "aside"]

# The hops of each part, in the order of a chain's points (`_chain`).
START = (
    "HTTP request → gateway handler",
    "gateway: checks → start published",
    "start: published → orchestrator has it",
    "orchestrator: delivery → inbox claimed, workflow locked",
    "orchestrator: locked → statements done",
    "orchestrator: commit",
)
STEP = (
    "orchestrator commit → relay publishes the command",
    "command: published → step service has it",
    "step: delivery → invocation claimed",
    "step: claimed → body starts",
    "step: body",
    "step: body end → outcome written",
    "step: commit",
    "step: commit → result published",
    "result: published → orchestrator has it",
    "orchestrator: delivery → inbox claimed, workflow locked",
    "orchestrator: locked → statements done",
    "orchestrator: commit",
)
# A step whose service advanced the workflow itself (`RELAYFLOW_STEP_ADVANCE`, the default): no
# result travels, and the next command leaves from the step service's commit.
# A command is published by the relay, or (eager dispatch, `RELAYFLOW_STEP_EAGER`) handed over
# to the worker of the step service that committed it; the aside rows split the two.
STEP_ADVANCED = (
    "last commit → command published or handed over",
    "command: sent → step service has it",
    "step: delivery → invocation claimed",
    "step: claimed → body starts",
    "step: body",
    "step: body end → outcome written",
    "step: outcome written → workflow advanced",
    "step: commit",
)
END = (
    "last commit → relay publishes the events",
    "events: published → gateway hub",
    "gateway: hub → SSE event written",
    "SSE written → client has read it",
)
ASIDE = (
    "start: published → confirmed (the 202 follows)",
    "command: published → confirmed",
    "result: published → confirmed (the ack follows)",
    "events: published → confirmed",
    "a command published: → step service has it",
    "a command handed over: → step batch has it",
)
# The services' hops a step's chain passes, by the message that reaches them.
_BY_COMMAND = (
    "relay.publish",
    "step.delivered",
    "step.claimed",
    "step.body.start",
    "step.body.end",
    "step.recorded",
    "step.committed",
)
_BY_COMMAND_ADVANCED = (*_BY_COMMAND[:-1], "step.advanced", "step.committed")
_BY_ORCHESTRATOR = ("orch.delivered", "orch.locked", "orch.written", "orch.committed")
_BY_RESULT = ("step.publish", *_BY_ORCHESTRATOR)
_BY_START = ("gw.publish", *_BY_ORCHESTRATOR)


@dataclass(slots=True)
class _Chain:
    """One workflow's hops, in ns: the start's, each step's in order, the end's, and aside."""

    start: list[int]
    steps: list[list[int]]
    end: list[int]
    aside: list[list[int]]  # per aside label: every value the workflow has


class _Index:
    """The records of one run, looked up by (hop, key) or (hop, key, workflow)."""

    def __init__(self, records: Sequence[trace.Record]) -> None:
        self.at: dict[tuple[str, str], int] = {}
        self.at_wf: dict[tuple[str, str, str], int] = {}
        self.start_of: dict[str, str] = {}  # workflow -> its StartWorkflow's message id
        self.step_ids: dict[str, list[tuple[int, str, str]]] = {}  # wf -> (t, command, step)
        self.result_of: dict[tuple[str, str], str] = {}  # (wf, step) -> result id
        self.batches: set[str] = set()  # the event batches the relay published
        self.advanced = False  # the step services advanced the workflows themselves
        for t, hop, key, workflow_id, step in records:
            self.at.setdefault((hop, key), t)  # the first: a redelivery comes later
            if workflow_id:
                self.at_wf.setdefault((hop, key, workflow_id), t)
            if hop == "gw.publish":
                self.start_of.setdefault(workflow_id, key)
            elif hop == "step.body.start":
                self.step_ids.setdefault(workflow_id, []).append((t, key, str(step)))
            elif hop == "step.publish":
                self.result_of.setdefault((workflow_id, str(step)), key)
            elif hop == "relay.publish" and key.startswith("evb:"):
                self.batches.add(key)
            elif hop == "step.advanced":
                self.advanced = True

    def last_batch(self, workflow_id: str) -> str | None:
        """The last event batch the relay published for the workflow (its terminal event's)."""
        prefix = ids.event_batch_id(ids.event_id(workflow_id, 0))[:-1]
        found = [key for key in self.batches if key.startswith(prefix)]
        return max(found, key=lambda key: self.at[("relay.publish", key)]) if found else None


def _chain(index: _Index, workflow_id: str, client: tuple[int, int, int]) -> _Chain | None:
    """The workflow's hops, or None if a point is missing (the run recorded too little)."""
    sent, accepted, done = client
    start_id = index.start_of.get(workflow_id)
    commands = sorted(index.step_ids.get(workflow_id, []))
    batch = index.last_batch(workflow_id)
    if start_id is None or len(commands) != WORKFLOW_STEPS or batch is None:
        return None
    at = index.at
    try:
        points = [sent, index.at_wf[("gw.received", "", workflow_id)]]
        points += [at[(hop, start_id)] for hop in _BY_START]
        start = _diffs(points)
        steps: list[list[int]] = []
        confirmed = at[("gw.confirmed", start_id)] - at[("gw.publish", start_id)]
        aside: list[list[int]] = [[confirmed], [], [], [], [], []]
        previous = points[-1]
        for _, command, step in commands:
            step_points = [previous]
            handed = ("relay.publish", command) not in at and ("step.handed", command) in at
            sent = at[("step.handed" if handed else "relay.publish", command)]
            aside[5 if handed else 4].append(at[("step.delivered", command)] - sent)
            if not handed:
                aside[1].append(at[("relay.confirmed", command)] - sent)
            if index.advanced:
                step_points += [sent]
                step_points += [at[(hop, command)] for hop in _BY_COMMAND_ADVANCED[1:]]
            else:
                result = index.result_of[(workflow_id, step)]
                step_points += [at[(hop, command)] for hop in _BY_COMMAND]
                step_points += [at[(hop, result)] for hop in _BY_RESULT]
                aside[2].append(at[("step.confirmed", result)] - at[("step.publish", result)])
            steps.append(_diffs(step_points))
            previous = step_points[-1]
        end_points = [
            previous,
            at[("relay.publish", batch)],
            index.at_wf[("gw.event", TERMINAL, workflow_id)],
            index.at_wf[("gw.sse", TERMINAL, workflow_id)],
            done,
        ]
        aside[3].append(at[("relay.confirmed", batch)] - at[("relay.publish", batch)])
    except KeyError:
        return None
    del accepted  # the 202's time is the client's; the start's confirm is aside already
    return _Chain(start=start, steps=steps, end=_diffs(end_points), aside=aside)


def _diffs(points: Sequence[int]) -> list[int]:
    return [later - earlier for earlier, later in itertools.pairwise(points)]


def _row(part: Part, label: str, values_ns: Sequence[int]) -> dict[str, Any]:
    values = [v / 1e6 for v in values_ns]
    return {
        "part": part,
        "hop": label,
        "p50_ms": round(percentile(values, 50), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "mean_ms": round(statistics.fmean(values), 3) if values else float("nan"),
    }


def breakdown(
    records: Sequence[trace.Record], clients: Mapping[str, tuple[int, int, int]], e2e: Phase
) -> dict[str, Any]:
    """The table of `bench.hops` from the services' records and the harness's own (workflow ->
    sent, 202 read, terminal event read), and how its sums compare with the measured `e2e`."""
    index = _Index(records)
    chains = [c for wf, times in clients.items() if (c := _chain(index, wf, times)) is not None]
    step_labels = STEP_ADVANCED if index.advanced else STEP
    parts: list[tuple[Part, tuple[str, ...], list[list[int]]]] = [
        ("start", START, [c.start for c in chains]),
        ("step", step_labels, [s for c in chains for s in c.steps]),
        ("end", END, [c.end for c in chains]),
    ]
    rows: list[dict[str, Any]] = []
    for part, labels, columns in parts:
        part_rows = [_row(part, label, [c[i] for c in columns]) for i, label in enumerate(labels)]
        # Of the part's mean total: means add up (the part's hops are consecutive), medians not.
        total = sum(r["mean_ms"] for r in part_rows)
        for r in part_rows:
            r["share"] = round(r["mean_ms"] / total, 3) if total > 0 else None
        rows.extend(part_rows)
        if part == "step":
            step = _row("step", "a step, commit to commit", [sum(s) for s in columns])
            rows.append({**step, "share": None})
    for i, label in enumerate(ASIDE):
        values = [v for c in chains for v in c.aside[i]]
        if not values:
            continue  # no result is published when the step services advance workflows
        rows.append({**_row("aside", label, values), "share": None})

    def whole(figure: str) -> float:
        of: dict[tuple[str, str], float] = {(r["part"], r["hop"]): r[figure] for r in rows}
        return round(
            sum(of[("start", label)] for label in START)
            + WORKFLOW_STEPS * sum(of[("step", label)] for label in step_labels)
            + sum(of[("end", label)] for label in END),
            3,
        )

    by_position = [
        round(percentile([sum(c.steps[i]) / 1e6 for c in chains], 50), 3)
        for i in range(WORKFLOW_STEPS if chains else 0)
    ]
    return {
        "workflows": len(clients),
        "joined": len(chains),
        "hops": rows,
        "step_p50_ms_by_position": by_position,
        "sum_of_medians_ms": whole("p50_ms"),
        "sum_of_means_ms": whole("mean_ms"),
        "e2e_p50_ms": round(e2e.latency_ms(50), 3),
        "e2e_mean_ms": round(statistics.fmean(s.latency for s in e2e.samples) * 1000, 3)
        if e2e.samples
        else float("nan"),
    }


async def run_hops(system: Relayflow, trace_dir: Path, *, n: int, warmup: int) -> dict[str, Any]:
    """Start `system` (made with `RELAYFLOW_HOP_TRACE=trace_dir`), warm it up, run `n` five-step
    workflows at 1 in flight, stop it (each process then writes its records) and join them."""
    shutil.rmtree(trace_dir, ignore_errors=True)
    try:
        await system.start()
        if warmup:
            await system.run(WORKFLOW_STEPS, warmup, 1)
        phase: Phase = await system.run(WORKFLOW_STEPS, n, 1)
    finally:
        await system.stop()
    clients = {s.trace[0]: s.trace[1:] for s in phase.samples if s.trace is not None}
    result = breakdown(trace.read(trace_dir), clients, phase)
    result["errors"] = phase.errors
    return result


def render_hops(result: Mapping[str, Any]) -> str:
    titles = {"start": "the start", "step": "each step", "end": "the end", "aside": "aside"}
    body: list[list[str]] = []
    part = None
    for row in result["hops"]:
        if row["part"] != part:
            part = row["part"]
            body.append([f"-- {titles[part]} --", "", "", "", ""])
        share = row["share"]
        shown = "" if share is None else f"{share * 100:.0f}%"
        figures = (_fmt(row[key], 2) for key in ("p50_ms", "p99_ms", "mean_ms"))
        body.append([f"  {row['hop']}", *figures, shown])
    positions = result["step_p50_ms_by_position"]
    lines = [
        f"Per-hop breakdown: {result['joined']} of {result['workflows']} five-step workflows at "
        "1 in flight joined (tracing on, its own processes); share: of its part's mean",
        _table(["hop", "p50 ms", "p99 ms", "mean ms", "share"], body),
        "a step by position, p50 ms: "
        + ", ".join(f"{i + 1}: {v:.2f}" for i, v in enumerate(positions)),
        _against("medians", result["sum_of_medians_ms"], "p50", result["e2e_p50_ms"])
        + " (medians do not add: a hop's slow cases seldom meet another's)",
        _against("means", result["sum_of_means_ms"], "mean", result["e2e_mean_ms"])
        + " (means add up: the joined chains cover the whole way)",
    ]
    return "\n".join(lines)


def _against(what: str, summed: float, figure: str, measured: float) -> str:
    gap = summed - measured
    share = abs(gap) / measured * 100 if measured else float("nan")
    return (
        f"sum of the {what} (start + {WORKFLOW_STEPS} steps + end) {summed:.2f} ms, measured "
        f"end-to-end {figure} {measured:.2f} ms: {'+' if gap >= 0 else '-'}{abs(gap):.2f} ms "
        f"({share:.1f}%)"
    )
