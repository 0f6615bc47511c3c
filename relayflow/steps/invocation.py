"""An invocation's record as plain data, the outcomes a body can have, and the pure rules built on
them: what a command does with a record it could not claim (`decide`), and the result that
reports a settled record (`result_for`). The rules themselves are written down once, in
ARCHITECTURE.md, "Step invocations"."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

import orjson

from relayflow.contracts import ErrorInfo, StepCommand, StepResult, StepResultStatus
from relayflow.model import ids

# (workflow_id, step_name, step_key): what identifies an invocation.
InvocationKey: TypeAlias = tuple[str, str, str]


def invocation_key(command: StepCommand) -> InvocationKey:
    return (command.workflow_id, command.step_name, command.step_key)


class InvocationStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One row of `step_invocations`, as a worker sees it."""

    status: InvocationStatus
    attempt: int
    executions: int
    lease_owner: str | None
    output: Any
    error: ErrorInfo | None
    started_at: datetime
    finished_at: datetime | None
    # Seconds until the lease expires, by the database's clock (negative once expired).
    lease_remaining: float | None

    @property
    def lease_live(self) -> bool:
        return self.lease_remaining is not None and self.lease_remaining >= 0


@dataclass(frozen=True, slots=True)
class Succeeded:
    """A body's success: its output already encoded as the JSON that will be stored, so that an
    output that cannot be encoded fails the body rather than the batch that records it."""

    output_json: bytes


# What running a body gives: its encoded output, or its failure as data.
Outcome: TypeAlias = "Succeeded | ErrorInfo"


class Verdict(StrEnum):
    """What to do with a command whose invocation could not be claimed."""

    REPUBLISH = "republish"  # settled: send the stored outcome again, ack
    WAIT = "wait"  # a live lease elsewhere: keep the delivery, look again later
    CLAIM = "claim"  # claimable after all (a race with another claimer): try again
    STALE = "stale"  # an older attempt than the row's, whose holder died: ack, nothing to send


def decide(invocation: Invocation, command: StepCommand) -> Verdict:
    """What a command does with a record it could not claim."""
    if invocation.status is InvocationStatus.SUCCEEDED:
        return Verdict.REPUBLISH
    if invocation.status is InvocationStatus.FAILED:
        return Verdict.REPUBLISH if invocation.attempt >= command.attempt else Verdict.CLAIM
    if invocation.lease_live:
        return Verdict.WAIT
    return Verdict.CLAIM if invocation.attempt <= command.attempt else Verdict.STALE


def result_for(command: StepCommand, invocation: Invocation) -> StepResult:
    """The result that reports a settled invocation to the orchestrator. It is built from the
    stored row alone, so a republished result is the same message as the first one.

    A success answers the command's attempt (a retried command gets the stored output, not a
    re-run); a failure reports the attempt that failed."""
    if invocation.status is InvocationStatus.SUCCEEDED:
        attempt, status = command.attempt, StepResultStatus.SUCCEEDED
    elif invocation.status is InvocationStatus.FAILED:
        attempt, status = invocation.attempt, StepResultStatus.FAILED
    else:
        raise ValueError(f"invocation is still {invocation.status}")
    return StepResult(
        message_id=ids.result_id(command.workflow_id, command.step_name, command.step_key, attempt),
        workflow_id=command.workflow_id,
        step_name=command.step_name,
        step_key=command.step_key,
        attempt=attempt,
        status=status,
        output=invocation.output if status is StepResultStatus.SUCCEEDED else None,
        error=invocation.error if status is StepResultStatus.FAILED else None,
        started_at=invocation.started_at,
        finished_at=invocation.finished_at,
        created_at=invocation.finished_at or invocation.started_at,
    )


def result_of_run(
    command: StepCommand, outcome: Outcome, started: datetime, finished: datetime
) -> StepResult:
    """The result of an attempt run where no record is kept between run and report (a local
    task in the orchestrator, a body in the test environment): its outcome as it came."""
    succeeded = isinstance(outcome, Succeeded)
    return StepResult(
        message_id=ids.result_id(
            command.workflow_id, command.step_name, command.step_key, command.attempt
        ),
        workflow_id=command.workflow_id,
        idempotency_key=command.idempotency_key,
        step_name=command.step_name,
        step_key=command.step_key,
        attempt=command.attempt,
        status=StepResultStatus.SUCCEEDED if succeeded else StepResultStatus.FAILED,
        output=orjson.loads(outcome.output_json) if isinstance(outcome, Succeeded) else None,
        error=outcome if isinstance(outcome, ErrorInfo) else None,
        started_at=started,
        finished_at=finished,
        created_at=finished,
    )
