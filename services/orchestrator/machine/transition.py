"""What applying one input to a workflow produces: a `Transition`, or why nothing happens.

A transition holds the new state, the events to record and broadcast, the timers to set and the
outgoing intents — typed values saying what should happen outside the workflow. The processor
routes each intent by its type to a message on its queue (`services/orchestrator/processor.py`,
`_outgoing`): the machine never names an exchange or a routing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from relayflow.contracts import (
    CancelWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    WorkflowEvent,
)
from relayflow.model import WorkflowState


class TimerKind(StrEnum):
    WAIT_TIMEOUT = "wait_timeout"
    STEP_TIMEOUT = "step_timeout"
    RETRY = "retry"
    WORKFLOW_TIMEOUT = "workflow_timeout"


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


@dataclass(frozen=True, slots=True)
class DispatchStep:
    """Run one attempt of a step invocation in the step service of its body."""

    command: StepCommand


@dataclass(frozen=True, slots=True)
class StartChild:
    """Start a child workflow (its StartWorkflow names the parent's step)."""

    start: StartWorkflow


@dataclass(frozen=True, slots=True)
class CancelChild:
    """Stop a child workflow whose parent step no longer waits for it."""

    cancel: CancelWorkflow


@dataclass(frozen=True, slots=True)
class NotifyParent:
    """Tell the parent's child step how this workflow's run ended."""

    result: StepResult


# Every intent the machine may produce; the processor's router handles each type.
Intent = DispatchStep | StartChild | CancelChild | NotifyParent


@dataclass(slots=True)
class Transition:
    state: WorkflowState
    events: list[WorkflowEvent] = field(default_factory=list)
    intents: list[Intent] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)

    @property
    def commands(self) -> list[StepCommand]:
        """The step commands among the intents, in order."""
        return [intent.command for intent in self.intents if isinstance(intent, DispatchStep)]


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
