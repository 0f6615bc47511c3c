"""The invocation records in PostgreSQL (`step_invocations`, queries in `queries.sql`): the
`InvocationStorage` the step worker runs on."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeAlias

import asyncpg
import orjson
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from relayflow.contracts import ErrorInfo, StepCommand
from relayflow.db import Queries
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

QUERIES = Queries.load("relayflow.steps")

Executor: TypeAlias = "DbConnection | asyncpg.Pool[Any]"


class InvocationStore:
    """`step_invocations` for one worker (`owner`) and lease length, over `pool`.

    A batch of plain steps runs in a transaction opened ahead: its commit is sent as
    `COMMIT; BEGIN`, one round trip that also opens the next batch's transaction, and the
    connection is kept for that batch (up to `open_ahead` of them, the rest go back to the
    pool). So a batch costs three round trips — claim, record, commit — instead of four. An
    opened transaction that nothing has used yet holds no snapshot and no lock. A transaction
    a body runs in (`transactional=True`) is begun when it starts, since the body sees its
    `now()`. `close` hands the kept connections back."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        owner: str,
        lease_seconds: float,
        open_ahead: int = 2,
    ) -> None:
        self._pool = pool
        self.owner = owner
        self.lease_seconds = lease_seconds
        self._open_ahead = open_ahead
        # Connections in a transaction opened ahead, waiting for a batch.
        self._opened: list[PoolConnectionProxy[Any]] = []
        # Of `open_ahead`, how many are taken: by those waiting, and by batches running on one
        # or that have reserved one for the transaction their commit opens.
        self._slots = 0
        self._closed = False

    @contextlib.asynccontextmanager
    async def batch(self, *, transactional: bool = False) -> AsyncIterator[_Batch]:
        if transactional:
            async with self._pool.acquire() as conn:
                transaction = conn.transaction()
                await transaction.start()
                try:
                    yield _Batch(self, conn, transaction)
                finally:
                    if conn.is_in_transaction():
                        with contextlib.suppress(Exception):
                            await transaction.rollback()
            return
        conn, slot = await self._opened_connection()
        batch = _Batch(self, conn, None, slot=slot)
        try:
            yield batch
        finally:
            await self._put_back(conn, slot=batch.slot, keep=batch.reopened)

    async def close(self) -> None:
        """End the transactions opened ahead and hand their connections back to the pool."""
        self._closed = True
        opened, self._opened = self._opened, []
        for conn in opened:
            await self._put_back(conn, slot=True, keep=False)

    def reserve_slot(self) -> bool:
        """Whether a batch that holds no slot may open the next one's transaction (it then
        holds one)."""
        if self._closed or self._slots >= self._open_ahead:
            return False
        self._slots += 1
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    async def _opened_connection(self) -> tuple[PoolConnectionProxy[Any], bool]:
        """A connection in an open transaction, and whether it holds a slot."""
        while self._opened:
            conn = self._opened.pop()
            # One the server ended while it waited (a restart, an idle timeout) is replaced.
            if not conn.is_closed() and conn.is_in_transaction():
                return conn, True
            await self._put_back(conn, slot=True, keep=False)
        conn = await self._pool.acquire()
        try:
            await conn.execute(QUERIES.begin)
        except BaseException:
            await self._pool.release(conn)
            raise
        return conn, False

    async def _put_back(self, conn: PoolConnectionProxy[Any], *, slot: bool, keep: bool) -> None:
        if slot and keep and not self._closed and not conn.is_closed() and conn.is_in_transaction():
            self._opened.append(conn)
            return
        if slot:
            self._slots -= 1
        try:
            with contextlib.suppress(Exception):
                # Ended here: asyncpg warns of a transaction it did not begin left open.
                if not conn.is_closed() and conn.is_in_transaction():
                    await conn.execute(QUERIES.rollback)
        finally:
            # Even when cancelled meanwhile: the pool would wait for it at close.
            with contextlib.suppress(Exception):
                await self._pool.release(conn)

    async def get(self, command: StepCommand) -> Invocation | None:
        row = await self._pool.fetchrow(QUERIES.get, *invocation_key(command))
        return _invocation(row) if row is not None else None

    async def settle_many(
        self, outcomes: Sequence[tuple[StepCommand, Outcome]]
    ) -> dict[InvocationKey, Invocation]:
        return await _settle_many(self._pool, outcomes, self.owner)

    async def renew(self, command: StepCommand) -> bool:
        row = await self._pool.fetchrow(
            QUERIES.renew, *invocation_key(command), command.attempt, self.owner, self.lease_seconds
        )
        return row is not None

    async def release(self, command: StepCommand) -> None:
        await self._pool.execute(
            QUERIES.release, *invocation_key(command), command.attempt, self.owner
        )


class _Batch:
    """An `InvocationBatch` on one pooled connection's open transaction: begun by asyncpg's
    `transaction` (one a body runs in), or opened ahead by the store (`transaction` None)."""

    def __init__(
        self,
        store: InvocationStore,
        conn: DbConnection,
        transaction: Transaction | None,
        *,
        slot: bool = False,
    ) -> None:
        self._store = store
        self._conn = conn
        self._transaction = transaction
        # Holds one of the store's `open_ahead` slots.
        self.slot = slot
        # The commit or rollback opened the next batch's transaction on this connection.
        self.reopened = False

    def _may_reopen(self) -> bool:
        if self._store.closed:
            return False
        if not self.slot:
            self.slot = self._store.reserve_slot()
        return self.slot

    @property
    def connection(self) -> DbConnection:
        return self._conn

    async def claim_many(self, commands: Sequence[StepCommand]) -> dict[InvocationKey, Invocation]:
        return await _claim_many(self._conn, commands, self._store.owner, self._store.lease_seconds)

    async def run_transactional(self, body: TransactionalBody) -> Outcome:
        if self._transaction is None:
            raise RuntimeError("a body runs only in a batch begun with transactional=True")
        savepoint = self._conn.transaction()
        await savepoint.start()
        try:
            outcome = await body(self._conn)
        except BaseException:
            with contextlib.suppress(Exception):
                await savepoint.rollback()
            raise
        if isinstance(outcome, ErrorInfo):
            await savepoint.rollback()
        # A success leaves its savepoint open, not released: the commit that records the
        # outcome commits the body's writes with it all the same, one round trip sooner.
        return outcome

    async def settle_many(
        self, outcomes: Sequence[tuple[StepCommand, Outcome]]
    ) -> dict[InvocationKey, Invocation]:
        return await _settle_many(self._conn, outcomes, self._store.owner)

    async def commit(self) -> None:
        if self._transaction is not None:
            await self._transaction.commit()
        elif self._may_reopen():
            await self._conn.execute(QUERIES.commit_and_begin)
            self.reopened = True
        else:
            await self._conn.execute(QUERIES.commit)

    async def rollback(self) -> None:
        if self._transaction is not None:
            await self._transaction.rollback()
        elif self._may_reopen():
            await self._conn.execute(QUERIES.rollback_and_begin)
            self.reopened = True
        else:
            await self._conn.execute(QUERIES.rollback)


async def _claim_many(
    db: Executor, commands: Sequence[StepCommand], owner: str, lease_seconds: float
) -> dict[InvocationKey, Invocation]:
    rows = await db.fetch(
        QUERIES.claim_many,
        [c.workflow_id for c in commands],
        [c.step_name for c in commands],
        [c.step_key for c in commands],
        [c.attempt for c in commands],
        owner,
        lease_seconds,
    )
    return {_row_key(row): _invocation(row) for row in rows}


async def _settle_many(
    db: Executor, outcomes: Sequence[tuple[StepCommand, Outcome]], owner: str
) -> dict[InvocationKey, Invocation]:
    rows = await db.fetch(
        QUERIES.settle_many,
        [c.workflow_id for c, _ in outcomes],
        [c.step_name for c, _ in outcomes],
        [c.step_key for c, _ in outcomes],
        [c.attempt for c, _ in outcomes],
        [_status(o).value for _, o in outcomes],
        [_output(o) for _, o in outcomes],
        [_error(o) for _, o in outcomes],
        owner,
    )
    return {_row_key(row): _invocation(row) for row in rows}


# jsonb[] parameters are Fragments of encoded JSON: asyncpg would take a list for a nested array.


def _output(outcome: Outcome) -> orjson.Fragment | None:
    # A body that returned None leaves the column NULL, as it always has (not JSON null).
    if not isinstance(outcome, Succeeded) or outcome.output_json == b"null":
        return None
    return orjson.Fragment(outcome.output_json)


def _error(outcome: Outcome) -> orjson.Fragment | None:
    if not isinstance(outcome, ErrorInfo):
        return None
    return orjson.Fragment(orjson.dumps(outcome.model_dump(mode="json", by_alias=True)))


def _status(outcome: Outcome) -> InvocationStatus:
    return InvocationStatus.SUCCEEDED if isinstance(outcome, Succeeded) else InvocationStatus.FAILED


def _invocation(row: asyncpg.Record) -> Invocation:
    error = row["error"]
    return Invocation(
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


def _row_key(row: asyncpg.Record) -> InvocationKey:
    return (row["workflow_id"], row["step_name"], row["step_key"])
