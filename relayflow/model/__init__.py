"""The workflow model every service shares: statuses, workflow and step state with their JSON
form, and the deterministic message ids. The orchestrator and the gateway import it; neither
spells a status or an id scheme of its own."""

from relayflow.model import ids
from relayflow.model.state import ItemState, MapProgress, StepState, WorkflowState, input_hash
from relayflow.model.status import (
    ACTIVE_STEPS,
    CANCELLABLE,
    FINISHED,
    RERUN_STEPS,
    RETRYABLE,
    SETTLED_STEPS,
    UNFINISHED_STEPS,
    StepStatus,
    WorkflowStatus,
)

__all__ = [
    "ACTIVE_STEPS",
    "CANCELLABLE",
    "FINISHED",
    "RERUN_STEPS",
    "RETRYABLE",
    "SETTLED_STEPS",
    "UNFINISHED_STEPS",
    "ItemState",
    "MapProgress",
    "StepState",
    "StepStatus",
    "WorkflowState",
    "WorkflowStatus",
    "ids",
    "input_hash",
]
