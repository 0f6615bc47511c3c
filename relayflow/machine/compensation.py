"""Compensation (sagas): a workflow that fails or is cancelled after compensable steps completed
runs their undo steps before it ends.

A task declares its undo body (`task("reserve", compensate="release")`). Each undo is an ordinary
step invocation — stepKey `undo`, the forward step's retry policy and timeout, a durable retry
timer, a DLQ — whose command carries the forward step's input and output. Undos run in reverse
dependency order: a step's undo starts once the undos of every compensable step that came after
it have completed, so independent ones run in parallel. The workflow is `compensating` meanwhile
(nothing forward starts, a cancel changes nothing), then `compensated`, or
`compensation_failed` when an undo fails for good; a retry of that runs the undos that did not
complete. Everything lives in the workflow's state (`StepState.undo`), so a crash anywhere
resumes where the last commit left it.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from relayflow.contracts import (
    ErrorInfo,
    EventType,
    StepResult,
    StepResultStatus,
)
from relayflow.machine.handle import StepHandle, emit
from relayflow.machine.transition import (
    DispatchStep,
    Ignored,
    TimerFired,
    TimerKind,
    Transition,
)
from relayflow.model import StepState, StepStatus, WorkflowStatus
from relayflow.workflow import TaskSpec, WorkflowDefinition

# The stepKey of an undo invocation: (workflow, step, "undo") beside the forward (…, "0").
UNDO_KEY = "undo"

# How a compensation ended: the final status and the run's error.
Ending = tuple[WorkflowStatus, dict[str, Any]]


def undo_body(definition: WorkflowDefinition, step: str) -> str | None:
    """The body that undoes `step`, if it declares one."""
    spec = definition.steps.get(step)
    return spec.compensate or None if isinstance(spec, TaskSpec) else None


def is_undo(definition: WorkflowDefinition, step: str, key: str) -> bool:
    return key == UNDO_KEY and undo_body(definition, step) is not None


def begin(
    definition: WorkflowDefinition,
    transition: Transition,
    now: Any,
    cause: WorkflowStatus,
    error: dict[str, Any],
) -> bool:
    """Start undoing, if any completed step declares an undo; False (nothing done) if none."""
    state = transition.state
    to_undo = [
        name
        for name in definition.order
        if undo_body(definition, name) and state.steps[name].status is StepStatus.COMPLETED
    ]
    if not to_undo:
        return False
    steps = {**state.steps}
    for name in to_undo:
        steps[name] = replace(steps[name], undo=StepState())
    cause_error = {**error, "cause": cause.value}
    transition.state = replace(
        state, status=WorkflowStatus.COMPENSATING, steps=steps, error=cause_error, updated_at=now
    )
    emit(
        transition,
        EventType.WORKFLOW_COMPENSATING,
        now,
        data={"cause": cause.value, "error": cause_error, "steps": to_undo},
    )
    return True


def advance(definition: WorkflowDefinition, transition: Transition, now: Any) -> Ending | None:
    """Start every undo whose later steps are undone; say how the compensation ended, if it
    has."""
    state = transition.state
    undos = {name: step.undo for name, step in state.steps.items() if step.undo is not None}
    for name in definition.order:
        undo = undos.get(name)
        if undo is not None and undo.status is StepStatus.FAILED:
            cause = state.error or {}
            failure = undo.error or {}
            return WorkflowStatus.COMPENSATION_FAILED, {
                "type": failure.get("type", "CompensationFailed"),
                "message": f"the undo of step {name!r} failed: {failure.get('message', '')}",
                "retryable": False,
                "step": name,
                "cause": cause,
            }
    if all(undo.status is StepStatus.COMPLETED for undo in undos.values()):
        return WorkflowStatus.COMPENSATED, dict(state.error or {})
    for name in definition.order:
        undo = undos.get(name)
        if undo is None or undo.status is not StepStatus.PENDING:
            continue
        later = [other for other in undos if other != name and name in definition.ancestors[other]]
        if all(undos[other].status is StepStatus.COMPLETED for other in later):
            _dispatch(StepHandle(definition, transition, name, now))
    return None


def on_result(step: StepHandle, message: StepResult) -> Ignored | None:
    undo = step.state.undo
    if (
        step.workflow.status is not WorkflowStatus.COMPENSATING
        or undo is None
        or undo.status is not StepStatus.RUNNING
        or undo.attempts != message.attempt
    ):
        return Ignored(f"stale undo result for {step.name} attempt {message.attempt}")
    if message.status is StepResultStatus.SUCCEEDED:
        _set(step, replace(undo, status=StepStatus.COMPLETED, error=None, finished_at=step.now))
        step.emit(EventType.STEP_COMPENSATED, attempt=undo.attempts)
    else:
        _attempt_failed(
            step, message.error or ErrorInfo(type="UnknownError", message="no error given")
        )
    return None


def on_timer(step: StepHandle, timer: TimerFired) -> Ignored | None:
    undo = step.state.undo
    if step.workflow.status is not WorkflowStatus.COMPENSATING or undo is None:
        return Ignored(f"undo timer for {step.name} with no undo under way")
    if undo.attempts != timer.attempt:
        return Ignored(f"undo {timer.kind.value} timer for {step.name} #{timer.attempt} is stale")
    if timer.kind is TimerKind.RETRY and undo.status is StepStatus.RETRYING:
        _dispatch(step)
        return None
    if timer.kind is TimerKind.STEP_TIMEOUT and undo.status is StepStatus.RUNNING:
        limit = step.spec.timeout.total_seconds() if step.spec.timeout else 0.0
        _attempt_failed(
            step,
            ErrorInfo(
                type="StepTimeout",
                message=f"undo attempt {timer.attempt} did not report back within {limit:g}s",
                retryable=True,
            ),
        )
        return None
    return Ignored(f"undo {timer.kind.value} timer for {step.name} #{timer.attempt} is stale")


def resume(definition: WorkflowDefinition, transition: Transition, now: Any) -> None:
    """A retried `compensation_failed` run: the failed undos are pending again."""
    state = transition.state
    steps = {
        name: replace(step, undo=replace(step.undo, status=StepStatus.PENDING, error=None))
        if step.undo is not None and step.undo.status is StepStatus.FAILED
        else step
        for name, step in state.steps.items()
    }
    cause = (state.error or {}).get("cause") or {}
    transition.state = replace(
        state,
        status=WorkflowStatus.COMPENSATING,
        steps=steps,
        error=cause,
        finished_at=None,
        updated_at=now,
    )


def _set(step: StepHandle, undo: StepState) -> None:
    step.set(replace(step.state, undo=undo))


def _dispatch(step: StepHandle) -> None:
    undo = step.state.undo
    assert undo is not None
    body = undo_body(step.definition, step.name)
    assert body is not None
    attempt = undo.attempts + 1
    _set(
        step,
        replace(
            undo,
            status=StepStatus.RUNNING,
            attempts=attempt,
            started_at=step.now,
            finished_at=None,
            next_attempt_at=None,
        ),
    )
    step.emit(EventType.STEP_COMPENSATING, attempt=attempt, body=body)
    step.add(
        DispatchStep(
            step.command(
                UNDO_KEY,
                attempt,
                body=body,
                # What it has to undo: the forward step's input, and its output by its name.
                input=step.workflow.input,
                dependencies={**step.ancestor_outputs(), step.name: step.state.output},
            )
        )
    )
    if step.spec.timeout is not None:
        step.set_timer(TimerKind.STEP_TIMEOUT, attempt, step.now + step.spec.timeout, UNDO_KEY)


def _attempt_failed(step: StepHandle, error: ErrorInfo) -> None:
    undo = step.state.undo
    assert undo is not None
    error_json = error.model_dump(mode="json")
    next_at = step.retry_at(error, undo.attempts, UNDO_KEY)
    if next_at is None:
        _set(step, replace(undo, status=StepStatus.FAILED, error=error_json, finished_at=step.now))
        step.emit(EventType.STEP_COMPENSATION_FAILED, attempt=undo.attempts, error=error_json)
        return
    _set(step, replace(undo, status=StepStatus.RETRYING, error=error_json, next_attempt_at=next_at))
    step.emit(
        EventType.STEP_RETRYING,
        attempt=undo.attempts,
        nextAttempt=undo.attempts + 1,
        nextAttemptAt=next_at.isoformat(),
        error=error_json,
        compensation=True,
    )
    step.set_timer(TimerKind.RETRY, undo.attempts, next_at, UNDO_KEY)
