"""The hop recorder (`relayflow.hops`) and the bench's join of its records (`bench.hops`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench.hops import breakdown
from bench.measure import Phase, Sample
from relayflow import hops
from relayflow.hops import HopTrace
from relayflow.model import ids
from relayflow.settings import Settings


@dataclass(frozen=True)
class _Message:
    message_id: str | None


def test_off_records_nothing_and_writes_nothing(tmp_path: Path) -> None:
    """Off (the default), every call is a no-op: nothing kept, no file, whatever is called."""
    for trace in (HopTrace(), HopTrace.open(None, "orchestrator")):
        assert not trace.on
        assert trace.now() == 0
        trace.record("orch.delivered", "m1", "wf", "b1")
        trace.record_each("orch.committed", ["m1", _Message("m2")])
        trace.close()
        assert trace.path is None
        assert trace._records == []
    assert list(tmp_path.iterdir()) == []


def test_on_writes_each_record_to_the_process_file(tmp_path: Path) -> None:
    """On, each call keeps (time, hop, key, workflow, step) and close writes them, one JSON line
    each, to <dir>/<role>-<pid>.jsonl; a second close appends only what came since."""
    trace = HopTrace.open(tmp_path / "trace", "steps")
    assert trace.on
    assert trace.path == tmp_path / "trace" / f"steps-{os.getpid()}.jsonl"
    received = trace.now()
    trace.record("step.body.start", "cmd:1", "wf_1", "b1")
    trace.record_each("step.committed", ["cmd:1", _Message("cmd:2"), _Message(None)])
    trace.record("gw.received", None, "wf_1", at=received)
    trace.record("gw.sse", "workflow.completed", "wf_1", 7)
    trace.close()
    trace.record("step.body.end", "cmd:1")
    trace.close()
    records = hops.read(tmp_path / "trace")
    assert [(hop, key, wf, step) for _, hop, key, wf, step in records] == [
        ("gw.received", "", "wf_1", ""),
        ("step.body.start", "cmd:1", "wf_1", "b1"),
        ("step.committed", "cmd:1", "", ""),
        ("step.committed", "cmd:2", "", ""),
        ("step.committed", "", "", ""),
        ("gw.sse", "workflow.completed", "wf_1", 7),
        ("step.body.end", "cmd:1", "", ""),
    ]
    assert records[0][0] == received
    assert len(trace.path.read_bytes().splitlines()) == 7


def test_a_full_trace_stops_recording(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Past its limit a process keeps no more records (memory stays bounded), and says so."""
    trace = HopTrace(tmp_path / "t.jsonl", limit=3)
    trace.record_each("relay.publish", ["a", "b"])
    trace.record("relay.confirmed", "a")
    trace.record("relay.confirmed", "b")
    assert not trace.on
    assert "recording no more" in caplog.text
    trace.close()
    assert len(hops.read(tmp_path)) == 3


def test_the_setting_is_a_directory_or_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """RELAYFLOW_HOP_TRACE: unset, empty or `off` turn it off; anything else is the directory."""
    assert Settings().hop_trace is None
    for off in ("", "off", "OFF"):
        monkeypatch.setenv("RELAYFLOW_HOP_TRACE", off)
        assert Settings().hop_trace is None
    monkeypatch.setenv("RELAYFLOW_HOP_TRACE", str(tmp_path))
    assert Settings().hop_trace == tmp_path


def _one_workflow(
    wf: str, t0: int, *, advanced: bool = False
) -> tuple[list[hops.Record], tuple[int, int, int]]:
    """The records of one five-step workflow whose every hop takes 1 ms (asides 2 ms). With
    `advanced`, its step service advanced it: no result travels, the first command is published
    by the orchestrator's relay and the other four are handed over in process (eager dispatch)."""
    records: list[hops.Record] = []
    t = t0

    def at(hop: str, key: str, workflow_id: str = "", step: str | int = "") -> None:
        nonlocal t
        t += 1_000_000
        records.append((t, hop, key, workflow_id, step))

    sent = t0
    at("gw.received", "", wf)
    at("gw.publish", "start1", wf)
    records.append((t + 2_000_000, "gw.confirmed", "start1", "", ""))
    for hop in ("orch.delivered", "orch.locked", "orch.written", "orch.committed"):
        at(hop, "start1")
    for i in range(1, 6):
        command, result = ids.command_id(wf, f"b{i}", "", 1), ids.result_id(wf, f"b{i}", "", 1)
        if advanced and i > 1:
            at("step.handed", command)
        else:
            at("relay.publish", command)
            records.append((t + 2_000_000, "relay.confirmed", command, "", ""))
        for hop in ("step.delivered", "step.claimed"):
            at(hop, command)
        at("step.body.start", command, wf, f"b{i}")
        recorded = ("step.recorded", "step.advanced") if advanced else ("step.recorded",)
        for hop in ("step.body.end", *recorded, "step.committed"):
            at(hop, command)
        if advanced:
            continue
        at("step.publish", result, wf, f"b{i}")
        records.append((t + 2_000_000, "step.confirmed", result, "", ""))
        for hop in ("orch.delivered", "orch.locked", "orch.written", "orch.committed"):
            at(hop, result)
    batch = ids.event_batch_id(ids.event_id(wf, 12))
    at("relay.publish", batch)
    records.append((t + 2_000_000, "relay.confirmed", batch, "", ""))
    at("gw.event", "workflow.completed", wf, 13)
    at("gw.sse", "workflow.completed", wf, 13)
    # The client reads the event 1 ms later (its own time is not a service record).
    return records, (sent, sent + 3_000_000, t + 1_000_000)


def test_breakdown_joins_each_workflow_into_one_chain() -> None:
    """Every hop of the chain is found and measured, each step's hops over every step, and the
    sum of the hops is the end-to-end time; a workflow with a point missing is left out."""
    one, client_one = _one_workflow("wf_a", 0)
    two, client_two = _one_workflow("wf_b", 10**10)
    broken = [r for r in two if r[1] != "step.claimed"]
    e2e = (client_one[2] - client_one[0]) / 1e9
    phase = Phase(5, 2, 1, 1.0, 0.0, [Sample(latency=e2e), Sample(latency=e2e)])
    result = breakdown(sorted(one + broken), {"wf_a": client_one, "wf_b": client_two}, phase)
    assert (result["workflows"], result["joined"]) == (2, 1)
    by_part: dict[str, list[float]] = {}
    for row in result["hops"]:
        by_part.setdefault(row["part"], []).append(row["p50_ms"])
    assert by_part["start"] == [1.0] * 6
    assert by_part["step"] == [1.0] * 12 + [12.0]
    assert by_part["end"] == [1.0] * 4
    # The four confirms, and the one way a command went (published).
    assert by_part["aside"] == [2.0] * 4 + [1.0]
    assert result["sum_of_medians_ms"] == result["e2e_p50_ms"] == 70.0
    assert result["step_p50_ms_by_position"] == [12.0] * 5


def test_breakdown_of_steps_advanced_and_handed_over() -> None:
    """Steps advanced by the step service: each step is eight hops, whichever way its command
    went; the aside rows split the published command from the handed-over ones."""
    records, client = _one_workflow("wf_c", 0, advanced=True)
    e2e = client[2] / 1e9
    phase = Phase(5, 1, 1, 1.0, 0.0, [Sample(latency=e2e)])
    result = breakdown(sorted(records), {"wf_c": client}, phase)
    assert result["joined"] == 1
    rows = {(row["part"], row["hop"]): row for row in result["hops"]}
    assert rows[("step", "a step, commit to commit")]["p50_ms"] == 8.0
    assert rows[("aside", "a command published: → step service has it")]["mean_ms"] == 1.0
    assert rows[("aside", "a command handed over: → step batch has it")]["mean_ms"] == 1.0
    assert rows[("aside", "command: published → confirmed")]["mean_ms"] == 2.0
    assert result["sum_of_means_ms"] == result["e2e_mean_ms"]
