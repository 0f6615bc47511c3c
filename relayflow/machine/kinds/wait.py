"""`wait`: held by the orchestrator until the reply with its correlation id arrives (taken from
an ancestor's output), or its timeout passes. A reply that arrived first is kept in the
workflow's `signals` and consumed here when the wait begins."""

from __future__ import annotations

from dataclasses import replace

from relayflow.contracts import ErrorInfo, EventType, ExternalReply
from relayflow.machine.handle import StepHandle
from relayflow.machine.kinds.base import StepKind
from relayflow.machine.transition import Ignored, TimerFired, TimerKind
from relayflow.model import StepStatus
from relayflow.workflow import WaitSpec


class Wait(StepKind):
    name = "wait"

    def start(self, step: StepHandle) -> None:
        spec = step.spec
        assert isinstance(spec, WaitSpec)
        correlation_id = _correlation_id(step, spec)
        if correlation_id is None:
            step.begin_attempt(StepStatus.RUNNING)
            step.fail(
                ErrorInfo(
                    type="MissingCorrelationId",
                    message=f"{spec.correlation_from} is missing or not a string",
                    retryable=False,
                )
            )
            return
        attempt = step.begin_attempt(StepStatus.WAITING, correlation_id=correlation_id)
        step.emit(EventType.STEP_STARTED, attempt=attempt, correlationId=correlation_id)
        signals = step.workflow.signals
        if correlation_id in signals:
            remaining = {key: value for key, value in signals.items() if key != correlation_id}
            step.transition.state = replace(step.workflow, signals=remaining)
            step.complete(signals[correlation_id])
        elif spec.timeout is not None:
            step.set_timer(TimerKind.WAIT_TIMEOUT, attempt, step.now + spec.timeout)

    def on_reply(self, step: StepHandle, message: ExternalReply) -> bool:
        current = step.state
        if (
            current.status is StepStatus.WAITING
            and current.correlation_id == message.correlation_id
        ):
            step.complete(message.payload)
            return True
        return False

    def on_timer(self, step: StepHandle, timer: TimerFired) -> Ignored | None:
        return time_out(step, timer, f"reply with correlation id {step.state.correlation_id!r}")


def time_out(step: StepHandle, timer: TimerFired, waited_for: str) -> Ignored | None:
    """A waiting step's wait-timeout timer: it fails for good with WaitTimeout (a timer that
    comes after the step moved on is stale)."""
    if timer.kind is not TimerKind.WAIT_TIMEOUT or step.state.status is not StepStatus.WAITING:
        return Ignored(f"{timer.kind.value} timer for {step.name} #{timer.attempt} is stale")
    limit = step.spec.timeout.total_seconds() if step.spec.timeout else 0
    step.fail(
        ErrorInfo(type="WaitTimeout", message=f"no {waited_for} within {limit:g}s", retryable=False)
    )
    return None


def _correlation_id(step: StepHandle, spec: WaitSpec) -> str | None:
    _, value = step.value_at(spec.correlation_from)
    return value if isinstance(value, str) and value else None
