"""Invocation records in memory, so that the real `InvocationEngine` runs without a database or a
broker — for fast unit tests of what it decides (procrastinate's `InMemoryConnector` is the
model).

    records = InMemoryInvocations()
    engine = InvocationEngine(steps, records.store(), publish=publish)  # publish: a fake
    result = await engine.run(command)
    assert records.get(invocation_key(command)).executions == 1

What it stands for, and how far it can be trusted:

- **Decisions** are the real ones: rows are claimed, settled, renewed and released under the same
  conditions as `queries.sql`, a lease expires by the event loop's clock, and outputs and errors
  go through JSON as through jsonb (what PostgreSQL refuses is refused here too). So it shows
  which invocations run, which are answered from their record, and what the answers say.
- **Transactions** are coarse: a batch's writes apply at its commit and vanish at its rollback,
  and one lock serialises every batch and write, standing in for PostgreSQL's row locks (a
  duplicate waits for a whole batch, not for its row). It does not show that the locking,
  isolation or crash behaviour is right.
- **Transactional steps are refused**: their writes share PostgreSQL's transaction, and a fake
  connection would prove nothing about them.

Transactions, leases under real concurrency, delivery and redelivery are what the tests against
PostgreSQL and RabbitMQ are for (`tests/integration/test_step_worker.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from relayflow.contracts import ErrorInfo, StepCommand, describe_path, unstorable
from relayflow.errors import RelayflowError
from relayflow.steps.context import DbConnection
from relayflow.steps.invocation import (
    Invocation,
    InvocationKey,
    InvocationStatus,
    Outcome,
    Succeeded,
    invocation_key,
)
from relayflow.steps.storage import TransactionalBody


class NotInMemory(RelayflowError):
    """Asked of the in-memory records what only PostgreSQL can honestly do."""


@dataclass(frozen=True, slots=True)
class _Row:
    status: InvocationStatus
    attempt: int
    executions: int
    lease_owner: str | None
    # By the event loop's clock; None once settled.
    lease_expires: float | None
    output: Any
    error: ErrorInfo | None
    started_at: datetime
    finished_at: datetime | None

    def seen(self, now: float) -> Invocation:
        return Invocation(
            status=self.status,
            attempt=self.attempt,
            executions=self.executions,
            lease_owner=self.lease_owner,
            output=self.output,
            error=self.error,
            started_at=self.started_at,
            finished_at=self.finished_at,
            lease_remaining=None if self.lease_expires is None else self.lease_expires - now,
        )


class InMemoryInvocations:
    """The `step_invocations` table, shared by the stores of any number of workers."""

    def __init__(self) -> None:
        self._rows: dict[InvocationKey, _Row] = {}
        self._lock = asyncio.Lock()
        # Commits that wrote something: how many transactions the engine's work took.
        self.commits = 0

    def store(self, *, owner: str = "memory", lease_seconds: float = 30.0) -> InMemoryStore:
        """The records as one worker (the lease owner `owner`) sees them."""
        return InMemoryStore(self, owner=owner, lease_seconds=lease_seconds)

    def get(self, key: InvocationKey) -> Invocation | None:
        row = self._rows.get(key)
        return None if row is None else row.seen(_now())

    def put(  # called inside a running event loop: leases are by its clock
        self,
        key: InvocationKey,
        *,
        status: InvocationStatus,
        attempt: int = 1,
        output: Any = None,
        error: ErrorInfo | None = None,
        lease_owner: str | None = None,
        lease_seconds: float | None = None,
    ) -> None:
        """Arrange a row as an earlier run (or a dead worker) left it; a lease of
        `lease_seconds` from now, negative for one that has expired."""
        settled = status is not InvocationStatus.RUNNING
        self._rows[key] = _Row(
            status=status,
            attempt=attempt,
            executions=1,
            lease_owner=lease_owner,
            lease_expires=None if lease_seconds is None else _now() + lease_seconds,
            output=_through_jsonb(output),
            error=error,
            started_at=_wall(),
            finished_at=_wall() if settled else None,
        )


class InMemoryStore:
    """An `InvocationStorage` over `InMemoryInvocations`, for one worker."""

    def __init__(self, table: InMemoryInvocations, *, owner: str, lease_seconds: float) -> None:
        self._table = table
        self.owner = owner
        self.lease_seconds = lease_seconds

    @contextlib.asynccontextmanager
    async def batch(self, *, transactional: bool = False) -> AsyncIterator[_MemoryBatch]:
        async with self._table._lock:
            yield _MemoryBatch(self, self._table._rows)

    async def get(self, command: StepCommand) -> Invocation | None:
        # Reads see committed rows only, without waiting for a batch, as under MVCC.
        return self._table.get(invocation_key(command))

    async def settle_many(
        self, outcomes: Sequence[tuple[StepCommand, Outcome]]
    ) -> dict[InvocationKey, Invocation]:
        async with self.batch() as batch:
            settled = await batch.settle_many(outcomes)
            await batch.commit()
        return settled

    async def renew(self, command: StepCommand) -> bool:
        async with self._table._lock:
            key = invocation_key(command)
            row = self._table._rows.get(key)
            if row is None or not self._holds(row, command):
                return False
            self._table._rows[key] = dataclasses.replace(
                row, lease_expires=_now() + self.lease_seconds
            )
            return True

    async def release(self, command: StepCommand) -> None:
        async with self._table._lock:
            key = invocation_key(command)
            row = self._table._rows.get(key)
            if row is not None and self._holds(row, command):
                self._table._rows[key] = dataclasses.replace(row, lease_expires=_now() - 0.001)

    def _holds(self, row: _Row, command: StepCommand) -> bool:
        return (
            row.status is InvocationStatus.RUNNING
            and row.attempt == command.attempt
            and row.lease_owner == self.owner
        )


class _MemoryBatch:
    """An `InvocationBatch`: writes are staged, and applied to the table at commit."""

    def __init__(self, store: InMemoryStore, rows: dict[InvocationKey, _Row]) -> None:
        self._store = store
        self._rows = rows
        self._staged: dict[InvocationKey, _Row] = {}

    def _current(self, key: InvocationKey) -> _Row | None:
        return self._staged.get(key, self._rows.get(key))

    async def claim_many(self, commands: Sequence[StepCommand]) -> dict[InvocationKey, Invocation]:
        keys = [invocation_key(command) for command in commands]
        if len(set(keys)) != len(keys):
            # PostgreSQL refuses it too: ON CONFLICT DO UPDATE cannot affect a row twice.
            raise ValueError("one claim cannot take an invocation twice")
        now = _now()
        claimed: dict[InvocationKey, Invocation] = {}
        for key, command in sorted(zip(keys, commands, strict=True), key=lambda kc: kc[0]):
            row = self._current(key)
            if row is not None and not _claimable(row, command.attempt, now):
                continue
            new = _Row(
                status=InvocationStatus.RUNNING,
                attempt=command.attempt,
                executions=1 if row is None else row.executions + 1,
                lease_owner=self._store.owner,
                lease_expires=now + self._store.lease_seconds,
                output=None,
                error=None,
                started_at=_wall(),
                finished_at=None,
            )
            self._staged[key] = new
            claimed[key] = new.seen(now)
        return claimed

    @property
    def connection(self) -> DbConnection:
        raise NotInMemory(
            "advancing workflows writes them in PostgreSQL's transaction; test it against "
            "PostgreSQL (tests/integration), not in memory"
        )

    async def run_transactional(self, body: TransactionalBody) -> Outcome:
        raise NotInMemory(
            "a transactional step's writes share PostgreSQL's transaction; test it against "
            "PostgreSQL (tests/integration), not in memory"
        )

    async def settle_many(
        self, outcomes: Sequence[tuple[StepCommand, Outcome]]
    ) -> dict[InvocationKey, Invocation]:
        settled: dict[InvocationKey, Invocation] = {}
        for command, outcome in outcomes:
            key = invocation_key(command)
            row = self._current(key)
            if (
                row is None
                or row.status is not InvocationStatus.RUNNING
                or row.attempt != command.attempt
                or row.lease_owner != self._store.owner
            ):
                continue
            succeeded = isinstance(outcome, Succeeded)
            new = dataclasses.replace(
                row,
                status=InvocationStatus.SUCCEEDED if succeeded else InvocationStatus.FAILED,
                output=_stored_output(outcome) if isinstance(outcome, Succeeded) else None,
                error=_stored_error(outcome) if isinstance(outcome, ErrorInfo) else None,
                finished_at=_wall(),
                lease_owner=None,
                lease_expires=None,
            )
            self._staged[key] = new
            settled[key] = dataclasses.replace(new.seen(_now()), lease_remaining=None)
        return settled

    async def commit(self) -> None:
        if self._staged:
            self._store._table.commits += 1
        self._rows.update(self._staged)
        self._staged = {}

    async def rollback(self) -> None:
        self._staged = {}


def _claimable(row: _Row, attempt: int, now: float) -> bool:
    """claim_many's WHERE: failed on an older attempt, or running under an expired lease and
    not newer than the command."""
    if row.status is InvocationStatus.FAILED:
        return row.attempt < attempt
    if row.status is InvocationStatus.RUNNING:
        expired = row.lease_expires is not None and row.lease_expires < now
        return expired and row.attempt <= attempt
    return False


def _stored_output(outcome: Succeeded) -> Any:
    return _through_jsonb(orjson.loads(outcome.output_json))


def _stored_error(error: ErrorInfo) -> ErrorInfo:
    stored = _through_jsonb(error.model_dump(mode="json", by_alias=True))
    return ErrorInfo.model_validate(stored)


def _through_jsonb(value: Any) -> Any:
    """`value` as it comes back from a jsonb column; what jsonb refuses raises, as there."""
    found = unstorable(value)
    if found is not None:
        path, reason = found
        raise ValueError(f"jsonb refuses this value: at {describe_path(path)}, it {reason}")
    return orjson.loads(orjson.dumps(value))


def _now() -> float:
    return asyncio.get_running_loop().time()


def _wall() -> datetime:
    return datetime.now(UTC)
