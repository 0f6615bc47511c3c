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

    @property
    def finished(self) -> bool:
        return self is not WorkflowStatus.RUNNING


# What each status allows an operator to ask for.
CANCELLABLE: Final = frozenset({WorkflowStatus.RUNNING})
RETRYABLE: Final = frozenset({WorkflowStatus.FAILED, WorkflowStatus.CANCELLED})
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
