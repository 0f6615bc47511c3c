"""What the invocation engine needs of the place its records live, as two small protocols.

`relayflow.steps.store.InvocationStore` is the real one (PostgreSQL); `relayflow.steps.testing`
keeps records in memory, for unit tests of the engine's decisions only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from relayflow.contracts import StepCommand
from relayflow.steps.context import DbConnection
from relayflow.steps.invocation import Invocation, InvocationKey, Outcome

# A transactional step's body, given the connection of the transaction that records it.
TransactionalBody = Callable[[DbConnection], Awaitable[Outcome]]


class InvocationBatch(Protocol):
    """One open transaction of one worker: the claims, the transactional bodies' writes and the
    outcomes recorded in it commit together, or not at all."""

    async def claim_many(self, commands: Sequence[StepCommand]) -> dict[InvocationKey, Invocation]:
        """Claim the invocations of `commands` (distinct ones, locked in key order) under this
        worker's lease: those new, failed on an older attempt, or whose lease expired. The ones
        claimed, by key."""
        ...

    async def run_transactional(self, body: TransactionalBody) -> Outcome:
        """Run `body` on this transaction's connection, in a savepoint: its writes stay if it
        succeeds and are undone if it fails, so that its failure can still be recorded here."""
        ...

    async def settle_many(
        self, outcomes: Sequence[tuple[StepCommand, Outcome]]
    ) -> dict[InvocationKey, Invocation]:
        """Record outcomes of invocations this worker holds; the ones recorded, by key (one
        missing had its lease lost)."""
        ...

    @property
    def connection(self) -> DbConnection:
        """The transaction's connection, for an advancer to write the workflows' moves in it
        (only a storage in PostgreSQL has one)."""
        ...

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...


class InvocationStorage(Protocol):
    """The records of one worker, which is the owner of the leases it takes."""

    @property
    def lease_seconds(self) -> float:
        """How long a claim holds without renewal before another worker may take it over."""
        ...

    def batch(self, *, transactional: bool = False) -> AbstractAsyncContextManager[InvocationBatch]:
        """A transaction; rolled back on leaving unless committed. `transactional`: a body will
        run in it (`InvocationBatch.run_transactional`)."""
        ...

    async def get(self, command: StepCommand) -> Invocation | None: ...

    async def settle_many(
        self, outcomes: Sequence[tuple[StepCommand, Outcome]]
    ) -> dict[InvocationKey, Invocation]:
        """As `InvocationBatch.settle_many`, in a transaction of its own (a body that ran on
        under a committed lease)."""
        ...

    async def renew(self, command: StepCommand) -> bool:
        """Extend this worker's lease; False if it no longer holds it."""
        ...

    async def release(self, command: StepCommand) -> None:
        """Let the lease expire now (a stop hands the command back), so that the redelivery need
        not wait it out."""
        ...
