"""The status vocabulary of workflows and steps: the one place it is spelled.

Every service imports these (the orchestrator writes them, the gateway filters and renders them,
the SQL stores their values); nothing spells a status as a string literal elsewhere.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class WorkflowStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # It failed or was cancelled after compensable steps completed: their undo steps run.
    COMPENSATING = "compensating"
    # Every undo step completed (the run's error says what made it undo).
    COMPENSATED = "compensated"
    # An undo step failed for good; a retry runs the undo steps that did not complete.
    COMPENSATION_FAILED = "compensation_failed"

    @property
    def finished(self) -> bool:
        return self not in (WorkflowStatus.RUNNING, WorkflowStatus.COMPENSATING)


# What each status allows an operator to ask for. A compensated run is not retried: its steps
# have been undone, and their recorded successes would not run them again.
CANCELLABLE: Final = frozenset({WorkflowStatus.RUNNING})
RETRYABLE: Final = frozenset(
    {WorkflowStatus.FAILED, WorkflowStatus.CANCELLED, WorkflowStatus.COMPENSATION_FAILED}
)
FINISHED: Final = frozenset(status for status in WorkflowStatus if status.finished)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    # An attempt failed; the next starts when its retry timer fires.
    RETRYING = "retrying"
    COMPLETED = "completed"
    # Its condition was false, or every step it comes after was skipped: it never ran.
    SKIPPED = "skipped"
    FAILED = "failed"
    CANCELLED = "cancelled"


# Steps that have ended well: a step after them may start.
SETTLED_STEPS: Final = frozenset({StepStatus.COMPLETED, StepStatus.SKIPPED})
# Steps that still have work ahead of them: a cancel or a workflow timeout stops them.
UNFINISHED_STEPS: Final = frozenset(
    {StepStatus.PENDING, StepStatus.RUNNING, StepStatus.WAITING, StepStatus.RETRYING}
)
# Steps that have started and not yet ended: what a progress bar counts as "in flight".
ACTIVE_STEPS: Final = frozenset({StepStatus.RUNNING, StepStatus.WAITING, StepStatus.RETRYING})
# Steps a retried workflow runs again.
RERUN_STEPS: Final = frozenset({StepStatus.FAILED, StepStatus.CANCELLED})
