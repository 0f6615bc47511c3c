"""Child workflows through the pure machine: a parent's `child` step starts one child per
attempt, hears its end as a StepResult, retries with a fresh child, and stops it on cancel."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from relayflow import machine
from relayflow.contracts import (
    CancelWorkflow,
    EventType,
    StartWorkflow,
    StepResult,
    StepResultStatus,
)
from relayflow.errors import DefinitionError
from relayflow.machine import (
    CancelChild,
    Ignored,
    NotifyParent,
    Rejected,
    StartChild,
    TimerFired,
    TimerKind,
    Transition,
)
from relayflow.model import StepStatus, WorkflowStatus, ids
from relayflow.workflow import (
    RetryPolicy,
    WorkflowDefinition,
    WorkflowRegistry,
    child,
    define_workflow,
    task,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Note(BaseModel):
    text: str


class Anything(BaseModel):
    pass


NOTE = define_workflow("note", input_model=Note, steps=[task("send")], output_from="send")
PARENT = define_workflow(
    "parent",
    input_model=Anything,
    steps=[
        task("prepare"),
        child(
            "notify",
            workflow=NOTE,
            after=["prepare"],
            input=lambda given: {"text": given.output("prepare")["text"]},
            retry=RetryPolicy(max_attempts=2, jitter=0),
            timeout=timedelta(minutes=5),
        ),
    ],
    output_from="notify",
)


def applied(outcome: machine.Outcome) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


def started(definition: WorkflowDefinition, message: StartWorkflow) -> Transition:
    return applied(machine.start(definition, message, NOW))


def result(
    transition: Transition, step: str, output: Any = None, *, failed: bool = False
) -> StepResult:
    state = transition.state
    return StepResult(
        message_id=f"r-{state.id}-{step}-{state.steps[step].attempts}",
        workflow_id=state.id,
        step_name=step,
        attempt=state.steps[step].attempts,
        status=StepResultStatus.FAILED if failed else StepResultStatus.SUCCEEDED,
        output=output,
        error={"type": "Boom", "message": "boom", "retryable": True} if failed else None,
    )


def parent_at_child() -> Transition:
    t = started(
        PARENT,
        StartWorkflow(message_id="s", workflow_id="wf_p", workflow_name="parent", input={}),
    )
    return applied(
        machine.on_step_result(PARENT, t.state, result(t, "prepare", {"text": "hi"}), NOW)
    )


def only(intents: list[Any], kind: type) -> Any:
    [intent] = [i for i in intents if isinstance(i, kind)]
    return intent


def test_a_child_step_starts_one_deterministic_child_and_completes_with_its_output() -> None:
    """The child's id comes from (parent, step, key, attempt); its StartWorkflow names the
    parent's step; the child's end comes back as a StepResult that completes the step and so the
    parent, with the child's output; the parent's stream shows child.started/completed."""
    t = parent_at_child()
    start = only(t.intents, StartChild).start
    assert start.workflow_id == ids.child_workflow_id("wf_p", "notify", "0", 1)
    assert start.message_id == ids.child_start_id(start.workflow_id)
    assert (start.workflow_name, start.input) == ("note", {"text": "hi"})
    assert start.parent is not None
    assert (start.parent.workflow_id, start.parent.step_name, start.parent.attempt) == (
        "wf_p",
        "notify",
        1,
    )
    assert t.state.steps["notify"].child_workflow_id == start.workflow_id
    assert [e.event for e in t.events][-2:] == [EventType.STEP_STARTED, EventType.CHILD_STARTED]

    kid = started(NOTE, start)
    assert kid.state.parent == start.parent
    kid = applied(machine.on_step_result(NOTE, kid.state, result(kid, "send", {"sent": 1}), NOW))
    assert kid.state.status is WorkflowStatus.COMPLETED
    back = only(kid.intents, NotifyParent).result
    assert (back.workflow_id, back.step_name, back.attempt, back.output) == (
        "wf_p",
        "notify",
        1,
        {"sent": 1},
    )
    assert back.message_id == ids.child_result_id(start.workflow_id, 1)

    done = applied(machine.on_step_result(PARENT, t.state, back, NOW))
    assert done.state.status is WorkflowStatus.COMPLETED
    assert done.state.output == {"sent": 1}
    assert [e.event for e in done.events][:2] == [
        EventType.CHILD_COMPLETED,
        EventType.STEP_COMPLETED,
    ]
    assert isinstance(machine.on_step_result(PARENT, done.state, back, NOW), Ignored)


def test_a_failed_child_is_retried_as_a_fresh_child_by_the_steps_policy() -> None:
    """A child that fails (retryably) fails the attempt: the retry timer starts attempt 2,
    which starts a child with another id; the first child's late result changes nothing."""
    t = parent_at_child()
    first = only(t.intents, StartChild).start
    kid = started(NOTE, first)
    kid = applied(machine.on_step_result(NOTE, kid.state, result(kid, "send", failed=True), NOW))
    # The child's own policy (default: 5 attempts) retries its step first.
    assert kid.state.status is WorkflowStatus.RUNNING
    failure = StepResult(
        message_id=ids.child_result_id(first.workflow_id, 1),
        workflow_id="wf_p",
        step_name="notify",
        attempt=1,
        status=StepResultStatus.FAILED,
        error={"type": "Boom", "message": "boom", "retryable": True},
    )
    t = applied(machine.on_step_result(PARENT, t.state, failure, NOW))
    assert t.state.steps["notify"].status is StepStatus.RETRYING
    assert EventType.CHILD_FAILED in [e.event for e in t.events]
    timer = only(t.timers, object)
    assert timer.kind is TimerKind.RETRY
    t = applied(
        machine.on_timer(PARENT, t.state, TimerFired("wf_p", TimerKind.RETRY, 1, "notify"), NOW)
    )
    second = only(t.intents, StartChild).start
    assert second.workflow_id == ids.child_workflow_id("wf_p", "notify", "0", 2)
    assert second.workflow_id != first.workflow_id
    assert isinstance(machine.on_step_result(PARENT, t.state, failure, NOW), Ignored)


def test_cancelling_the_parent_cancels_its_running_child() -> None:
    """A cancel of the parent (or its failure elsewhere) sends the running child a
    CancelWorkflow with a deterministic id; the child's cancelled run reports back, and that
    late result is ignored by the finished parent."""
    t = parent_at_child()
    child_id = only(t.intents, StartChild).start.workflow_id
    cancel = CancelWorkflow(message_id="c", workflow_id="wf_p", reason="no longer needed")
    stopped = applied(machine.on_cancel(PARENT, t.state, cancel, NOW))
    stop = only(stopped.intents, CancelChild).cancel
    assert (stop.workflow_id, stop.message_id) == (child_id, ids.child_cancel_id(child_id))
    assert stopped.state.steps["notify"].status is StepStatus.CANCELLED

    kid = started(NOTE, only(t.intents, StartChild).start)
    kid = applied(machine.on_cancel(NOTE, kid.state, stop, NOW))
    back = only(kid.intents, NotifyParent).result
    assert back.status is StepResultStatus.FAILED
    assert back.error is not None
    assert (back.error.type, back.error.retryable) == ("Cancelled", False)
    assert isinstance(machine.on_step_result(PARENT, stopped.state, back, NOW), Ignored)


def test_a_child_step_that_outlives_its_timeout_cancels_the_child_and_retries() -> None:
    """The step's timeout bounds each child run: past it the child is cancelled and the
    attempt fails with StepTimeout (retried here by the policy)."""
    t = parent_at_child()
    child_id = only(t.intents, StartChild).start.workflow_id
    fired = TimerFired("wf_p", TimerKind.STEP_TIMEOUT, 1, "notify")
    t = applied(machine.on_timer(PARENT, t.state, fired, NOW))
    assert only(t.intents, CancelChild).cancel.workflow_id == child_id
    assert t.state.steps["notify"].status is StepStatus.RETRYING


def test_bad_input_is_dead_lettered_at_the_top_and_fails_a_child_run() -> None:
    """An input the workflow's model refuses: from outside, the start is rejected (dead-lettered
    with the field); for a child, the run is recorded as failed so that its parent hears why,
    and the parent's step fails without a retry (the same input would fail again)."""
    outside = StartWorkflow(message_id="s", workflow_id="wf_n", workflow_name="note", input={})
    rejected = machine.start(NOTE, outside, NOW)
    assert isinstance(rejected, Rejected)
    assert "text" in rejected.reason

    bad_parent = define_workflow(
        "badParent",
        input_model=Anything,
        steps=[child("notify", workflow=NOTE, input=lambda given: {"wrong": 1})],
    )
    t = started(
        bad_parent,
        StartWorkflow(message_id="s2", workflow_id="wf_b", workflow_name="badParent", input={}),
    )
    start = only(t.intents, StartChild).start
    kid = started(NOTE, start)
    assert kid.state.status is WorkflowStatus.FAILED
    assert kid.state.error is not None
    assert kid.state.error["type"] == "InvalidInput"
    back = only(kid.intents, NotifyParent).result
    t = applied(machine.on_step_result(bad_parent, t.state, back, NOW))
    assert t.state.status is WorkflowStatus.FAILED
    assert t.state.steps["notify"].attempts == 1


def test_a_child_input_function_that_raises_fails_the_step() -> None:
    """The parent computes the child's input deterministically; when that raises, the step fails
    with the error and no child is started."""
    broken = define_workflow(
        "broken",
        input_model=Anything,
        steps=[child("notify", workflow=NOTE, input=lambda given: given.output("nope"))],
    )
    t = started(
        broken,
        StartWorkflow(message_id="s", workflow_id="wf_x", workflow_name="broken", input={}),
    )
    assert t.state.status is WorkflowStatus.FAILED
    assert t.state.steps["notify"].error is not None
    assert t.state.steps["notify"].error["type"] == "ChildInputError"
    assert not [i for i in t.intents if isinstance(i, StartChild)]


def test_the_registry_refuses_unknown_children_and_cycles_at_start_up() -> None:
    """A child step naming a workflow that is not registered, or workflows that start each
    other in a cycle, fail when the definitions load, naming the workflows."""
    with pytest.raises(DefinitionError, match="'notify' starts workflow 'note', which is not"):
        WorkflowRegistry([PARENT])
    WorkflowRegistry([PARENT, NOTE])
    ping = define_workflow("ping", input_model=Anything, steps=[child("p", workflow="pong")])
    pong = define_workflow("pong", input_model=Anything, steps=[child("p", workflow="ping")])
    with pytest.raises(DefinitionError, match="cycle: ping -> pong -> ping"):
        WorkflowRegistry([ping, pong])
