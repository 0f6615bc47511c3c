"""One workflow driven through the pure machine with its map items in memory
(`relayflow.machine.memory`), answering item requests as the processor does in its transaction:
what the unit tests of map steps use."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from relayflow import machine
from relayflow.contracts import StepCommand, StepResult, StepResultStatus
from relayflow.machine import (
    ItemOp,
    TimerFired,
    Transition,
    WorkflowState,
)
from relayflow.machine.memory import MemoryItems
from relayflow.model import ItemState
from relayflow.workflow import MapSpec, WorkflowDefinition


@dataclass
class ItemBook:
    definition: WorkflowDefinition
    now: datetime
    store: MemoryItems = field(default_factory=MemoryItems)
    # Every transition applied so far, answers included, in order.
    transitions: list[Transition] = field(default_factory=list)

    @property
    def items(self) -> dict[tuple[str, str], ItemState]:
        return {(step, key): item for (_, step, key), item in self.store.items.items()}

    def apply(self, outcome: machine.Outcome) -> WorkflowState | None:
        """Apply a transition's item ops and answer its requests, as the processor does in the
        same transaction; returns the workflow's state after the answers (None if the outcome
        is not a transition)."""
        if not isinstance(outcome, Transition):
            return None
        self.transitions.append(outcome)
        state = outcome.state
        ops: list[ItemOp] = list(outcome.item_ops)
        while ops:
            answers = self.store.answer(ops, self.now)
            ops = []
            for answer in answers:
                answered = machine.on_items(self.definition, state, answer, self.now)
                if isinstance(answered, Transition):
                    self.transitions.append(answered)
                    state = answered.state
                    ops.extend(answered.item_ops)
        return state

    def item(self, step: str, key: str) -> ItemState | None:
        return self.items.get((step, key))

    def result(self, command: StepCommand, state: WorkflowState) -> machine.Outcome:
        """Answer `command` with success (the item doubled, if a number)."""
        output = command.item * 2 if isinstance(command.item, int) else command.item
        return self.deliver(state, success(command, output))

    def deliver(self, state: WorkflowState, message: StepResult) -> machine.Outcome:
        about = self.item(message.step_name, message.step_key)
        return machine.on_step_result(self.definition, state, message, self.now, about)

    def fire(self, state: WorkflowState, timer: TimerFired) -> machine.Outcome:
        about = self.item(timer.step_name, timer.step_key) if timer.step_key else None
        return machine.on_timer(self.definition, state, timer, self.now, about)

    def commands(self, since: int = 0) -> list[StepCommand]:
        return [c for t in self.transitions[since:] for c in t.commands]

    def is_map(self, step: str) -> bool:
        return isinstance(self.definition.steps[step], MapSpec)


def success(command: StepCommand, output: Any) -> StepResult:
    return StepResult(
        message_id=f"res:{command.step_name}:{command.step_key}:{command.attempt}",
        workflow_id=command.workflow_id,
        step_name=command.step_name,
        step_key=command.step_key,
        attempt=command.attempt,
        status=StepResultStatus.SUCCEEDED,
        output=output,
    )
