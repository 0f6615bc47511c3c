"""Invocation records in `step_invocations`: claiming, lease renewal and the guarded outcomes.

Also the pure decision taken when a command meets a record it could not claim.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, TypeAlias

import asyncpg
import orjson

from relayflow.contracts import ErrorInfo, StepCommand
from relayflow.db import Queries
from relayflow.steps.context import DbConnection

QUERIES = Queries.load("relayflow.steps")

Executor: TypeAlias = "DbConnection | asyncpg.Pool[Any]"
# (workflow_id, step_name, step_key): what identifies an invocation.
InvocationKey: TypeAlias = tuple[str, str, str]


def invocation_key(command: StepCommand) -> InvocationKey:
    return (command.workflow_id, command.step_name, command.step_key)


def _json(value: Any) -> orjson.Fragment | None:
    """A value for a jsonb[] parameter: asyncpg would take a list for a nested array."""
    return None if value is None else orjson.Fragment(orjson.dumps(value))


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

    async def claim_many(
        self, db: Executor, commands: Sequence[StepCommand]
    ) -> dict[InvocationKey, Invocation]:
        """Claim the invocations of `commands` (distinct ones) for this worker, under a lease:
        those new, failed on an older attempt, or whose lease expired. The ones claimed, by
        key."""
        rows = await db.fetch(
            QUERIES.claim_many,
            [c.workflow_id for c in commands],
            [c.step_name for c in commands],
            [c.step_key for c in commands],
            [c.attempt for c in commands],
            self.owner,
            self.lease_seconds,
        )
        return {_row_key(row): Invocation.from_row(row) for row in rows}

    async def settle_many(
        self, db: Executor, outcomes: Sequence[tuple[StepCommand, Any, ErrorInfo | None]]
    ) -> dict[InvocationKey, Invocation]:
        """Record, for invocations this worker holds, each (command, output, error): failed
        when there is an error, succeeded with the output otherwise. The ones recorded, by key
        (one missing had its lease lost)."""
        rows = await db.fetch(
            QUERIES.settle_many,
            [c.workflow_id for c, _, _ in outcomes],
            [c.step_name for c, _, _ in outcomes],
            [c.step_key for c, _, _ in outcomes],
            [c.attempt for c, _, _ in outcomes],
            [
                (InvocationStatus.SUCCEEDED if e is None else InvocationStatus.FAILED).value
                for _, _, e in outcomes
            ],
            [_json(output) if e is None else None for _, output, e in outcomes],
            [
                None if e is None else _json(e.model_dump(mode="json", by_alias=True))
                for _, _, e in outcomes
            ],
            self.owner,
        )
        return {_row_key(row): Invocation.from_row(row) for row in rows}

    async def get(self, db: Executor, command: StepCommand) -> Invocation | None:
        row = await db.fetchrow(QUERIES.get, *invocation_key(command))
        return Invocation.from_row(row) if row is not None else None

    async def renew(self, db: Executor, command: StepCommand) -> bool:
        row = await db.fetchrow(
            QUERIES.renew, *invocation_key(command), command.attempt, self.owner, self.lease_seconds
        )
        return row is not None

    async def release(self, db: Executor, command: StepCommand) -> None:
        await db.execute(QUERIES.release, *invocation_key(command), command.attempt, self.owner)


def _row_key(row: asyncpg.Record) -> InvocationKey:
    return (row["workflow_id"], row["step_name"], row["step_key"])
