"""`StepHandle`: one step of one transition, and everything a kind may do to it.

A kind's handler (`kinds/`) never touches the workflow state directly: it sets its step's state,
emits events, sets timers and adds intents through the handle, which keeps the state replaced
(never mutated), the event numbers consecutive and the retry rules in one place.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from relayflow.contracts import ErrorInfo, EventType, StepCommand, WorkflowEvent, wire_tenant
from relayflow.machine.transition import (
    Intent,
    ItemOp,
    Timer,
    TimerKind,
    Transition,
)
from relayflow.model import ItemState, StepState, StepStatus, WorkflowState, ids
from relayflow.workflow import INPUT_SOURCE, StepSpec, WorkflowDefinition, split_reference


def emit(
    transition: Transition,
    event: EventType,
    now: datetime,
    *,
    step_name: str | None = None,
    step_key: str | None = None,
    data: dict[str, Any] | None = None,
) -> None:
    """Record an event: numbered next in the workflow, stored and broadcast with the batch."""
    state = transition.state
    seq = state.last_seq + 1
    transition.state = replace(state, last_seq=seq)
    transition.events.append(
        WorkflowEvent(
            message_id=ids.event_id(state.id, seq),
            workflow_id=state.id,
            idempotency_key=state.idempotency_key,
            created_at=now,
            seq=seq,
            event=event,
            workflow_name=state.name,
            tenant=wire_tenant(state.tenant),
            step_name=step_name,
            step_key=step_key,
            data=data or {},
        )
    )


@dataclass(slots=True)
class StepHandle:
    definition: WorkflowDefinition
    transition: Transition
    name: str
    now: datetime
    # The map item a result or timer is about, as stored before this input (the processor
    # loads it); None for everything else.
    item: ItemState | None = None

    @property
    def spec(self) -> StepSpec:
        return self.definition.steps[self.name]

    @property
    def workflow(self) -> WorkflowState:
        return self.transition.state

    @property
    def state(self) -> StepState:
        return self.transition.state.steps[self.name]

    def output_of(self, step: str) -> Any:
        """An ancestor's output (the definition checked, at load, that it is one)."""
        return self.workflow.steps[step].output

    def value_at(self, reference: str) -> tuple[bool, Any]:
        """The value a reference ("input.<field>…" or "<step>.<field>…", checked when the
        definition loaded) names: (False, None) when a field on the way is missing."""
        source, path = split_reference(reference)
        value: Any = self.workflow.input if source == INPUT_SOURCE else self.output_of(source)
        for part in path:
            if not isinstance(value, dict) or part not in value:
                return False, None
            value = value[part]
        return True, value

    def command(
        self,
        key: str,
        attempt: int,
        *,
        body: str,
        input: dict[str, Any],
        dependencies: dict[str, Any] | None = None,
        item: Any = None,
        item_index: int | None = None,
    ) -> StepCommand:
        """The StepCommand of attempt `attempt` of this step's invocation `key`, run by `body`
        (named in the command only when it is not the step's own name)."""
        workflow = self.workflow
        return StepCommand(
            message_id=ids.command_id(workflow.id, self.name, key, attempt),
            workflow_id=workflow.id,
            idempotency_key=workflow.idempotency_key,
            created_at=self.now,
            workflow_name=workflow.name,
            step_name=self.name,
            body=None if body == self.name else body,
            step_key=key,
            attempt=attempt,
            input=input,
            dependencies=dependencies or {},
            item=item,
            item_index=item_index,
        )

    def ancestor_outputs(self) -> dict[str, Any]:
        return {step: self.output_of(step) for step in sorted(self.definition.ancestors[self.name])}

    # --- state ---

    def set(self, step: StepState) -> None:
        state = self.transition.state
        self.transition.state = replace(
            state, steps={**state.steps, self.name: step}, updated_at=self.now
        )

    def begin_attempt(self, status: StepStatus, **changes: Any) -> int:
        """Start the next attempt in `status`; returns its number."""
        attempt = self.state.attempts + 1
        self.set(
            replace(
                self.state,
                status=status,
                attempts=attempt,
                started_at=self.now,
                finished_at=None,
                next_attempt_at=None,
                **changes,
            )
        )
        return attempt

    def emit(self, event: EventType, **data: Any) -> None:
        emit(self.transition, event, self.now, step_name=self.name, data=data)

    def emit_item(self, event: EventType, key: str, **data: Any) -> None:
        emit(self.transition, event, self.now, step_name=self.name, step_key=key, data=data)

    def add(self, intent: Intent) -> None:
        self.transition.intents.append(intent)

    def add_item_op(self, op: ItemOp) -> None:
        self.transition.item_ops.append(op)

    def set_timer(self, kind: TimerKind, attempt: int, fire_at: datetime, key: str = "") -> None:
        self.transition.timers.append(
            Timer(self.workflow.id, kind, attempt, fire_at, step_name=self.name, step_key=key)
        )

    # --- endings ---

    def complete(self, output: Any) -> None:
        step = self.state
        self.set(
            replace(
                step, status=StepStatus.COMPLETED, output=output, error=None, finished_at=self.now
            )
        )
        self.emit(EventType.STEP_COMPLETED, attempt=step.attempts, output=output)

    def fail(self, error: ErrorInfo) -> None:
        """Fail the step for good (and so, once the machine advances, the workflow)."""
        step = self.state
        error_json = error.model_dump(mode="json")
        self.set(replace(step, status=StepStatus.FAILED, error=error_json, finished_at=self.now))
        self.emit(EventType.STEP_FAILED, attempt=step.attempts, error=error_json)

    def skip(self, reason: str) -> None:
        self.set(replace(self.state, status=StepStatus.SKIPPED, finished_at=self.now))
        self.emit(EventType.STEP_SKIPPED, reason=reason)

    def cancel(self) -> None:
        self.set(
            replace(
                self.state, status=StepStatus.CANCELLED, finished_at=self.now, next_attempt_at=None
            )
        )

    def retry_at(self, error: ErrorInfo, attempts: int, key: str = "") -> datetime | None:
        """When the next attempt starts, if the step's retry policy allows one after
        `attempts` (of the step, or of its map item `key`); None if the error is final."""
        policy = self.definition.retry_policy(self.name)
        if not policy.retries(error.type, error.retryable, attempts):
            return None
        where = f"{self.name}/{key}" if key else self.name
        return self.now + policy.delay(attempts, _spread(self.workflow.id, where, attempts))

    def attempt_failed(self, error: ErrorInfo) -> None:
        """An attempt failed: schedule the next one if the step's retry policy allows (a
        durable RETRY timer), else fail the step."""
        step = self.state
        next_at = self.retry_at(error, step.attempts)
        if next_at is None:
            self.fail(error)
            return
        error_json = error.model_dump(mode="json")
        self.set(
            replace(step, status=StepStatus.RETRYING, error=error_json, next_attempt_at=next_at)
        )
        self.emit(
            EventType.STEP_RETRYING,
            attempt=step.attempts,
            nextAttempt=step.attempts + 1,
            nextAttemptAt=next_at.isoformat(),
            error=error_json,
        )
        self.set_timer(TimerKind.RETRY, step.attempts, next_at)


def _spread(workflow_id: str, step: str, attempt: int) -> float:
    """A point in [-1, 1] for the retry jitter: looks random across workflows, yet the same
    input always gives the same schedule (the machine stays a pure function)."""
    digest = hashlib.blake2b(f"{workflow_id}/{step}/{attempt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**63 - 1
