"""What applying one input to a workflow produces: a `Transition`, or why nothing happens.

A transition holds the new state, the events to record and broadcast, the timers to set and the
outgoing intents — typed values saying what should happen outside the workflow. The processor
routes each intent by its type to a message on its queue (`relayflow/orchestration/processor.py`,
`_outgoing`): the machine never names an exchange or a routing key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from relayflow.contracts import (
    CancelWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    WorkflowEvent,
)
from relayflow.model import ItemState, WorkflowState


class TimerKind(StrEnum):
    WAIT_TIMEOUT = "wait_timeout"
    STEP_TIMEOUT = "step_timeout"
    RETRY = "retry"
    WORKFLOW_TIMEOUT = "workflow_timeout"
    # A sleep step's wake-up.
    SLEEP = "sleep"


@dataclass(frozen=True, slots=True)
class Timer:
    workflow_id: str
    kind: TimerKind
    # The step's attempt it belongs to; for a workflow timeout, the workflow's run.
    attempt: int
    fire_at: datetime
    step_name: str = ""
    # A map item's timer names the item; "" for a timer of the step as a whole.
    step_key: str = ""


@dataclass(frozen=True, slots=True)
class TimerFired:
    """A durable timer came due. It only acts if the step (or the workflow's run, or the map
    item) is still at the attempt it was set for; otherwise it is stale and ignored."""

    workflow_id: str
    kind: TimerKind
    attempt: int
    step_name: str = ""
    step_key: str = ""


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


@dataclass(frozen=True, slots=True)
class RunLocal:
    """Run one attempt of a local task's body in the orchestrator, inside the transaction that
    records this transition; its outcome comes back to the machine as a StepResult in that same
    transaction. `limit`: seconds the attempt may take."""

    command: StepCommand
    limit: float


# Every intent the machine may produce; the processor's router handles each type.
Intent = DispatchStep | StartChild | CancelChild | NotifyParent | RunLocal


# --- map items: rows of `step_items`, written by the processor in the batch's transaction ---


@dataclass(frozen=True, slots=True)
class CreateItems:
    """Store a map step's items, all pending, when it first starts."""

    items: tuple[ItemState, ...]


@dataclass(frozen=True, slots=True)
class SaveItem:
    """Store one item's new state (an item that has ended also drops its timers)."""

    item: ItemState


@dataclass(frozen=True, slots=True)
class ResetItems:
    """A retried workflow runs its map again: every item not completed is pending again."""

    workflow_id: str
    step_name: str


@dataclass(frozen=True, slots=True)
class CancelItems:
    """The map stops: every item not yet ended is cancelled."""

    workflow_id: str
    step_name: str


@dataclass(frozen=True, slots=True)
class ClaimItems:
    """Ask for the next `count` pending items (by index), moved to their next attempt; the
    answer comes back to the machine as `ItemsClaimed` in the same transaction."""

    workflow_id: str
    step_name: str
    count: int


@dataclass(frozen=True, slots=True)
class CollectItems:
    """Ask for every item's output in item order (the map has ended); answered by
    `ItemsCollected` in the same transaction."""

    workflow_id: str
    step_name: str


ItemOp = CreateItems | SaveItem | ResetItems | CancelItems | ClaimItems | CollectItems


@dataclass(frozen=True, slots=True)
class ItemsClaimed:
    """The answer to `ClaimItems`: up to `requested` items, each now running its next attempt
    (fewer when fewer were pending)."""

    workflow_id: str
    step_name: str
    requested: int
    items: tuple[ItemState, ...]


@dataclass(frozen=True, slots=True)
class ItemsCollected:
    """The answer to `CollectItems`: each item's output in item order (None for an item that
    did not complete)."""

    workflow_id: str
    step_name: str
    outputs: tuple[Any, ...]


ItemAnswer = ItemsClaimed | ItemsCollected


@dataclass(slots=True)
class Transition:
    state: WorkflowState
    events: list[WorkflowEvent] = field(default_factory=list)
    intents: list[Intent] = field(default_factory=list)
    timers: list[Timer] = field(default_factory=list)
    item_ops: list[ItemOp] = field(default_factory=list)

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
