"""`signal_wait`: held by the orchestrator until a named signal arrives whose payload its filter
takes, or its timeout passes; completes with the payload. Signals no wait took are kept in the
workflow's mailbox, oldest first, so one sent before its wait began is taken when it begins and
several of one name reach successive waits in order (a filter skips, and leaves, the ones it does
not take)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from relayflow.contracts import ErrorInfo, EventType
from relayflow.machine.handle import StepHandle
from relayflow.machine.kinds.base import StepKind
from relayflow.machine.kinds.wait import time_out
from relayflow.machine.transition import Ignored, TimerFired, TimerKind
from relayflow.model import StepStatus
from relayflow.workflow import SignalWaitSpec


class SignalWait(StepKind):
    name = "signal_wait"

    def start(self, step: StepHandle) -> None:
        spec = _spec(step)
        attempt = step.begin_attempt(StepStatus.WAITING)
        step.emit(EventType.STEP_STARTED, attempt=attempt, signal=spec.signal)
        kept = step.workflow.mailbox.get(spec.signal, [])
        for index, signal in enumerate(kept):
            taken = _takes(step, spec, signal)
            if taken is None:
                return
            if taken:
                rest = kept[:index] + kept[index + 1 :]
                mailbox = {**step.workflow.mailbox, spec.signal: rest}
                if not rest:
                    del mailbox[spec.signal]
                step.transition.state = replace(step.workflow, mailbox=mailbox)
                _complete(step, signal)
                return
        if spec.timeout is not None:
            step.set_timer(TimerKind.WAIT_TIMEOUT, attempt, step.now + spec.timeout)

    def on_signal(self, step: StepHandle, name: str, signal: dict[str, Any]) -> bool:
        spec = _spec(step)
        if step.state.status is not StepStatus.WAITING or name != spec.signal:
            return False
        taken = _takes(step, spec, signal)
        if taken:
            _complete(step, signal)
        # A filter that raised failed the step: the signal is spent on it.
        return taken is not False

    def on_timer(self, step: StepHandle, timer: TimerFired) -> Ignored | None:
        return time_out(step, timer, f"signal {_spec(step).signal!r}")


def _spec(step: StepHandle) -> SignalWaitSpec:
    spec = step.spec
    assert isinstance(spec, SignalWaitSpec)
    return spec


def _takes(step: StepHandle, spec: SignalWaitSpec, signal: dict[str, Any]) -> bool | None:
    """Whether the wait's filter takes `signal`; None when the filter raised, which fails the
    step (not the orchestrator), as a condition that raises does."""
    if spec.accept is None:
        return True
    try:
        verdict = spec.accept(signal.get("payload") or {})
    except Exception as exc:
        step.fail(
            ErrorInfo(
                type="SignalFilterError",
                message=f"the filter of wait {step.name!r} raised {type(exc).__name__}: {exc}",
                retryable=False,
            )
        )
        return None
    return bool(verdict)


def _complete(step: StepHandle, signal: dict[str, Any]) -> None:
    step.complete(signal.get("payload") or {})
