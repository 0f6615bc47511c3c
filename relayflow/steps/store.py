"""Invocation records in `step_invocations`: claiming, lease renewal and the guarded outcomes.

Also the pure decision taken when a command meets a record it could not claim.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

import asyncpg

from relayflow.contracts import ErrorInfo, StepCommand
from relayflow.db import Queries
from relayflow.steps.context import DbConnection

QUERIES = Queries.load("relayflow.steps")

Executor: TypeAlias = "DbConnection | asyncpg.Pool[Any]"


class InvocationStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Invocation:
    """One row of `step_invocations`, as this worker sees it."""

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

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Invocation:
        error = row["error"]
        return cls(
            status=InvocationStatus(row["status"]),
            attempt=row["attempt"],
            executions=row["executions"],
            lease_owner=row["lease_owner"],
            output=row["output"],
            error=ErrorInfo.model_validate(error) if error is not None else None,
            started_at=row["started_at"],
            finished_at=row["finished_at"],
            lease_remaining=row["lease_remaining"],
        )

    @property
    def lease_live(self) -> bool:
        return self.lease_remaining is not None and self.lease_remaining >= 0


class Verdict(StrEnum):
    """What to do with a command whose invocation this worker could not claim."""

    REPUBLISH = "republish"  # settled: send the stored outcome again, ack
    WAIT = "wait"  # a live lease elsewhere: keep the delivery, look again later
    CLAIM = "claim"  # claimable after all (a race with another claimer): try again
    STALE = "stale"  # an older attempt than the row's, whose holder died: ack, nothing to send


def decide(invocation: Invocation, command: StepCommand) -> Verdict:
    """The rules of a command that meets an existing record (see the module docstring of
    `relayflow.steps.worker`)."""
    if invocation.status is InvocationStatus.SUCCEEDED:
        return Verdict.REPUBLISH
    if invocation.status is InvocationStatus.FAILED:
        return Verdict.REPUBLISH if invocation.attempt >= command.attempt else Verdict.CLAIM
    if invocation.lease_live:
        return Verdict.WAIT
    return Verdict.CLAIM if invocation.attempt <= command.attempt else Verdict.STALE


@dataclass(frozen=True, slots=True)
class InvocationStore:
    """Named queries over `step_invocations`, for one worker (`owner`) and lease length."""

    owner: str
    lease_seconds: float

    @staticmethod
    def _key(command: StepCommand) -> tuple[str, str, str]:
        return (command.workflow_id, command.step_name, command.step_key)

    async def claim(self, db: Executor, command: StepCommand) -> Invocation | None:
        row = await db.fetchrow(
            QUERIES.claim,
            *self._key(command),
            command.attempt,
            self.owner,
            self.lease_seconds,
        )
        return Invocation.from_row(row) if row is not None else None

    async def get(self, db: Executor, command: StepCommand) -> Invocation | None:
        row = await db.fetchrow(QUERIES.get, *self._key(command))
        return Invocation.from_row(row) if row is not None else None

    async def renew(self, db: Executor, command: StepCommand) -> bool:
        row = await db.fetchrow(
            QUERIES.renew, *self._key(command), command.attempt, self.owner, self.lease_seconds
        )
        return row is not None

    async def succeed(self, db: Executor, command: StepCommand, output: Any) -> Invocation | None:
        """Record success; None when the lease was lost (someone else holds the invocation)."""
        row = await db.fetchrow(
            QUERIES.succeed, *self._key(command), command.attempt, self.owner, output
        )
        return Invocation.from_row(row) if row is not None else None

    async def fail(self, db: Executor, command: StepCommand, error: ErrorInfo) -> Invocation | None:
        """Record failure; None when the lease was lost."""
        row = await db.fetchrow(
            QUERIES.fail,
            *self._key(command),
            command.attempt,
            self.owner,
            error.model_dump(mode="json", by_alias=True),
        )
        return Invocation.from_row(row) if row is not None else None

    async def release(self, db: Executor, command: StepCommand) -> None:
        await db.execute(QUERIES.release, *self._key(command), command.attempt, self.owner)
