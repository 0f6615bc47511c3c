"""`sleep`: a durable pause. The wake-up is a timer row in PostgreSQL, so a restart of anything
loses nothing, and the timer fires once (claimed with SKIP LOCKED, judged by the attempt it was
set for). A wake-up time taken from the input or an ancestor's output that is already past
completes the step at once."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from relayflow.contracts import ErrorInfo, EventType
from relayflow.machine.handle import StepHandle
from relayflow.machine.kinds.base import StepKind
from relayflow.machine.transition import Ignored, TimerFired, TimerKind
from relayflow.model import StepStatus
from relayflow.workflow import SleepSpec


class Sleep(StepKind):
    name = "sleep"

    def start(self, step: StepHandle) -> None:
        spec = step.spec
        assert isinstance(spec, SleepSpec)
        wake_at = step.now + spec.duration if spec.duration is not None else _until(step, spec)
        if isinstance(wake_at, ErrorInfo):
            step.begin_attempt(StepStatus.RUNNING)
            step.fail(wake_at)
            return
        attempt = step.begin_attempt(StepStatus.WAITING, wake_at=wake_at)
        step.emit(EventType.STEP_SLEEPING, attempt=attempt, wakeAt=wake_at.isoformat())
        if wake_at <= step.now:
            _wake(step)
            return
        step.set_timer(TimerKind.SLEEP, attempt, wake_at)

    def on_timer(self, step: StepHandle, timer: TimerFired) -> Ignored | None:
        if timer.kind is not TimerKind.SLEEP or step.state.status is not StepStatus.WAITING:
            return Ignored(f"{timer.kind.value} timer for {step.name} #{timer.attempt} is stale")
        _wake(step)
        return None

    def on_cancel(self, step: StepHandle) -> None:
        step.set(replace(step.state, wake_at=None))
        step.cancel()


def _wake(step: StepHandle) -> None:
    wake_at = step.state.wake_at
    step.complete(
        {"wokeAt": step.now.isoformat(), "wakeAt": wake_at.isoformat() if wake_at else None}
    )


def _until(step: StepHandle, spec: SleepSpec) -> datetime | ErrorInfo:
    found, value = step.value_at(spec.until)
    if not found:
        return _error(step, f"{spec.until} is missing")
    if not isinstance(value, str):
        return _error(step, f"{spec.until} is a {type(value).__name__}, not an ISO 8601 time")
    try:
        wake_at = datetime.fromisoformat(value)
    except ValueError:
        return _error(step, f"{spec.until} is {value[:60]!r}, not an ISO 8601 time")
    if wake_at.tzinfo is None:
        return _error(step, f"{spec.until} is {value[:60]!r}, a time without a zone")
    return wake_at


def _error(step: StepHandle, message: str) -> ErrorInfo:
    return ErrorInfo(type="SleepError", message=f"sleep {step.name!r}: {message}", retryable=False)
