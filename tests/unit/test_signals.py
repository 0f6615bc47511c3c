"""Named signals through the pure machine: declared, validated, taken by waits in order, kept
when they come first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from relayflow import machine
from relayflow.contracts import (
    CancelWorkflow,
    EventType,
    SignalWorkflow,
    StartWorkflow,
    StepResult,
    StepResultStatus,
)
from relayflow.errors import DefinitionError
from relayflow.machine import (
    Ignored,
    Rejected,
    TimerFired,
    TimerKind,
    Transition,
    WorkflowState,
)
from relayflow.model import StepStatus, WorkflowStatus
from relayflow.workflow import WorkflowDefinition, define_workflow, task, wait

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Empty(BaseModel):
    pass


class Decision(BaseModel):
    approved: bool
    by: str


FLOW = define_workflow(
    "approvalFlow",
    input_model=Empty,
    signals={"decision": Decision},
    steps=[
        task("prepare"),
        wait("first", signal="decision", after=["prepare"], timeout=timedelta(hours=1)),
        wait("second", signal="decision", after=["first"], timeout=timedelta(hours=1)),
        wait(
            "approved",
            signal="decision",
            after=["second"],
            timeout=timedelta(hours=1),
            accept=lambda payload: bool(payload["approved"]),
        ),
    ],
)


def started(definition: WorkflowDefinition = FLOW) -> WorkflowState:
    outcome = machine.start(
        definition,
        StartWorkflow(message_id="m", workflow_id="wf_1", workflow_name=definition.name, input={}),
        NOW,
    )
    assert isinstance(outcome, Transition)
    return outcome.state


def signal(number: int, *, approved: bool = True, name: str = "decision") -> SignalWorkflow:
    return SignalWorkflow(
        message_id=f"sig-{number}",
        workflow_id="wf_1",
        signal_name=name,
        payload={"approved": approved, "by": f"person {number}"},
        sent_by=f"person {number}",
    )


def applied(outcome: machine.Outcome) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


def finish_prepare(state: WorkflowState) -> Transition:
    done = StepResult(
        message_id="r",
        workflow_id="wf_1",
        step_name="prepare",
        attempt=1,
        status=StepResultStatus.SUCCEEDED,
    )
    return applied(machine.on_step_result(FLOW, state, done, NOW))


def test_signals_before_their_waits_are_kept_and_taken_in_order_by_successive_waits() -> None:
    state = started()
    # Three decisions arrive while `prepare` still runs: each is recorded and kept, in order.
    for number, approved in ((1, True), (2, False), (3, True)):
        outcome = applied(machine.on_signal(FLOW, state, signal(number, approved=approved), NOW))
        [received] = outcome.events
        assert received.event is EventType.SIGNAL_RECEIVED
        assert received.data["sentBy"] == f"person {number}"
        state = outcome.state
    assert [s["id"] for s in state.mailbox["decision"]] == ["sig-1", "sig-2", "sig-3"]
    state = finish_prepare(state).state
    # `first` took #1 and `second` #2 as the waits began; `approved` skips nothing left but #3.
    assert state.steps["first"].output == {"approved": True, "by": "person 1"}
    assert state.steps["second"].output == {"approved": False, "by": "person 2"}
    assert state.steps["approved"].output == {"approved": True, "by": "person 3"}
    assert state.status is WorkflowStatus.COMPLETED
    assert state.mailbox == {}


def test_a_filter_leaves_the_signals_it_does_not_take() -> None:
    state = finish_prepare(started()).state
    state = applied(machine.on_signal(FLOW, state, signal(1), NOW)).state
    state = applied(machine.on_signal(FLOW, state, signal(2, approved=False), NOW)).state
    assert state.steps["second"].status is StepStatus.COMPLETED
    rejected = applied(machine.on_signal(FLOW, state, signal(3, approved=False), NOW)).state
    assert rejected.steps["approved"].status is StepStatus.WAITING
    assert [s["id"] for s in rejected.mailbox["decision"]] == ["sig-3"]
    done = applied(machine.on_signal(FLOW, rejected, signal(4), NOW)).state
    assert done.status is WorkflowStatus.COMPLETED


def test_undeclared_or_invalid_signals_are_refused_and_finished_workflows_ignore_them() -> None:
    state = started()
    unknown = machine.on_signal(FLOW, state, signal(1, name="nope"), NOW)
    assert isinstance(unknown, Rejected)
    assert "declares no signal 'nope' (signals: decision)" in unknown.reason
    bad = SignalWorkflow(
        message_id="x", workflow_id="wf_1", signal_name="decision", payload={"approved": "maybe"}
    )
    invalid = machine.on_signal(FLOW, state, bad, NOW)
    assert isinstance(invalid, Rejected)
    assert "approved" in invalid.reason
    cancelled = applied(
        machine.on_cancel(FLOW, state, CancelWorkflow(message_id="c", workflow_id="wf_1"), NOW)
    ).state
    assert isinstance(machine.on_signal(FLOW, cancelled, signal(2), NOW), Ignored)


def test_a_signal_wait_times_out() -> None:
    state = finish_prepare(started())
    [timer] = state.timers
    assert timer.kind is TimerKind.WAIT_TIMEOUT
    fired = TimerFired("wf_1", TimerKind.WAIT_TIMEOUT, 1, step_name="first")
    ended = applied(machine.on_timer(FLOW, state.state, fired, NOW)).state
    assert ended.status is WorkflowStatus.FAILED
    assert ended.error is not None
    assert ended.error["type"] == "WaitTimeout"


def test_a_wait_for_an_undeclared_signal_fails_at_definition() -> None:
    with pytest.raises(DefinitionError, match="does not declare"):
        define_workflow(
            "w",
            input_model=Empty,
            steps=[wait("w1", signal="decision", timeout=timedelta(minutes=1))],
        )
    with pytest.raises(DefinitionError, match="either correlation_from= or signal="):
        wait("w1", timeout=timedelta(minutes=1))
