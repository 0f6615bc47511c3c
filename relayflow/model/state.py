"""A workflow's state and its steps' state, with the JSON form PostgreSQL stores.

`workflows.steps` is a jsonb object of `StepState.to_json()` by step name; the orchestrator
writes it, the gateway reads it back with `StepState.from_json`. One shape, one home.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from relayflow.contracts import DEFAULT_TENANT, ParentRef
from relayflow.model.status import StepStatus, WorkflowStatus


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _parse_time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


@dataclass(frozen=True, slots=True)
class MapProgress:
    """Where a map step's items stand. `running` counts the items in flight (including those
    waiting to retry): what `max_concurrency` bounds. The rest of `total` is still pending."""

    total: int
    completed: int = 0
    failed: int = 0
    running: int = 0

    @property
    def pending(self) -> int:
        return self.total - self.completed - self.failed - self.running

    @property
    def ended(self) -> int:
        return self.completed + self.failed

    def to_json(self) -> dict[str, int]:
        return {
            "total": self.total,
            "completed": self.completed,
            "failed": self.failed,
            "running": self.running,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MapProgress:
        return cls(
            total=int(data["total"]),
            completed=int(data.get("completed", 0)),
            failed=int(data.get("failed", 0)),
            running=int(data.get("running", 0)),
        )


@dataclass(frozen=True, slots=True)
class ItemState:
    """One item of a map step: a row of `step_items`, never part of the workflow's jsonb, so
    that an item's result costs one row whatever the number of items."""

    workflow_id: str
    step_name: str
    # The item's stepKey: its index as text, or the key the definition derives from it.
    key: str
    index: int
    item: Any
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        """The item as the gateway shows it."""
        shown: dict[str, Any] = {
            "key": self.key,
            "index": self.index,
            "status": self.status.value,
            "attempts": self.attempts,
            "startedAt": _time(self.started_at),
            "finishedAt": _time(self.finished_at),
        }
        if self.status is StepStatus.COMPLETED:
            shown["output"] = self.output
        if self.error is not None:
            shown["error"] = self.error
        return shown


@dataclass(frozen=True, slots=True)
class StepState:
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    output: Any = None
    # ErrorInfo's JSON form (type, message, retryable), as it travelled in the StepResult.
    error: dict[str, Any] | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # Wait steps: the correlation id of the reply they wait for.
    correlation_id: str | None = None
    next_attempt_at: datetime | None = None
    # Child steps: the workflow the current attempt started.
    child_workflow_id: str | None = None
    # Map steps: how far their items are (the items themselves are rows of `step_items`).
    progress: MapProgress | None = None
    # Sleep steps: when the sleep ends.
    wake_at: datetime | None = None
    # A compensable task whose workflow is being undone: its undo step's own state.
    undo: StepState | None = None

    def to_json(self) -> dict[str, Any]:
        shown = {
            "status": self.status.value,
            "attempts": self.attempts,
            "output": self.output,
            "error": self.error,
            "startedAt": _time(self.started_at),
            "finishedAt": _time(self.finished_at),
            "correlationId": self.correlation_id,
            "nextAttemptAt": _time(self.next_attempt_at),
            "childWorkflowId": self.child_workflow_id,
        }
        if self.progress is not None:
            shown["progress"] = self.progress.to_json()
        if self.wake_at is not None:
            shown["wakeAt"] = _time(self.wake_at)
        if self.undo is not None:
            shown["undo"] = self.undo.to_json()
        return shown

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepState:
        return cls(
            status=StepStatus(data.get("status", StepStatus.PENDING)),
            attempts=int(data.get("attempts", 0)),
            output=data.get("output"),
            error=data.get("error"),
            started_at=_parse_time(data.get("startedAt")),
            finished_at=_parse_time(data.get("finishedAt")),
            correlation_id=data.get("correlationId"),
            next_attempt_at=_parse_time(data.get("nextAttemptAt")),
            child_workflow_id=data.get("childWorkflowId"),
            progress=MapProgress.from_json(data["progress"]) if data.get("progress") else None,
            wake_at=_parse_time(data.get("wakeAt")),
            undo=StepState.from_json(data["undo"]) if data.get("undo") else None,
        )


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
    # The step that started this workflow as its child; None at the top.
    parent: ParentRef | None = None
    # Named signals no wait has taken yet, by name, oldest first: {"id", "payload", "sentBy",
    # "at"} each.
    mailbox: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # The version of its definition the run is pinned to (None: recorded before versions were).
    version: str | None = None
    # Whose run it is (`relayflow.contracts.DEFAULT_TENANT` unless its start named another).
    tenant: str = DEFAULT_TENANT
    # The W3C trace context its start was processed in (`relayflow.tracing`; None: off).
    trace_parent: str | None = None

    @property
    def finished(self) -> bool:
        return self.status.finished

    def steps_json(self) -> dict[str, Any]:
        return {name: step.to_json() for name, step in self.steps.items()}


def input_hash(value: dict[str, Any]) -> str:
    """What a start's input is compared by: its canonical JSON, hashed."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()
