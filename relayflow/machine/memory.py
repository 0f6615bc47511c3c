"""Map items held in memory, answering the machine's item requests the way the orchestrator's
processor does against `step_items`: the same writes in the same order, the next pending items
claimed in item order and moved to their next attempt, every output collected in item order.
What `relayflow.testing` and the machine's unit tests drive the pure machine with; the SQL is
checked against the same behaviour by tests/integration/test_map_steps.py."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from relayflow.machine.transition import (
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
)
from relayflow.model import ItemState, StepStatus

_ENDED = frozenset({StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.CANCELLED})

# (workflow_id, step_name, key)
ItemKey = tuple[str, str, str]


@dataclass
class MemoryItems:
    items: dict[ItemKey, ItemState] = field(default_factory=dict)

    def get(self, workflow_id: str, step: str, key: str) -> ItemState | None:
        return self.items.get((workflow_id, step, key))

    def of(self, workflow_id: str, step: str) -> list[ItemState]:
        """A map's items in item order."""
        found = [
            item
            for (wid, name, _), item in self.items.items()
            if wid == workflow_id and name == step
        ]
        return sorted(found, key=lambda item: item.index)

    def answer(self, ops: Sequence[ItemOp], now: datetime) -> list[ItemAnswer]:
        """Apply the writes among `ops` in order, then answer its requests."""
        claims: dict[tuple[str, str], int] = {}
        collects: list[tuple[str, str]] = []
        for op in ops:
            match op:
                case ClaimItems(workflow_id=wid, step_name=step, count=count):
                    claims[(wid, step)] = claims.get((wid, step), 0) + count
                case CollectItems(workflow_id=wid, step_name=step):
                    collects.append((wid, step))
                case _:
                    self._write(op)
        answers: list[ItemAnswer] = [
            self._claim(wid, step, count, now) for (wid, step), count in claims.items()
        ]
        answers.extend(
            ItemsCollected(
                wid,
                step,
                tuple(
                    item.output if item.status is StepStatus.COMPLETED else None
                    for item in self.of(wid, step)
                ),
            )
            for wid, step in collects
        )
        return answers

    def _write(self, op: ItemOp) -> None:
        match op:
            case CreateItems(items=items):
                for item in items:
                    self.items.setdefault((item.workflow_id, item.step_name, item.key), item)
            case SaveItem(item=item):
                self.items[(item.workflow_id, item.step_name, item.key)] = item
            case ResetItems(workflow_id=wid, step_name=step):
                for item in self.of(wid, step):
                    if item.status is not StepStatus.COMPLETED:
                        self._put(replace(item, status=StepStatus.PENDING, error=None))
            case CancelItems(workflow_id=wid, step_name=step):
                for item in self.of(wid, step):
                    if item.status not in _ENDED:
                        self._put(replace(item, status=StepStatus.CANCELLED))

    def _claim(self, workflow_id: str, step: str, count: int, now: datetime) -> ItemsClaimed:
        pending = [i for i in self.of(workflow_id, step) if i.status is StepStatus.PENDING]
        claimed = []
        for item in pending[:count]:
            running = replace(
                item,
                status=StepStatus.RUNNING,
                attempts=item.attempts + 1,
                started_at=now,
                finished_at=None,
            )
            self._put(running)
            claimed.append(running)
        return ItemsClaimed(workflow_id, step, count, tuple(claimed))

    def _put(self, item: ItemState) -> None:
        self.items[(item.workflow_id, item.step_name, item.key)] = item
