"""The machine's map items held in memory, answering its item requests the way the processor
does against `step_items` (claim the next pending items in order, collect the outputs): what the
unit tests of map steps drive the pure machine with. The processor's SQL is checked against the
same behaviour by tests/integration/test_map_steps.py."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from relayflow import machine
from relayflow.contracts import StepCommand, StepResult, StepResultStatus
from relayflow.machine import (
    CancelItems,
    ClaimItems,
    CollectItems,
    CreateItems,
    ItemAnswer,
    ItemOp,
    ItemsClaimed,
    ItemsCollected,
    ResetItems,
    SaveItem,
    TimerFired,
    Transition,
    WorkflowState,
)
from relayflow.model import ItemState, StepStatus
from relayflow.workflow import MapSpec, WorkflowDefinition

ENDED = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED})


@dataclass
class ItemBook:
    definition: WorkflowDefinition
    now: datetime
    items: dict[tuple[str, str], ItemState] = field(default_factory=dict)
    # Every transition applied so far, answers included, in order.
    transitions: list[Transition] = field(default_factory=list)

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
            answers = self._write_and_answer(ops)
            ops = []
            for answer in answers:
                answered = machine.on_items(self.definition, state, answer, self.now)
                if isinstance(answered, Transition):
                    self.transitions.append(answered)
                    state = answered.state
                    ops.extend(answered.item_ops)
        return state

    def _write_and_answer(self, ops: list[ItemOp]) -> list[ItemAnswer]:
        claims: dict[str, int] = {}
        collects: list[str] = []
        for op in ops:
            match op:
                case ClaimItems(step_name=step, count=count):
                    claims[step] = claims.get(step, 0) + count
                case CollectItems(step_name=step):
                    collects.append(step)
                case _:
                    self._write(op)
        return self._claim(_workflow(ops), claims) + self._collect(_workflow(ops), collects)

    def _write(self, op: ItemOp) -> None:
        match op:
            case CreateItems(items=items):
                for item in items:
                    self.items.setdefault((item.step_name, item.key), item)
            case SaveItem(item=item):
                self.items[(item.step_name, item.key)] = item
            case ResetItems(step_name=step):
                for key, item in self._of(step):
                    if item.status is not StepStatus.COMPLETED:
                        self.items[key] = replace(
                            item, status=StepStatus.PENDING, error=None, finished_at=None
                        )
            case CancelItems(step_name=step):
                for key, item in self._of(step):
                    if item.status not in ENDED:
                        self.items[key] = replace(item, status=StepStatus.CANCELLED)

    def _claim(self, workflow_id: str, claims: dict[str, int]) -> list[ItemAnswer]:
        answers: list[ItemAnswer] = []
        for step, count in claims.items():
            pending = [
                (key, item) for key, item in self._of(step) if item.status is StepStatus.PENDING
            ][:count]
            claimed = []
            for key, item in pending:
                running = replace(
                    item, status=StepStatus.RUNNING, attempts=item.attempts + 1, started_at=self.now
                )
                self.items[key] = running
                claimed.append(running)
            answers.append(ItemsClaimed(workflow_id, step, count, tuple(claimed)))
        return answers

    def _collect(self, workflow_id: str, collects: list[str]) -> list[ItemAnswer]:
        answers: list[ItemAnswer] = []
        for step in collects:
            outputs = tuple(
                item.output if item.status is StepStatus.COMPLETED else None
                for _, item in self._of(step)
            )
            answers.append(ItemsCollected(workflow_id, step, outputs))
        return answers

    def _of(self, step: str) -> list[tuple[tuple[str, str], ItemState]]:
        return sorted(
            ((key, item) for key, item in self.items.items() if key[0] == step),
            key=lambda pair: pair[1].index,
        )

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


def _workflow(ops: list[ItemOp]) -> str:
    for op in ops:
        match op:
            case CreateItems(items=items) if items:
                return items[0].workflow_id
            case SaveItem(item=item):
                return item.workflow_id
            case (
                ResetItems(workflow_id=wid)
                | CancelItems(workflow_id=wid)
                | ClaimItems(workflow_id=wid)
                | CollectItems(workflow_id=wid)
            ):
                return wid
    raise AssertionError("item ops name no workflow")


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
