"""The workflow state machine, as plain functions over plain data.

Given a workflow's state and one input (a start, a step result, an external reply, a fired timer,
a cancel or a retry) each function returns a `Transition` — the new state, the events, the
timers and the outgoing intents — or `Ignored` / `Rejected`. Nothing here does I/O; the
orchestrator's processor wraps it in a transaction, and the tests drive it directly.

What this module decides is the same for every kind: a step starts once every step it comes
after has completed (so independent steps run in parallel), a workflow completes when all its
steps have and fails as soon as one fails, a cancel or timeout stops the unfinished ones. What a
step does between its start and its end is its kind's (`kinds/`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from relayflow.contracts import (
    DEFAULT_TENANT,
    CancelWorkflow,
    ErrorInfo,
    EventType,
    ExternalReply,
    ParentRef,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    StepResult,
    StepResultStatus,
)
from relayflow.machine import compensation
from relayflow.machine.handle import StepHandle, emit
from relayflow.machine.kinds import kind_of
from relayflow.machine.transition import (
    Ignored,
    ItemAnswer,
    NotifyParent,
    Outcome,
    Rejected,
    Timer,
    TimerFired,
    TimerKind,
    Transition,
)
from relayflow.model import (
    RERUN_STEPS,
    RETRYABLE,
    SETTLED_STEPS,
    UNFINISHED_STEPS,
    ItemState,
    StepState,
    StepStatus,
    WorkflowState,
    WorkflowStatus,
    ids,
    input_hash,
)
from relayflow.workflow import Given, WorkflowDefinition


def start(
    definition: WorkflowDefinition, message: StartWorkflow, now: datetime
) -> Transition | Rejected:
    """A new workflow. An input its definition's model refuses is dead-lettered when it came
    from outside (the gateway would have answered 422); a child's is recorded as a failed run,
    so that its parent hears why."""
    state = WorkflowState(
        id=message.workflow_id,
        name=definition.name,
        status=WorkflowStatus.RUNNING,
        input=message.input,
        input_hash=input_hash(message.input),
        idempotency_key=message.idempotency_key,
        steps={name: StepState() for name in definition.order},
        created_at=now,
        updated_at=now,
        parent=message.parent,
        version=definition.version,
        tenant=message.tenant or DEFAULT_TENANT,
    )
    problem = _input_problem(definition, message.input)
    if problem is not None and message.parent is None:
        return Rejected(f"invalid input for workflow {definition.name!r}: {problem}")
    transition = Transition(state=state)
    emit(transition, EventType.WORKFLOW_STARTED, now, data={"input": message.input})
    if problem is not None:
        error = {"type": "InvalidInput", "message": problem, "retryable": False}
        _end(transition, WorkflowStatus.FAILED, now, error=error)
        return transition
    _set_workflow_timer(definition, transition, now)
    _advance(definition, transition, now)
    return transition


def _input_problem(definition: WorkflowDefinition, value: dict[str, Any]) -> str | None:
    try:
        definition.input_model.model_validate(value)
    except ValidationError as exc:
        return _problems(exc)
    return None


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in error['loc']) or '<input>'}: {error['msg']}"
        for error in exc.errors(include_url=False)[:10]
    )


def duplicate_start(state: WorkflowState, message: StartWorkflow) -> Ignored | Rejected:
    """A start for a workflow that exists: the same request again is a no-op; another request
    under the same id is a conflict that must not pass silently."""
    if (message.tenant or DEFAULT_TENANT) != state.tenant:
        return Rejected(
            f"workflow {state.id} exists and is not tenant {message.tenant or DEFAULT_TENANT!r}'s; "
            "a workflow id cannot be reused for another request"
        )
    if state.name != message.workflow_name or state.input_hash != input_hash(message.input):
        return Rejected(
            f"workflow {state.id} was already started as {state.name!r} with a different "
            "input; an idempotency key or workflow id cannot be reused for another request"
        )
    return Ignored(f"workflow {state.id} already started")


def on_step_result(
    definition: WorkflowDefinition,
    state: WorkflowState,
    message: StepResult,
    now: datetime,
    item: ItemState | None = None,
) -> Outcome:
    """`item`: for a map step, the stored state of the item the result is about."""
    if message.step_name not in definition.steps:
        return Rejected(f"workflow {definition.name!r} has no step {message.step_name!r}")
    if compensation.is_undo(definition, message.step_name, message.step_key):
        return _undo(
            definition, state, message.step_name, now, lambda s: compensation.on_result(s, message)
        )
    kind = kind_of(definition.steps[message.step_name])
    if not kind.takes_results:
        return Rejected(f"step {message.step_name!r} is a {kind.name}, it takes no step result")
    if state.finished:
        return Ignored(f"workflow {state.id} is already {state.status.value}")
    transition = Transition(state=state)
    step = StepHandle(definition, transition, message.step_name, now, item=item)
    outcome = kind.on_result(step, message)
    if outcome is not None:
        return outcome
    _advance(definition, transition, now)
    return transition


def on_reply(
    definition: WorkflowDefinition, state: WorkflowState, message: ExternalReply, now: datetime
) -> Outcome:
    if state.status is WorkflowStatus.COMPLETED:
        return Ignored(f"reply {message.correlation_id} after workflow {state.id} completed")
    if not state.finished:
        transition = Transition(state=state)
        for name in definition.order:
            step = StepHandle(definition, transition, name, now)
            if kind_of(step.spec).on_reply(step, message):
                _advance(definition, transition, now)
                return transition
    if message.correlation_id in state.signals or _consumed(state, message.correlation_id):
        return Ignored(f"reply {message.correlation_id} already received")
    # The reply overtook the step that will wait for it, or came after the wait gave up: keep
    # it for that step (a retried workflow's wait finds it), without resuming anything now.
    signals = {**state.signals, message.correlation_id: message.payload}
    return Transition(state=replace(state, signals=signals, updated_at=now))


def on_signal(
    definition: WorkflowDefinition, state: WorkflowState, message: SignalWorkflow, now: datetime
) -> Outcome:
    """A named signal: refused if the workflow does not declare it or its payload does not fit
    the declared model; recorded (`signal.received`) and offered to the steps waiting for it,
    else kept in the mailbox for the next wait. Duplicates never get here (the inbox)."""
    model = definition.signals.get(message.signal_name)
    if model is None:
        declared = ", ".join(sorted(definition.signals)) or "none"
        return Rejected(
            f"workflow {definition.name!r} declares no signal {message.signal_name!r} "
            f"(signals: {declared})"
        )
    try:
        model.model_validate(message.payload)
    except ValidationError as exc:
        return Rejected(f"signal {message.signal_name!r} payload: {_problems(exc)}")
    if state.status is not WorkflowStatus.RUNNING:
        return Ignored(f"signal for a {state.status.value} workflow {state.id}")
    transition = Transition(state=state)
    signal = {
        "id": message.message_id,
        "payload": message.payload,
        "sentBy": message.sent_by,
        "at": message.created_at.isoformat(),
    }
    emit(
        transition,
        EventType.SIGNAL_RECEIVED,
        now,
        data={
            "signal": message.signal_name,
            "payload": message.payload,
            "sentBy": message.sent_by,
            "signalId": message.message_id,
        },
    )
    for name in definition.order:
        step = StepHandle(definition, transition, name, now)
        if kind_of(step.spec).on_signal(step, message.signal_name, signal):
            _advance(definition, transition, now)
            return transition
    current = transition.state
    kept = [*current.mailbox.get(message.signal_name, []), signal]
    transition.state = replace(
        current, mailbox={**current.mailbox, message.signal_name: kept}, updated_at=now
    )
    return transition


def _consumed(state: WorkflowState, correlation_id: str) -> bool:
    return any(
        step.correlation_id == correlation_id and step.status is StepStatus.COMPLETED
        for step in state.steps.values()
    )


def on_timer(
    definition: WorkflowDefinition,
    state: WorkflowState,
    timer: TimerFired,
    now: datetime,
    item: ItemState | None = None,
) -> Outcome:
    """`item`: for a map item's timer, the stored state of that item."""
    if state.finished:
        return Ignored(f"{timer.kind.value} timer for a {state.status.value} workflow")
    if compensation.is_undo(definition, timer.step_name, timer.step_key):
        return _undo(
            definition, state, timer.step_name, now, lambda s: compensation.on_timer(s, timer)
        )
    if timer.kind is TimerKind.WORKFLOW_TIMEOUT:
        return _workflow_timer(definition, state, timer, now)
    stale = _stale_step_timer(definition, state, timer)
    if stale is not None:
        return stale
    transition = Transition(state=state)
    step = StepHandle(definition, transition, timer.step_name, now, item=item)
    kind = kind_of(step.spec)
    if timer.kind is TimerKind.RETRY and not timer.step_key:
        # The same for every kind that retries: the wait is over, the next attempt begins.
        kind.start(step)
    else:
        outcome = kind.on_timer(step, timer)
        if outcome is not None:
            return outcome
    _advance(definition, transition, now)
    return transition


def _undo(
    definition: WorkflowDefinition,
    state: WorkflowState,
    step_name: str,
    now: datetime,
    apply: Callable[[StepHandle], Ignored | None],
) -> Outcome:
    """A result or timer of an undo step (`compensation.py`)."""
    transition = Transition(state=state)
    undone = apply(StepHandle(definition, transition, step_name, now))
    if undone is not None:
        return undone
    _settle_compensation(definition, transition, now)
    return transition


def _workflow_timer(
    definition: WorkflowDefinition, state: WorkflowState, timer: TimerFired, now: datetime
) -> Outcome:
    if timer.attempt != state.run:
        return Ignored("workflow timeout of an earlier run")
    if state.status is WorkflowStatus.COMPENSATING:
        return Ignored("a compensating workflow has no deadline")
    return _time_out_workflow(definition, state, now)


def _stale_step_timer(
    definition: WorkflowDefinition, state: WorkflowState, timer: TimerFired
) -> Ignored | None:
    """A step timer acts only on the attempt it was set for (and a retry timer only on a step
    still waiting to retry): one that fires after the step moved on is ignored."""
    current = state.steps.get(timer.step_name)
    if current is None or timer.step_name not in definition.steps:
        return Ignored(f"{timer.kind.value} timer for unknown step {timer.step_name!r}")
    if state.status is WorkflowStatus.COMPENSATING:
        # Nothing forward runs while the run is undone.
        return Ignored(f"{timer.kind.value} timer while workflow {state.id} compensates")
    if timer.step_key:
        # An item's timer: its kind judges it by the item's attempt, not the step's.
        return None
    moved_on = timer.kind is TimerKind.RETRY and current.status is not StepStatus.RETRYING
    if current.attempts != timer.attempt or moved_on:
        return Ignored(f"{timer.kind.value} timer for {timer.step_name} #{timer.attempt} is stale")
    return None


def on_items(
    definition: WorkflowDefinition, state: WorkflowState, answer: ItemAnswer, now: datetime
) -> Outcome:
    """The processor's answer to a step's item request (claimed items, collected outputs),
    applied in the transaction that made the request."""
    if answer.step_name not in definition.steps:
        return Rejected(f"workflow {definition.name!r} has no step {answer.step_name!r}")
    transition = Transition(state=state)
    step = StepHandle(definition, transition, answer.step_name, now)
    outcome = kind_of(step.spec).on_items(step, answer)
    if outcome is not None:
        # Ignored, yet it may hand claimed items back: keep those writes.
        return transition if transition.item_ops else outcome
    _advance(definition, transition, now)
    return transition


def tenant_refusal(state: WorkflowState, message: object) -> Rejected | None:
    """A cancel, retry or signal that names a tenant acts only on that tenant's workflows (the
    gateway names its caller's; a broker user restricted to tenants must name one of them)."""
    if not isinstance(message, CancelWorkflow | RetryWorkflow | SignalWorkflow):
        return None
    if message.tenant is None or message.tenant == state.tenant:
        return None
    return Rejected(
        f"a {message.type} for tenant {message.tenant!r}: workflow {state.id} is not that tenant's"
    )


def on_cancel(
    definition: WorkflowDefinition, state: WorkflowState, message: CancelWorkflow, now: datetime
) -> Outcome:
    """Stop a running workflow: unfinished steps are cancelled (by their kind) and any result,
    reply or timer still on its way is ignored. Cancelling a finished workflow changes nothing."""
    if state.status is not WorkflowStatus.RUNNING:
        return Ignored(f"workflow {state.id} is already {state.status.value}")
    transition = Transition(state=state)
    _stop_unfinished_steps(definition, transition, now)
    error = {
        "type": "Cancelled",
        "message": message.reason or "cancelled on request",
        "retryable": False,
    }
    _end_badly(
        definition,
        transition,
        WorkflowStatus.CANCELLED,
        now,
        error=error,
        data={"reason": message.reason},
    )
    return transition


def on_retry(
    definition: WorkflowDefinition, state: WorkflowState, message: RetryWorkflow, now: datetime
) -> Outcome:
    """Run a failed or cancelled workflow again from the steps that did not complete; completed
    steps keep their outputs. Retrying a running or completed workflow changes nothing."""
    if state.status not in RETRYABLE:
        return Ignored(
            f"workflow {state.id} is {state.status.value}; only failed, cancelled or "
            "compensation_failed workflows are retried"
        )
    if state.status is WorkflowStatus.COMPENSATION_FAILED:
        transition = Transition(state=state)
        compensation.resume(definition, transition, now)
        transition.state = replace(transition.state, run=state.run + 1)
        emit(
            transition,
            EventType.WORKFLOW_RETRIED,
            now,
            data={"reason": message.reason, "run": state.run + 1, "compensation": True},
        )
        _settle_compensation(definition, transition, now)
        return transition
    steps = {
        name: replace(step, status=StepStatus.PENDING, error=None, next_attempt_at=None)
        if step.status in RERUN_STEPS
        else step
        for name, step in state.steps.items()
    }
    transition = Transition(
        state=replace(
            state,
            status=WorkflowStatus.RUNNING,
            steps=steps,
            error=None,
            finished_at=None,
            updated_at=now,
            run=state.run + 1,
        )
    )
    emit(
        transition,
        EventType.WORKFLOW_RETRIED,
        now,
        data={"reason": message.reason, "run": state.run + 1},
    )
    _set_workflow_timer(definition, transition, now)
    _advance(definition, transition, now)
    return transition


# --- internals ---


def _stop_unfinished_steps(
    definition: WorkflowDefinition, transition: Transition, now: datetime
) -> None:
    for name in definition.order:
        if transition.state.steps[name].status in UNFINISHED_STEPS:
            step = StepHandle(definition, transition, name, now)
            kind_of(step.spec).on_cancel(step)


def _time_out_workflow(
    definition: WorkflowDefinition, state: WorkflowState, now: datetime
) -> Transition:
    limit = definition.timeout.total_seconds() if definition.timeout else 0
    transition = Transition(state=state)
    _stop_unfinished_steps(definition, transition, now)
    error = {
        "type": "WorkflowTimeout",
        "message": f"the workflow did not finish within {limit:g}s",
        "retryable": False,
    }
    _end_badly(definition, transition, WorkflowStatus.FAILED, now, error=error)
    return transition


def _set_workflow_timer(
    definition: WorkflowDefinition, transition: Transition, now: datetime
) -> None:
    if definition.timeout is not None:
        state = transition.state
        transition.timers.append(
            Timer(state.id, TimerKind.WORKFLOW_TIMEOUT, state.run, now + definition.timeout)
        )


def _advance(definition: WorkflowDefinition, transition: Transition, now: datetime) -> None:
    """Start every step whose dependencies have ended well; finish the workflow when it can.
    Loops because a step may end as it starts (skipped, or a wait whose reply is already here)
    and so unblock more."""
    while transition.state.status is WorkflowStatus.RUNNING:
        steps = transition.state.steps
        failed = [name for name in definition.order if steps[name].status is StepStatus.FAILED]
        if failed:
            _finish(definition, transition, WorkflowStatus.FAILED, now, failed_step=failed[0])
            return
        if all(step.status in SETTLED_STEPS for step in steps.values()):
            _finish(definition, transition, WorkflowStatus.COMPLETED, now)
            return
        ready = [
            name
            for name in definition.order
            if steps[name].status is StepStatus.PENDING
            and all(steps[dep].status in SETTLED_STEPS for dep in definition.steps[name].after)
        ]
        if not ready:
            return
        for name in ready:
            step = StepHandle(definition, transition, name, now)
            if _should_run(step):
                kind_of(step.spec).start(step)


def _should_run(step: StepHandle) -> bool:
    """Decide a ready step's branch: skipped when every dependency was skipped or its condition
    is false; failed (not retried: the same outputs give the same answer) when the condition
    raises or answers something other than a bool."""
    after = step.spec.after
    steps = step.workflow.steps
    if after and all(steps[dep].status is StepStatus.SKIPPED for dep in after):
        step.skip("every step it comes after was skipped")
        return False
    condition = step.spec.when
    if condition is None:
        return True
    try:
        verdict = condition(Given(input=step.workflow.input, outputs=step.ancestor_outputs()))
    except Exception as exc:
        step.begin_attempt(StepStatus.RUNNING)
        step.fail(
            ErrorInfo(
                type="ConditionError",
                message=f"the condition of step {step.name!r} raised {type(exc).__name__}: {exc}",
                retryable=False,
            )
        )
        return False
    if not isinstance(verdict, bool):
        step.begin_attempt(StepStatus.RUNNING)
        step.fail(
            ErrorInfo(
                type="ConditionError",
                message=f"the condition of step {step.name!r} answered "
                f"{type(verdict).__name__}, not a bool",
                retryable=False,
            )
        )
        return False
    if not verdict:
        step.skip("its condition is false")
    return verdict


def _finish(
    definition: WorkflowDefinition,
    transition: Transition,
    status: WorkflowStatus,
    now: datetime,
    *,
    failed_step: str | None = None,
) -> None:
    state = transition.state
    if status is WorkflowStatus.COMPLETED:
        _end(transition, status, now, output=_workflow_output(definition, state))
    else:
        assert failed_step is not None
        error = {**(state.steps[failed_step].error or {}), "step": failed_step}
        # Parallel branches still in flight stop here; a retry of the workflow restarts them.
        _stop_unfinished_steps(definition, transition, now)
        _end_badly(definition, transition, status, now, error=error)


_END_EVENTS = {
    WorkflowStatus.COMPLETED: EventType.WORKFLOW_COMPLETED,
    WorkflowStatus.FAILED: EventType.WORKFLOW_FAILED,
    WorkflowStatus.CANCELLED: EventType.WORKFLOW_CANCELLED,
    WorkflowStatus.COMPENSATED: EventType.WORKFLOW_COMPENSATED,
    WorkflowStatus.COMPENSATION_FAILED: EventType.WORKFLOW_COMPENSATION_FAILED,
}


def _end_badly(
    definition: WorkflowDefinition,
    transition: Transition,
    status: WorkflowStatus,
    now: datetime,
    *,
    error: dict[str, Any],
    data: dict[str, Any] | None = None,
) -> None:
    """A run that fails or is cancelled: its completed steps that declare an undo are undone
    first (`compensation.py`); without any, it ends at once."""
    if compensation.begin(definition, transition, now, status, error):
        _settle_compensation(definition, transition, now)
    else:
        _end(transition, status, now, error=error, data=data)


def _settle_compensation(
    definition: WorkflowDefinition, transition: Transition, now: datetime
) -> None:
    ending = compensation.advance(definition, transition, now)
    if ending is not None:
        status, error = ending
        _end(transition, status, now, error=error)


def _end(
    transition: Transition,
    status: WorkflowStatus,
    now: datetime,
    *,
    output: Any = None,
    error: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """The one way a run ends: the final status, its event, and — for a child — the result its
    parent's step is waiting for."""
    transition.state = replace(
        transition.state,
        status=status,
        output=output,
        error=error,
        finished_at=now,
        updated_at=now,
    )
    if data is None:
        data = {"output": output} if status is WorkflowStatus.COMPLETED else {"error": error}
    emit(transition, _END_EVENTS[status], now, data=data)
    state = transition.state
    if state.parent is not None:
        transition.intents.append(NotifyParent(_result_for_parent(state, state.parent, now)))


def _result_for_parent(state: WorkflowState, parent: ParentRef, now: datetime) -> StepResult:
    failure = None
    if state.status is not WorkflowStatus.COMPLETED:
        error = state.error or {}
        failure = ErrorInfo(
            type=str(error.get("type") or "ChildFailed"),
            message=f"child workflow {state.id} ({state.name}) {state.status.value}: "
            f"{error.get('message', '')}",
            # A child that failed for a reason a fresh run may not hit (a step that used up its
            # attempts) may be retried by the parent's policy; a cancel or bad input may not.
            retryable=bool(error.get("retryable", True)),
        )
    return StepResult(
        message_id=ids.child_result_id(state.id, state.run),
        workflow_id=parent.workflow_id,
        created_at=now,
        step_name=parent.step_name,
        step_key=parent.step_key,
        attempt=parent.attempt,
        status=StepResultStatus.SUCCEEDED if failure is None else StepResultStatus.FAILED,
        output=state.output if failure is None else None,
        error=failure,
        started_at=state.created_at,
        finished_at=now,
    )


def _workflow_output(definition: WorkflowDefinition, state: WorkflowState) -> Any:
    if definition.output_from is not None:
        return state.steps[definition.output_from].output
    return {name: state.steps[name].output for name in definition.sinks()}
