"""Settings of the step service (environment, prefix `RELAYFLOW_`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import NoDecode

from relayflow.settings import Settings, split_csv


class StepServiceSettings(Settings):
    # The steps this process serves (RELAYFLOW_STEPS=validate,persist); empty: all it loads.
    steps: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Unacknowledged commands per step queue, i.e. invocations running at once per step.
    step_prefetch: int = Field(default=32, ge=1)
    # How long a claimed invocation stays leased without renewal (renewed every third of it).
    step_lease_seconds: float = Field(default=30.0, gt=0)
    # A body quicker than this records its claim and outcome in one transaction (one commit).
    step_inline_budget: float = Field(default=0.2, ge=0)
    # Commands of one step queue claimed, run and recorded in one transaction at most, and how
    # many such batches run at once per queue (see relayflow.steps.WorkerConfig).
    step_batch_size: int = Field(default=32, ge=1)
    step_batch_workers: int = Field(default=1, ge=1)
    # Apply each step's result to its workflow in the transaction that records the step (one
    # broker hop and one commit per step instead of two), rather than sending it to the
    # orchestrator. Needs the orchestrator's database rights and the right to publish commands
    # and events; off for a step service that must hold no more than a step's (it then only
    # sends results). See ARCHITECTURE.md, "Step services that advance workflows".
    step_advance: bool = True
    # With step_advance: a command its own advance produces for a step this process serves is
    # run here, not sent through the broker (eager dispatch: one confirmed publish, a delivery
    # and an ack fewer per step; a crash then resumes that step after the outbox sweep's
    # RELAYFLOW_OUTBOX_STALE_AFTER). See ARCHITECTURE.md, "Eager dispatch".
    step_eager: bool = True
    # How long in-flight steps may take to finish on stop before they are handed back.
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)

    # Not named `_csv`: that would replace the base class's validator of `workflows` and
    # `step_modules`, and RELAYFLOW_WORKFLOWS=a,b would then be refused.
    @field_validator("steps", mode="before")
    @classmethod
    def _csv_steps(cls, value: object) -> object:
        return split_csv(value)
