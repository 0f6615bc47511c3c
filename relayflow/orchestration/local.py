"""Running local tasks: the orchestrator calls a local task's body itself, inside the
transaction of the batch whose transition asked for it (`RunLocal`), and turns the outcome into
the StepResult the machine takes in that same transaction.

The body is called exactly as a step service calls it (`relayflow.steps.body.call`: input parsed
into its model, typed reads, errors as data). What differs is where its effects go: a
`transactional=True` body writes through the batch's connection inside a savepoint, released
when it succeeds and rolled back when it fails, so its rows commit with the workflow's state or
not at all; its publishes are rows of the batch's outbox, kept only when it succeeds. A crash
anywhere rolls back the lot and the input that started it is redelivered: the attempt runs
again, and nothing of the first one remains in the database.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg

from relayflow.amqp import OutgoingMessage
from relayflow.contracts import Envelope, ErrorInfo, StepResult
from relayflow.db import Connection
from relayflow.errors import DefinitionError
from relayflow.machine import RunLocal
from relayflow.steps import StepRegistry
from relayflow.steps.body import call
from relayflow.steps.invocation import Succeeded, result_of_run
from relayflow.workflow import WorkflowRegistry

# One name is enough: a body's savepoint is released or rolled back before the next one starts.
_SAVEPOINT = "relayflow_local_step"


class LocalSteps:
    """The bodies of the local tasks of the workflows an orchestrator loads."""

    def __init__(self, workflows: WorkflowRegistry, steps: StepRegistry, *, exchange: str) -> None:
        wanted = workflows.local_bodies()
        missing = [body for body in wanted if steps.get(body) is None]
        if missing:
            raise DefinitionError(
                f"local tasks run step bodies {', '.join(missing)}, which no module in "
                "RELAYFLOW_STEP_MODULES defines; the orchestrator runs local tasks itself and "
                "loads their bodies from those modules"
            )
        self._steps = steps.select(wanted)
        # Typed reads are checked here too, at start-up, as a step service checks its own.
        self._steps.bind(workflows)
        self._exchange = exchange

    @classmethod
    def load(
        cls, workflows: WorkflowRegistry, modules: list[str], *, exchange: str
    ) -> LocalSteps | None:
        """The local bodies the workflows need, from `modules`; None when they have none (the
        modules are then not imported)."""
        if not workflows.local_bodies():
            return None
        return cls(workflows, StepRegistry.from_modules(modules), exchange=exchange)

    @property
    def migrations(self) -> tuple[str, ...]:
        """The packages whose tables transactional local bodies write (applied at start-up)."""
        return self._steps.migrations

    async def run(
        self, conn: Connection, intent: RunLocal
    ) -> tuple[StepResult, list[OutgoingMessage]]:
        """Run one attempt; returns its result and, if it succeeded, what it published."""
        command = intent.command
        body_name = command.body or command.step_name
        definition = self._steps.get(body_name)
        if definition is None:
            # An older version's local task whose body this process no longer has.
            raise DefinitionError(f"no local step body {body_name!r} is loaded")
        published: list[OutgoingMessage] = []

        async def publish(message: Envelope, routing_key: str, correlation_id: str | None) -> None:
            published.append(
                OutgoingMessage.of(
                    message,
                    exchange=self._exchange,
                    routing_key=routing_key,
                    correlation_id=correlation_id,
                )
            )

        started = datetime.now(UTC)
        if definition.transactional:
            await conn.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            async with asyncio.timeout(intent.limit):
                outcome = await call(
                    definition,
                    command,
                    publish=publish,
                    connection=conn if definition.transactional else None,
                    reads=self._steps.reads_of(command.workflow_name, command.step_name, body_name),
                )
        except TimeoutError:
            outcome = ErrorInfo(
                type="StepTimeout",
                message=f"local attempt {command.attempt} did not finish within {intent.limit:g}s",
                retryable=True,
            )
        if definition.transactional:
            outcome = await _settle_savepoint(conn, outcome)
        result = result_of_run(command, outcome, started, datetime.now(UTC))
        return result, published if isinstance(outcome, Succeeded) else []


async def _settle_savepoint(
    conn: Connection, outcome: Succeeded | ErrorInfo
) -> Succeeded | ErrorInfo:
    """Keep a successful body's writes; roll back a failed one's. A body that swallowed a
    database error returns normally from an aborted transaction: its release fails, and it has
    failed after all."""
    if isinstance(outcome, Succeeded):
        try:
            await conn.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            return outcome
        except asyncpg.PostgresError as exc:  # says what the body left broken
            outcome = ErrorInfo(
                type=type(exc).__name__,
                message=f"the step's database work failed: {exc}",
                retryable=True,
            )
    await conn.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}; RELEASE SAVEPOINT {_SAVEPOINT}")
    return outcome
