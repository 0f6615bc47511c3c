"""What a step body sees of its invocation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeAlias, TypeVar, cast

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from pydantic import TypeAdapter, ValidationError

from relayflow.contracts import Envelope
from relayflow.errors import StepError

InputT = TypeVar("InputT")
OutputT = TypeVar("OutputT")

# A connection taken from a pool, or a plain one (tests, scripts).
DbConnection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"

PublishFn = Callable[[Envelope, str, "str | None"], Awaitable[None]]


class StepContextError(StepError):
    """A step body asked its context for something its declaration does not give it: a mistake
    in the code that another attempt would repeat, so it fails the step for good."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


@dataclass(frozen=True, slots=True)
class ReadSource:
    """Where a body's read of another body's output comes from in one workflow: the step that
    runs that body (an ancestor), what its output is parsed as, and whether it is a map (whose
    output is the list of its items' outputs)."""

    step: str
    adapter: TypeAdapter[Any]
    is_map: bool = False


# The reads of one (workflow, step), by the function of the body read.
Reads: TypeAlias = "Mapping[Callable[..., Any], ReadSource]"


class StepContext(Generic[InputT]):
    """One invocation of a step: who it is for, its parsed input (a map item's body: the item),
    the outputs of the steps it comes after, and (for `transactional=True` steps) the
    connection whose transaction also records the step's success."""

    __slots__ = (
        "_connection",
        "_publish",
        "_reads",
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
        reads: Reads | None = None,
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
        self._reads: Reads = reads or {}

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

    def output(self, body: Callable[..., Awaitable[OutputT]]) -> OutputT:
        """The output of the step that ran `body` before this one, as `body` declares it
        (`async def reserve(ctx) -> Reserved` gives a `Reserved`). The body must be among the
        `reads=` of this one's declaration: the step service then checked, at start-up, that in
        every workflow it runs as a step this one comes after."""
        source = self._source(body)
        if source.is_map:
            raise StepContextError(
                f"step {source.step!r} is a map: read its item outputs with ctx.items(...)"
            )
        return cast(OutputT, self._parse(source, self.dependencies.get(source.step)))

    def items(self, body: Callable[..., Awaitable[OutputT]]) -> list[OutputT | None]:
        """The item outputs of the map step that ran `body` before this one, in item order
        (None where an item failed and the map tolerated it)."""
        source = self._source(body)
        if not source.is_map:
            raise StepContextError(f"step {source.step!r} is not a map: read it with ctx.output")
        values = self.dependencies.get(source.step) or []
        return [None if value is None else self._parse(source, value) for value in values]

    def _source(self, body: Callable[..., Any]) -> ReadSource:
        source = self._reads.get(body)
        if source is None:
            name = getattr(body, "__name__", repr(body))
            raise StepContextError(
                f"step {self.step_name!r} reads the output of {name}, which its declaration "
                "does not name: add it to `reads=` of `@steps.step(...)`"
            )
        return source

    def _parse(self, source: ReadSource, value: Any) -> Any:
        try:
            return source.adapter.validate_python(value)
        except ValidationError as exc:
            raise StepContextError(
                f"the output of step {source.step!r} does not fit its declared type: {exc}"
            ) from exc

    async def publish(
        self, message: Envelope, *, routing_key: str, correlation_id: str | None = None
    ) -> None:
        """Publish `message` on the main exchange, confirmed and mandatory. Give it a
        deterministic `message_id` so that a re-run's copy is recognised downstream."""
        await self._publish(message, routing_key, correlation_id)
