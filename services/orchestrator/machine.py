"""The workflow state machine, as plain functions over plain data.

Given a workflow's state and one input (a start, a step result, an external reply, a fired timer)
each function returns a `Transition`: the new state, the events to record and publish, the step
commands to dispatch and the timers to set. Nothing here does I/O; the orchestrator's processor
wraps it in a transaction, and the tests drive it directly.

A step is dispatched as soon as every step it comes after has completed, so independent steps
run in parallel. A workflow completes when all its steps have; it fails as soon as one fails.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from relayflow.contracts import (
    CancelWorkflow,
    ErrorInfo,
    EventType,
    ExternalReply,
    RetryWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
    WorkflowEvent,
)
from relayflow.workflow import StepSpec, WorkflowDefinition

DEFAULT_STEP_KEY = "0"


class WorkflowStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    # An attempt failed; the next starts when its retry timer fires.
    RETRYING = "retrying"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Steps that still have work ahead of them: a cancel or a workflow timeout stops them.
_UNFINISHED = frozenset(
    {StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING, StepStatus.RETRYING}
)


class TimerKind(StrEnum):
    WAIT_TIMEOUT = "wait_timeout"
    STEP_TIMEOUT = "step_timeout"
    RETRY = "retry"
    WORKFLOW_TIMEOUT = "workflow_timeout"


@dataclass(frozen=True, slots=True)
class StepState:
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    correlation_id: str | None = None
    next_attempt_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status.value,
            "attempts": self.attempts,
            "output": self.output,
            "error": self.error,
            "startedAt": self.started_at.isoformat() if self.started_at else None,
            "finishedAt": self.finished_at.isoformat() if self.finished_at else None,
            "correlationId": self.correlation_id,
            "nextAttemptAt": self.next_attempt_at.isoformat() if self.next_attempt_at else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepState:
        return cls(
            status=StepStatus(data["status"]),
            attempts=int(data.get("attempts", 0)),
            output=data.get("output"),
            error=data.get("error"),
            started_at=_parse_time(data.get("startedAt")),
            finished_at=_parse_time(data.get("finishedAt")),
            correlation_id=data.get("correlationId"),
            next_attempt_at=_parse_time(data.get("nextAttemptAt")),
        )


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class WorkflowState:
    id: str
    name: str
    status: WorkflowStatus
    input: dict[str, Any]
    input_hash: str
    steps: dict[str, StepState]
    created_at: datetime
    updated_at: datetime
    idempotency_key: str | None = None
    # Replies that arrived before their step started waiting, by correlation id.
    signals: dict[str, Any] = field(default_factory=dict)
    output: Any = None
    error: dict[str, Any] | None = None
    last_seq: int = 0
    finished_at: datetime | None = None
    # 1, then +1 each time the workflow is retried: timers of an earlier run are stale.
    run: int = 1

    @property
    def finished(self) -> bool:
        return self.status is not WorkflowStatus.RUNNING


@dataclass(frozen=True, slots=True)
class Timer:
    workflow_id: str
    kind: TimerKind
    # The step's attempt it belongs to; for a workflow timeout, the workflow's run.
    attempt: int
    fire_at: datetime
    step_name: str = ""


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A durable timer came due. It only acts if the step (or the workflow's run) is still at
    the attempt it was set for; otherwise it is stale and ignored."""

    workflow_id: str
    kind: TimerKind
    attempt: int
    step_name: str = ""


@dataclass(slots=True)
class Transition:
    state: WorkflowState
    events: list[WorkflowEvent] = field(default_factory=list)
    commands: list[StepCommand] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do: a duplicate, a stale result, input for a finished workflow. Acknowledged."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The input can never be applied (unknown workflow or step, conflicting duplicate start).
    Dead-lettered with the reason."""

    reason: str


Outcome = Transition | Ignored | Rejected


def input_hash(value: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


def start(definition: WorkflowDefinition, message: StartWorkflow, now: datetime) -> Transition:
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
    )
    transition = Transition(state=state)
    _emit(transition, EventType.WORKFLOW_STARTED, now, data={"input": message.input})
    _set_workflow_timer(definition, transition, now)
    _advance(definition, transition, now)
    return transition


def duplicate_start(state: WorkflowState, message: StartWorkflow) -> Ignored | Rejected:
    """A start for a workflow that exists: the same request again is a no-op; another request
    under the same id is a conflict that must not pass silently."""
    if state.name != message.workflow_name or state.input_hash != input_hash(message.input):
        return Rejected(
            f"workflow {state.id} was already started as {state.name!r} with a different "
            "input; an idempotency key or workflow id cannot be reused for another request"
        )
    return Ignored(f"workflow {state.id} already started")


def on_step_result(
    definition: WorkflowDefinition, state: WorkflowState, message: StepResult, now: datetime
) -> Outcome:
    spec = definition.steps.get(message.step_name)
    if spec is None:
        return Rejected(f"workflow {definition.name!r} has no step {message.step_name!r}")
    if spec.kind != "task":
        return Rejected(f"step {message.step_name!r} is a {spec.kind}, it takes no step result")
    step = state.steps[message.step_name]
    if state.finished:
        return Ignored(f"workflow {state.id} is already {state.status.value}")
    if step.status is not StepStatus.RUNNING or step.attempts != message.attempt:
        # A late result (after a timeout, a retry or a cancel) changes nothing.
        return Ignored(
            f"stale result for {message.step_name} attempt {message.attempt} "
            f"(step is {step.status.value} at attempt {step.attempts})"
        )
    transition = Transition(state=state)
    if message.status is StepResultStatus.SUCCEEDED:
        _complete_step(transition, message.step_name, message.output, now)
    else:
        error = message.error or ErrorInfo(type="UnknownError", message="no error given")
        _attempt_failed(definition, transition, message.step_name, error, now)
    _advance(definition, transition, now)
    return transition


def on_reply(
    definition: WorkflowDefinition, state: WorkflowState, message: ExternalReply, now: datetime
) -> Outcome:
    if state.status is WorkflowStatus.COMPLETED:
        return Ignored(f"reply {message.correlation_id} after workflow {state.id} completed")
    if not state.finished:
        for name, step in state.steps.items():
            if step.status is StepStatus.WAITING and step.correlation_id == message.correlation_id:
                transition = Transition(state=state)
                _complete_step(transition, name, message.payload, now)
                _advance(definition, transition, now)
                return transition
    if message.correlation_id in state.signals or _consumed(state, message.correlation_id):
        return Ignored(f"reply {message.correlation_id} already received")
    # The reply overtook the step that will wait for it, or came after the wait gave up: keep
    # it for that step (a retried workflow's wait finds it), without resuming anything now.
    signals = {**state.signals, message.correlation_id: message.payload}
    return Transition(state=replace(state, signals=signals, updated_at=now))


def _consumed(state: WorkflowState, correlation_id: str) -> bool:
    return any(
        step.correlation_id == correlation_id and step.status is StepStatus.COMPLETED
        for step in state.steps.values()
    )


def on_timer(
    definition: WorkflowDefinition, state: WorkflowState, timer: TimerFired, now: datetime
) -> Outcome:
    if state.finished:
        return Ignored(f"{timer.kind.value} timer for a {state.status.value} workflow")
    if timer.kind is TimerKind.WORKFLOW_TIMEOUT:
        if timer.attempt != state.run:
            return Ignored("workflow timeout of an earlier run")
        return _time_out_workflow(definition, state, now)
    step = state.steps.get(timer.step_name)
    expected = {
        TimerKind.WAIT_TIMEOUT: StepStatus.WAITING,
        TimerKind.STEP_TIMEOUT: StepStatus.RUNNING,
        TimerKind.RETRY: StepStatus.RETRYING,
    }[timer.kind]
    if step is None or step.status is not expected or step.attempts != timer.attempt:
        return Ignored(f"{timer.kind.value} timer for {timer.step_name} #{timer.attempt} is stale")
    spec = definition.steps[timer.step_name]
    transition = Transition(state=state)
    limit = spec.timeout.total_seconds() if spec.timeout else 0
    if timer.kind is TimerKind.RETRY:
        _start_step(spec, transition, now)
    elif timer.kind is TimerKind.STEP_TIMEOUT:
        error = ErrorInfo(
            type="StepTimeout",
            message=f"attempt {step.attempts} did not report back within {limit:g}s",
            retryable=True,
        )
        _attempt_failed(definition, transition, timer.step_name, error, now)
    else:
        error = ErrorInfo(
            type="WaitTimeout",
            message=f"no reply with correlation id {step.correlation_id!r} within {limit:g}s",
            retryable=False,
        )
        _fail_step(transition, timer.step_name, error, now)
    _advance(definition, transition, now)
    return transition


def on_cancel(state: WorkflowState, message: CancelWorkflow, now: datetime) -> Outcome:
    """Stop a running workflow: unfinished steps become cancelled and any result, reply or timer
    still on its way is ignored. Cancelling a finished workflow changes nothing."""
    if state.finished:
        return Ignored(f"workflow {state.id} is already {state.status.value}")
    transition = Transition(state=state)
    _stop_unfinished_steps(transition, now)
    error = {"type": "Cancelled", "message": message.reason or "cancelled on request"}
    transition.state = replace(
        transition.state,
        status=WorkflowStatus.CANCELLED,
        error=error,
        finished_at=now,
        updated_at=now,
    )
    _emit(transition, EventType.WORKFLOW_CANCELLED, now, data={"reason": message.reason})
    return transition


def on_retry(
    definition: WorkflowDefinition, state: WorkflowState, message: RetryWorkflow, now: datetime
) -> Outcome:
    """Run a failed or cancelled workflow again from the steps that did not complete; completed
    steps keep their outputs. Retrying a running or completed workflow changes nothing."""
    if state.status not in (WorkflowStatus.FAILED, WorkflowStatus.CANCELLED):
        return Ignored(
            f"workflow {state.id} is {state.status.value}; only failed or cancelled "
            "workflows are retried"
        )
    steps = {
        name: replace(step, status=StepStatus.PENDING, error=None, next_attempt_at=None)
        if step.status in (StepStatus.FAILED, StepStatus.CANCELLED)
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
    _emit(
        transition,
        EventType.WORKFLOW_RETRIED,
        now,
        data={"reason": message.reason, "run": state.run + 1},
    )
    _set_workflow_timer(definition, transition, now)
    _advance(definition, transition, now)
    return transition


# --- internals: each mutates the transition's state by replacement and appends its effects ---


def _set_step(transition: Transition, name: str, step: StepState, now: datetime) -> None:
    state = transition.state
    transition.state = replace(state, steps={**state.steps, name: step}, updated_at=now)


def _emit(
    transition: Transition,
    event: EventType,
    now: datetime,
    *,
    step_name: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    state = transition.state
    seq = state.last_seq + 1
    transition.state = replace(state, last_seq=seq)
    transition.events.append(
        WorkflowEvent(
            message_id=f"evt:{state.id}:{seq}",
            workflow_id=state.id,
            idempotency_key=state.idempotency_key,
            created_at=now,
            seq=seq,
            event=event,
            workflow_name=state.name,
            step_name=step_name,
            data=data or {},
        )
    )


def _complete_step(transition: Transition, name: str, output: Any, now: datetime) -> None:
    step = transition.state.steps[name]
    _set_step(
        transition,
        name,
        replace(step, status=StepStatus.COMPLETED, output=output, error=None, finished_at=now),
        now,
    )
    _emit(
        transition,
        EventType.STEP_COMPLETED,
        now,
        step_name=name,
        data={"attempt": step.attempts, "output": output},
    )


def _fail_step(transition: Transition, name: str, error: ErrorInfo, now: datetime) -> None:
    step = transition.state.steps[name]
    error_json = error.model_dump(mode="json")
    _set_step(
        transition,
        name,
        replace(step, status=StepStatus.FAILED, error=error_json, finished_at=now),
        now,
    )
    _emit(
        transition,
        EventType.STEP_FAILED,
        now,
        step_name=name,
        data={"attempt": step.attempts, "error": error_json},
    )


def _attempt_failed(
    definition: WorkflowDefinition,
    transition: Transition,
    name: str,
    error: ErrorInfo,
    now: datetime,
) -> None:
    """An attempt failed: schedule the next one if the step's retry policy allows, else fail
    the step (and so the workflow)."""
    step = transition.state.steps[name]
    policy = definition.retry_policy(name)
    if not policy.retries(error.type, error.retryable, step.attempts):
        _fail_step(transition, name, error, now)
        return
    delay = policy.delay(step.attempts, _spread(transition.state.id, name, step.attempts))
    next_at = now + delay
    error_json = error.model_dump(mode="json")
    _set_step(
        transition,
        name,
        replace(step, status=StepStatus.RETRYING, error=error_json, next_attempt_at=next_at),
        now,
    )
    _emit(
        transition,
        EventType.STEP_RETRYING,
        now,
        step_name=name,
        data={
            "attempt": step.attempts,
            "nextAttempt": step.attempts + 1,
            "nextAttemptAt": next_at.isoformat(),
            "error": error_json,
        },
    )
    transition.timers.append(
        Timer(transition.state.id, TimerKind.RETRY, step.attempts, next_at, step_name=name)
    )


def _spread(workflow_id: str, step: str, attempt: int) -> float:
    """A point in [-1, 1] for the retry jitter: looks random across workflows, yet the same
    input always gives the same schedule (the machine stays a pure function)."""
    digest = hashlib.blake2b(f"{workflow_id}/{step}/{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**63 - 1


def _stop_unfinished_steps(transition: Transition, now: datetime) -> None:
    state = transition.state
    steps = {
        name: replace(step, status=StepStatus.CANCELLED, finished_at=now, next_attempt_at=None)
        if step.status in _UNFINISHED
        else step
        for name, step in state.steps.items()
    }
    transition.state = replace(state, steps=steps, updated_at=now)


def _time_out_workflow(
    definition: WorkflowDefinition, state: WorkflowState, now: datetime
) -> Transition:
    limit = definition.timeout.total_seconds() if definition.timeout else 0
    transition = Transition(state=state)
    _stop_unfinished_steps(transition, now)
    error = {
        "type": "WorkflowTimeout",
        "message": f"the workflow did not finish within {limit:g}s",
        "retryable": False,
    }
    transition.state = replace(
        transition.state,
        status=WorkflowStatus.FAILED,
        error=error,
        finished_at=now,
        updated_at=now,
    )
    _emit(transition, EventType.WORKFLOW_FAILED, now, data={"error": error})
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
    """Dispatch every step whose dependencies are complete; finish the workflow when it can.
    Loops because a wait whose reply is already here completes at once and may unblock more."""
    while not transition.state.finished:
        state = transition.state
        failed = [
            name for name in definition.order if state.steps[name].status is StepStatus.FAILED
        ]
        if failed:
            _finish(definition, transition, WorkflowStatus.FAILED, now, failed_step=failed[0])
            return
        if all(step.status is StepStatus.COMPLETED for step in state.steps.values()):
            _finish(definition, transition, WorkflowStatus.COMPLETED, now)
            return
        ready = [
            name
            for name in definition.order
            if state.steps[name].status is StepStatus.PENDING
            and all(
                state.steps[dep].status is StepStatus.COMPLETED
                for dep in definition.steps[name].after
            )
        ]
        if not ready:
            return
        for name in ready:
            _start_step(definition.steps[name], transition, now)


def _start_step(spec: StepSpec, transition: Transition, now: datetime) -> None:
    """Start the step's next attempt: dispatch a task, or begin a wait."""
    state = transition.state
    step = state.steps[spec.name]
    attempt = step.attempts + 1
    dependencies = {dep: state.steps[dep].output for dep in spec.after}
    if spec.kind == "task":
        _set_step(
            transition,
            spec.name,
            replace(
                step,
                status=StepStatus.RUNNING,
                attempts=attempt,
                started_at=now,
                finished_at=None,
                next_attempt_at=None,
            ),
            now,
        )
        _emit(
            transition, EventType.STEP_STARTED, now, step_name=spec.name, data={"attempt": attempt}
        )
        transition.commands.append(
            StepCommand(
                message_id=f"cmd:{state.id}:{spec.name}:{DEFAULT_STEP_KEY}:{attempt}",
                workflow_id=state.id,
                idempotency_key=state.idempotency_key,
                created_at=now,
                workflow_name=state.name,
                step_name=spec.name,
                step_key=DEFAULT_STEP_KEY,
                attempt=attempt,
                input=state.input,
                dependencies=dependencies,
            )
        )
        if spec.timeout is not None:
            transition.timers.append(
                Timer(state.id, TimerKind.STEP_TIMEOUT, attempt, now + spec.timeout, spec.name)
            )
        return
    correlation_id = _correlation_id(spec, dependencies)
    if correlation_id is None:
        _set_step(transition, spec.name, replace(step, attempts=attempt, started_at=now), now)
        _fail_step(
            transition,
            spec.name,
            ErrorInfo(
                type="MissingCorrelationId",
                message=f"{spec.correlation_from} is missing or not a string",
                retryable=False,
            ),
            now,
        )
        return
    _set_step(
        transition,
        spec.name,
        replace(
            step,
            status=StepStatus.WAITING,
            attempts=attempt,
            started_at=now,
            finished_at=None,
            correlation_id=correlation_id,
        ),
        now,
    )
    _emit(
        transition,
        EventType.STEP_STARTED,
        now,
        step_name=spec.name,
        data={"attempt": attempt, "correlationId": correlation_id},
    )
    signals = transition.state.signals
    if correlation_id in signals:
        payload = signals[correlation_id]
        remaining = {key: value for key, value in signals.items() if key != correlation_id}
        transition.state = replace(transition.state, signals=remaining)
        _complete_step(transition, spec.name, payload, now)
    elif spec.timeout is not None:
        transition.timers.append(
            Timer(state.id, TimerKind.WAIT_TIMEOUT, attempt, now + spec.timeout, spec.name)
        )


def _correlation_id(spec: StepSpec, dependencies: dict[str, Any]) -> str | None:
    source, _, path = (spec.correlation_from or "").partition(".")
    value: Any = dependencies.get(source)
    for part in path.split(".") if path else []:
        value = value.get(part) if isinstance(value, dict) else None
    return value if isinstance(value, str) and value else None


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
        output = _workflow_output(definition, state)
        transition.state = replace(
            state, status=status, output=output, finished_at=now, updated_at=now
        )
        _emit(transition, EventType.WORKFLOW_COMPLETED, now, data={"output": output})
    else:
        assert failed_step is not None
        error = {**(state.steps[failed_step].error or {}), "step": failed_step}
        # Parallel branches still in flight stop here; a retry of the workflow restarts them.
        _stop_unfinished_steps(transition, now)
        transition.state = replace(
            transition.state, status=status, error=error, finished_at=now, updated_at=now
        )
        _emit(transition, EventType.WORKFLOW_FAILED, now, data={"error": error})


def _workflow_output(definition: WorkflowDefinition, state: WorkflowState) -> Any:
    if definition.output_from is not None:
        return state.steps[definition.output_from].output
    return {name: state.steps[name].output for name in definition.sinks()}
