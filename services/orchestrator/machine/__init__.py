"""The workflow state machine: `core` decides when steps start and workflows end, each step
kind (`kinds/`) what its step does, and `Transition` carries the result out as typed values."""

from relayflow.model import StepState, StepStatus, WorkflowState, WorkflowStatus, input_hash
from services.orchestrator.machine.core import (
    duplicate_start,
    on_cancel,
    on_reply,
    on_retry,
    on_step_result,
    on_timer,
    start,
)
from services.orchestrator.machine.kinds import KINDS, StepKind, check_supported
from services.orchestrator.machine.transition import (
    CancelChild,
    DispatchStep,
    Ignored,
    Intent,
    NotifyParent,
    Outcome,
    Rejected,
    StartChild,
    Timer,
    TimerFired,
    TimerKind,
    Transition,
)

__all__ = [
    "KINDS",
    "CancelChild",
    "DispatchStep",
    "Ignored",
    "Intent",
    "NotifyParent",
    "Outcome",
    "Rejected",
    "StartChild",
    "StepKind",
    "StepState",
    "StepStatus",
    "Timer",
    "TimerFired",
    "TimerKind",
    "Transition",
    "WorkflowState",
    "WorkflowStatus",
    "check_supported",
    "duplicate_start",
    "input_hash",
    "on_cancel",
    "on_reply",
    "on_retry",
    "on_step_result",
    "on_timer",
    "start",
]
