"""What a step body sees of its invocation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Generic, TypeAlias, TypeVar

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from relayflow.contracts import Envelope
from relayflow.errors import RelayflowError

InputT = TypeVar("InputT")

# A connection taken from a pool, or a plain one (tests, scripts).
DbConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

PublishFn = Callable[[Envelope, str, "str | None"], Awaitable[None]]


class StepContextError(RelayflowError):
    """A step body asked its context for something its declaration does not give it."""


class StepContext(Generic[InputT]):
    """One invocation of a step: who it is for, its parsed input (a map item's body: the item),
    the outputs of the steps it comes after, and (for `transactional=True` steps) the
    connection whose transaction also records the step's success."""

    __slots__ = (
        "_connection",
        "_publish",
        "attempt",
        "dependencies",
        "input",
        "item_index",
        "step_key",
        "step_name",
        "workflow_id",
        "workflow_name",
    )

    def __init__(
        self,
        *,
        workflow_id: str,
        workflow_name: str,
        step_name: str,
        step_key: str,
        attempt: int,
        input: InputT,
        dependencies: Mapping[str, Any],
        publish: PublishFn,
        connection: DbConnection | None = None,
        item_index: int | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.workflow_name = workflow_name
        self.step_name = step_name
        self.step_key = step_key
        self.attempt = attempt
        # A map item's body: `input` is the item, `item_index` its place in the list (and
        # `step_key` its key); None for any other step.
        self.input = input
        self.item_index = item_index
        self.dependencies: Mapping[str, Any] = dependencies
        self._publish = publish
        self._connection = connection

    @property
    def connection(self) -> DbConnection:
        """The connection inside the transaction that will record this step's success: what the
        body writes through it commits together with that record, or not at all."""
        if self._connection is None:
            raise StepContextError(
                f"step {self.step_name!r} has no database connection; declare it with "
                "`@steps.step(..., transactional=True)` to run inside the success transaction"
            )
        return self._connection

    async def publish(
        self, message: Envelope, *, routing_key: str, correlation_id: str | None = None
    ) -> None:
        """Publish `message` on the main exchange, confirmed and mandatory. Give it a
        deterministic `message_id` so that a re-run's copy is recognised downstream."""
        await self._publish(message, routing_key, correlation_id)
