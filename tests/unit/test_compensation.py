"""Compensation through the pure machine: undo steps in reverse dependency order, durably."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from relayflow import machine
from relayflow.contracts import (
    CancelWorkflow,
    ErrorInfo,
    EventType,
    RetryWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
)
from relayflow.machine import (
    Ignored,
    TimerFired,
    TimerKind,
    Transition,
    WorkflowState,
)
from relayflow.machine.compensation import UNDO_KEY
from relayflow.model import StepStatus, WorkflowStatus
from relayflow.workflow import RetryPolicy, define_workflow, task

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Request(BaseModel):
    amount: int


SAGA = define_workflow(
    "saga",
    input_model=Request,
    steps=[
        task("reserve", compensate="release"),
        task("audit", after=["reserve"]),
        task("charge", after=["reserve"], compensate="refund"),
        task("ship", after=["charge"], compensate="unship"),
        task("notify", after=["ship", "audit"]),
    ],
    retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=1)),
)


def applied(outcome: machine.Outcome) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


def begin() -> Transition:
    return applied(
        machine.start(
            SAGA,
            StartWorkflow(
                message_id="m", workflow_id="wf_1", workflow_name="saga", input={"amount": 5}
            ),
            NOW,
        )
    )


def answer(command: StepCommand, *, fail: bool = False, retryable: bool = False) -> StepResult:
    return StepResult(
        message_id=f"res:{command.step_name}:{command.step_key}:{command.attempt}",
        workflow_id=command.workflow_id,
        step_name=command.step_name,
        step_key=command.step_key,
        attempt=command.attempt,
        status=StepResultStatus.FAILED if fail else StepResultStatus.SUCCEEDED,
        output=None if fail else {"done": command.body or command.step_name},
        error=ErrorInfo(type="Broken", message="no", retryable=retryable) if fail else None,
    )


def run_until(
    t: Transition, failing: str | None = None
) -> tuple[WorkflowState, list[StepCommand], list[Transition]]:
    """Answer forward commands (failing `failing`) until only undo commands are in flight."""
    state = t.state
    in_flight = list(t.commands)
    undos: list[StepCommand] = []
    seen = [t]
    while in_flight:
        command = in_flight.pop(0)
        if command.step_key == UNDO_KEY:
            undos.append(command)
            continue
        outcome = applied(
            machine.on_step_result(
                SAGA, state, answer(command, fail=command.step_name == failing), NOW
            )
        )
        seen.append(outcome)
        state = outcome.state
        in_flight.extend(outcome.commands)
    return state, undos, seen


def events(transitions: list[Transition]) -> list[tuple[str, str | None]]:
    return [(e.event.value, e.step_name) for t in transitions for e in t.events]


def test_a_failure_undoes_completed_steps_in_reverse_dependency_order() -> None:
    state, undos, seen = run_until(begin(), failing="notify")
    assert state.status is WorkflowStatus.COMPENSATING
    # ship came after charge, which came after reserve: ship's undo goes first, alone.
    [unship] = undos
    assert (unship.step_name, unship.body, unship.step_key) == ("ship", "unship", UNDO_KEY)
    assert unship.input == {"amount": 5}
    assert unship.dependencies["ship"] == {"done": "ship"}
    assert unship.dependencies["reserve"] == {"done": "reserve"}
    t = applied(machine.on_step_result(SAGA, state, answer(unship), NOW))
    [refund] = t.commands
    assert (refund.step_name, refund.body) == ("charge", "refund")
    t = applied(machine.on_step_result(SAGA, t.state, answer(refund), NOW))
    [release] = t.commands
    assert release.body == "release"
    done = applied(machine.on_step_result(SAGA, t.state, answer(release), NOW))
    assert done.state.status is WorkflowStatus.COMPENSATED
    assert done.state.error is not None
    assert done.state.error["step"] == "notify"
    assert done.state.error["cause"] == "failed"
    phases = [done.state.steps[name].undo for name in ("reserve", "charge", "ship")]
    assert all(phase is not None and phase.status is StepStatus.COMPLETED for phase in phases)
    assert done.state.steps["audit"].undo is None
    kinds = [e for e, _ in events([*seen, t, done])]
    assert kinds.index("workflow.compensating") < kinds.index("step.compensating")
    assert kinds[-1] == "workflow.compensated"
    # A late copy of an undo's result changes nothing.
    assert isinstance(machine.on_step_result(SAGA, done.state, answer(release), NOW), Ignored)


def test_nothing_to_undo_fails_plainly() -> None:
    t = begin()
    [reserve] = t.commands
    failed = applied(machine.on_step_result(SAGA, t.state, answer(reserve, fail=True), NOW))
    assert failed.state.status is WorkflowStatus.FAILED


def test_a_cancel_compensates_and_nothing_forward_or_outside_moves_it_meanwhile() -> None:
    t = begin()
    [reserve] = t.commands
    t = applied(machine.on_step_result(SAGA, t.state, answer(reserve), NOW))
    cancel = CancelWorkflow(message_id="c", workflow_id="wf_1", reason="stop")
    t = applied(machine.on_cancel(SAGA, t.state, cancel, NOW))
    assert t.state.status is WorkflowStatus.COMPENSATING
    assert t.state.error is not None
    assert t.state.error["cause"] == "cancelled"
    [release] = t.commands
    state = t.state
    assert isinstance(machine.on_cancel(SAGA, state, cancel, NOW), Ignored)
    deadline = TimerFired("wf_1", TimerKind.WORKFLOW_TIMEOUT, 1)
    assert isinstance(machine.on_timer(SAGA, state, deadline, NOW), Ignored)
    forward = TimerFired("wf_1", TimerKind.STEP_TIMEOUT, 1, step_name="charge")
    assert isinstance(machine.on_timer(SAGA, state, forward, NOW), Ignored)
    done = applied(machine.on_step_result(SAGA, state, answer(release), NOW))
    assert done.state.status is WorkflowStatus.COMPENSATED


def test_an_undo_retries_by_its_timer_then_fails_for_good_and_a_retry_resumes_it() -> None:
    t = begin()
    [reserve] = t.commands
    t = applied(machine.on_step_result(SAGA, t.state, answer(reserve), NOW))
    cancel = CancelWorkflow(message_id="c", workflow_id="wf_1")
    t = applied(machine.on_cancel(SAGA, t.state, cancel, NOW))
    [release] = t.commands
    t = applied(
        machine.on_step_result(SAGA, t.state, answer(release, fail=True, retryable=True), NOW)
    )
    [timer] = t.timers
    assert (timer.kind, timer.step_key) == (TimerKind.RETRY, UNDO_KEY)
    fired = TimerFired("wf_1", TimerKind.RETRY, 1, step_name="reserve", step_key=UNDO_KEY)
    t = applied(machine.on_timer(SAGA, t.state, fired, NOW))
    [again] = t.commands
    assert again.attempt == 2
    assert isinstance(machine.on_timer(SAGA, t.state, fired, NOW), Ignored)
    t = applied(
        machine.on_step_result(SAGA, t.state, answer(again, fail=True, retryable=True), NOW)
    )
    assert t.state.status is WorkflowStatus.COMPENSATION_FAILED
    assert t.state.error is not None
    assert "the undo of step 'reserve' failed" in t.state.error["message"]
    assert [e.event for e in t.events][-1] is EventType.WORKFLOW_COMPENSATION_FAILED
    resumed = applied(
        machine.on_retry(SAGA, t.state, RetryWorkflow(message_id="r", workflow_id="wf_1"), NOW)
    )
    assert resumed.state.status is WorkflowStatus.COMPENSATING
    [third] = resumed.commands
    assert (third.body, third.attempt) == ("release", 3)
    done = applied(machine.on_step_result(SAGA, resumed.state, answer(third), NOW))
    assert done.state.status is WorkflowStatus.COMPENSATED
    assert done.state.error is not None
    assert done.state.error["type"] == "Cancelled"


def test_independent_undos_run_together() -> None:
    flow = define_workflow(
        "parallel",
        input_model=Request,
        steps=[
            task("a", compensate="undoA"),
            task("b", compensate="undoB"),
            task("c", after=["a", "b"]),
        ],
    )
    t = applied(
        machine.start(
            flow,
            StartWorkflow(
                message_id="m", workflow_id="wf_2", workflow_name="parallel", input={"amount": 1}
            ),
            NOW,
        )
    )
    a, b = t.commands
    t = applied(machine.on_step_result(flow, t.state, answer(a), NOW))
    t = applied(machine.on_step_result(flow, t.state, answer(b), NOW))
    [c] = t.commands
    t = applied(machine.on_step_result(flow, t.state, answer(c, fail=True), NOW))
    assert sorted(x.body or "" for x in t.commands) == ["undoA", "undoB"]
    assert flow.task_names() == ["a", "undoA", "b", "undoB", "c"]
