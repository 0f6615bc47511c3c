"""The definition of `approval`."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from relayflow.workflow import (
    Given,
    RetryPolicy,
    WorkflowDefinition,
    define_workflow,
    sleep,
    task,
    wait,
)

DECISION_TIMEOUT = timedelta(hours=1)
COOLDOWN = timedelta(seconds=2)
STEP_TIMEOUT = timedelta(seconds=60)

FailAt = Literal["reserve", "charge", "notify"]


class ApprovalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    request_id: Annotated[str, Field(alias="requestId", min_length=1, max_length=128)]
    amount: Annotated[int, Field(ge=0, le=1_000_000_000)]
    # A step that fails for good, to watch compensation (None: nothing fails).
    fail_at: Annotated[FailAt | None, Field(alias="failAt")] = None


class Decision(BaseModel):
    """The `decision` signal."""

    model_config = ConfigDict(extra="forbid")

    approved: bool
    by: Annotated[str, Field(min_length=1, max_length=200)]


def _approved(given: Given) -> bool:
    return bool(given.output("decision")["approved"])


APPROVAL: WorkflowDefinition = define_workflow(
    "approval",
    input_model=ApprovalRequest,
    signals={"decision": Decision},
    steps=[
        task("reserve", compensate="release", timeout=STEP_TIMEOUT),
        wait("decision", signal="decision", after=["reserve"], timeout=DECISION_TIMEOUT),
        # Rejected: the reservation goes back, by the same body that undoes it.
        task(
            "releaseRejected",
            step="release",
            after=["decision"],
            when=lambda given: not _approved(given),
            timeout=STEP_TIMEOUT,
        ),
        task(
            "charge", after=["decision"], when=_approved, compensate="refund", timeout=STEP_TIMEOUT
        ),
        sleep("cooldown", duration=COOLDOWN, after=["charge"]),
        task("notify", after=["cooldown"], timeout=STEP_TIMEOUT),
        task("outcome", after=["notify", "releaseRejected"], timeout=STEP_TIMEOUT),
    ],
    output_from="outcome",
    retry=RetryPolicy(max_attempts=5, initial_interval=timedelta(milliseconds=500)),
)

WORKFLOWS = [APPROVAL]
