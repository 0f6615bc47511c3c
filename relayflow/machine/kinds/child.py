"""`child`: runs another workflow as this step. Each attempt starts one child, whose id is
derived from (parent, step, key, attempt): a re-dispatch, a duplicate or a crash never starts a
second one. The child's end comes back as a StepResult for this step (`NotifyParent`, sent by
the machine's core when any workflow with a parent ends); stopping the parent stops the child."""

from __future__ import annotations

from typing import Any

from relayflow.contracts import (
    CancelWorkflow,
    ErrorInfo,
    EventType,
    ParentRef,
    StartWorkflow,
    StepResult,
    StepResultStatus,
    wire_tenant,
)
from relayflow.machine.handle import StepHandle
from relayflow.machine.kinds.base import StepKind, stale_result, start_to_close_limit
from relayflow.machine.kinds.task import SINGLE_KEY
from relayflow.machine.transition import (
    CancelChild,
    Ignored,
    Rejected,
    StartChild,
    TimerFired,
    TimerKind,
)
from relayflow.model import StepStatus, ids
from relayflow.workflow import ChildSpec, Given


class Child(StepKind):
    name = "child"
    takes_results = True

    def start(self, step: StepHandle) -> None:
        spec = step.spec
        assert isinstance(spec, ChildSpec)
        workflow = step.workflow
        attempt = step.state.attempts + 1
        child_id = ids.child_workflow_id(workflow.id, step.name, SINGLE_KEY, attempt)
        step.begin_attempt(StepStatus.RUNNING, child_workflow_id=child_id)
        child_input = _child_input(step, spec)
        if isinstance(child_input, ErrorInfo):
            step.fail(child_input)
            return
        step.emit(EventType.STEP_STARTED, attempt=attempt, childWorkflowId=child_id)
        step.emit(
            EventType.CHILD_STARTED,
            attempt=attempt,
            childWorkflowId=child_id,
            childWorkflowName=spec.workflow,
        )
        step.add(
            StartChild(
                StartWorkflow(
                    message_id=ids.child_start_id(child_id),
                    workflow_id=child_id,
                    created_at=step.now,
                    workflow_name=spec.workflow,
                    input=child_input,
                    tenant=wire_tenant(workflow.tenant),
                    parent=ParentRef(
                        workflow_id=workflow.id,
                        step_name=step.name,
                        step_key=SINGLE_KEY,
                        attempt=attempt,
                    ),
                )
            )
        )
        if spec.timeout is not None:
            step.set_timer(TimerKind.STEP_TIMEOUT, attempt, step.now + spec.timeout)

    def on_result(self, step: StepHandle, message: StepResult) -> Ignored | Rejected | None:
        stale = stale_result(step, message)
        if stale is not None:
            return stale
        child_id = step.state.child_workflow_id
        if message.status is StepResultStatus.SUCCEEDED:
            step.emit(EventType.CHILD_COMPLETED, childWorkflowId=child_id, output=message.output)
            step.complete(message.output)
        else:
            error = message.error or ErrorInfo(type="ChildFailed", message="no error given")
            step.emit(
                EventType.CHILD_FAILED,
                childWorkflowId=child_id,
                error=error.model_dump(mode="json"),
            )
            step.attempt_failed(error)
        return None

    def on_timer(self, step: StepHandle, timer: TimerFired) -> Ignored | None:
        limit = start_to_close_limit(step, timer)
        if isinstance(limit, Ignored):
            return limit
        _stop_child(step, f"its parent's step {step.name!r} timed out")
        step.attempt_failed(
            ErrorInfo(
                type="StepTimeout",
                message=f"child workflow {step.state.child_workflow_id} did not finish "
                f"within {limit:g}s",
                retryable=True,
            )
        )
        return None

    def on_cancel(self, step: StepHandle) -> None:
        if step.state.status is StepStatus.RUNNING:
            _stop_child(step, f"its parent {step.workflow.id} stopped")
        step.cancel()


def _stop_child(step: StepHandle, reason: str) -> None:
    child_id = step.state.child_workflow_id
    if child_id is not None:
        step.add(
            CancelChild(
                CancelWorkflow(
                    message_id=ids.child_cancel_id(child_id),
                    workflow_id=child_id,
                    created_at=step.now,
                    reason=reason,
                )
            )
        )


def _child_input(step: StepHandle, spec: ChildSpec) -> dict[str, Any] | ErrorInfo:
    if spec.input is None:
        return step.workflow.input
    try:
        value = spec.input(Given(input=step.workflow.input, outputs=step.ancestor_outputs()))
    except Exception as exc:
        return ErrorInfo(
            type="ChildInputError",
            message=f"the input of child step {step.name!r} raised {type(exc).__name__}: {exc}",
            retryable=False,
        )
    if not isinstance(value, dict):
        return ErrorInfo(
            type="ChildInputError",
            message=f"the input of child step {step.name!r} is a {type(value).__name__}, "
            "not a JSON object",
            retryable=False,
        )
    return value
