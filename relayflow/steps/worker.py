"""The step worker: consumes `StepCommand`s, runs each invocation to one recorded outcome, and
answers the orchestrator with a `StepResult`.

An invocation is (workflowId, stepName, stepKey), one row of `step_invocations`. For a command:

1. Claim the row in one statement, inside a transaction: new, failed on an older attempt, or
   running with an expired lease (its holder died).
2. Not claimed: the row decides (`store.decide`). Succeeded → publish the stored output again;
   failed on this attempt or a newer one → publish the stored failure again; running under a live
   lease → a duplicate is in flight: keep the delivery, poll until the row settles or the lease
   expires, then decide again. The result's message id is deterministic, so a copy is deduplicated
   by the orchestrator's inbox.
3. Claimed: run the body. While it is quick (`inline_budget`) — and always for a transactional
   step — the claim stays uncommitted and the outcome is recorded in the same transaction: one
   commit per step, the row lock keeps duplicates waiting, and a crash leaves no claim behind. A
   transactional body's writes share that transaction (a savepoint lets a failure be recorded
   without them), so they commit exactly once. A non-transactional body that outlives the budget
   gets its claim committed as a lease, renewed every `lease_seconds / 3` while it runs, and its
   outcome is recorded by an UPDATE guarded by lease owner, attempt and status (zero rows: the
   lease was lost, publish nothing, look again).
4. Commit, publish the result (confirmed, mandatory), then ack. A crash in between is healed by
   the redelivery, which finds the settled row and publishes its outcome.

A message that is not a `StepCommand` for a step this worker serves is dead-lettered with a reason
on its first delivery. Anything else that goes wrong (database or broker unreachable) hands the
delivery back after a short backoff; the queue's delivery limit is the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from relayflow.amqp import OutgoingMessage, Publisher, dead_letter, quietly
from relayflow.contracts import (
    Envelope,
    ErrorInfo,
    StepCommand,
    StepResult,
    StepResultStatus,
    decode,
)
from relayflow.errors import StepError
from relayflow.steps.context import DbConnection, StepContext
from relayflow.steps.registry import StepDefinition, StepRegistry
from relayflow.steps.store import Invocation, InvocationStatus, InvocationStore, Verdict, decide
from relayflow.topology import RESULT_KEY, Topology

log = logging.getLogger(__name__)

_MAX_ERROR_MESSAGE = 4000


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    # Unacknowledged deliveries per step queue: how many invocations run at once per step.
    prefetch: int = 32
    # How long a claim holds an invocation without renewal before another worker may take it.
    lease_seconds: float = 30.0
    # Longest pause between two looks at an invocation held by a duplicate in flight.
    poll_max: float = 1.0
    # How long a duplicate waits for the holder before handing its delivery back to the broker.
    duplicate_wait: float = 300.0
    # Pause before handing a delivery back after an outage, so as not to spin. It doubles with
    # each redelivery (quorum queues count them), up to `retry_backoff_max`, so that a long
    # outage does not exhaust the queue's delivery limit and dead-letter good commands.
    retry_backoff: float = 1.0
    retry_backoff_max: float = 30.0
    # A body that finishes within this many seconds runs in the claim's own transaction: one
    # commit records claim and outcome together. A longer one gets its claim committed and runs
    # on under a renewed lease. (Transactional steps always run in that transaction.)
    inline_budget: float = 0.2

    def backoff(self, deliveries: int) -> float:
        return float(min(self.retry_backoff * 2 ** min(deliveries, 16), self.retry_backoff_max))


def new_worker_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class InvalidCommand(Exception):
    """The delivery cannot be a command for this worker; the reason goes with the dead letter."""


@dataclass(frozen=True, slots=True)
class _Succeeded:
    output: Any


class _NotClaimed:
    """The invocation's row would not be claimed: look at it and decide."""


_NOT_CLAIMED = _NotClaimed()


def result_message_id(workflow_id: str, step_name: str, step_key: str, attempt: int) -> str:
    return f"res:{workflow_id}:{step_name}:{step_key}:{attempt}"


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
        message_id=result_message_id(
            command.workflow_id, command.step_name, command.step_key, attempt
        ),
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


def error_from(exc: BaseException) -> ErrorInfo:
    """A step body's exception as data."""
    if isinstance(exc, StepError):
        return ErrorInfo(
            type=exc.type[:200],
            message=exc.message[:_MAX_ERROR_MESSAGE],
            retryable=not exc.non_retryable,
        )
    return ErrorInfo(
        type=type(exc).__name__[:200],
        message=(str(exc) or repr(exc))[:_MAX_ERROR_MESSAGE],
        retryable=True,
    )


def to_json(value: Any) -> Any:
    """A body's return value as JSON data: models by alias, anything else as pydantic would."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    return to_jsonable_python(value)


class StepWorker:
    """Serves the steps of `steps` from their queues in `topology`, which must be declared."""

    def __init__(
        self,
        *,
        steps: StepRegistry,
        pool: asyncpg.Pool[Any],
        connection: AbstractRobustConnection,
        topology: Topology,
        config: WorkerConfig | None = None,
        worker_id: str | None = None,
    ) -> None:
        self._steps = steps
        self._pool = pool
        self._connection = connection
        self._topology = topology
        self._config = config or WorkerConfig()
        self.worker_id = worker_id or new_worker_id()
        self._store = InvocationStore(
            owner=self.worker_id, lease_seconds=self._config.lease_seconds
        )
        self._publisher: Publisher | None = None
        self._channel: AbstractChannel | None = None
        self._consumers: list[tuple[AbstractQueue, str]] = []
        self._inflight: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._publisher = await Publisher.open(self._connection)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._config.prefetch)
        for definition in self._steps:
            queue = await self._channel.get_queue(self._topology.step_queue(definition.name))
            tag = await queue.consume(self._on_message)
            self._consumers.append((queue, tag))
        log.info("serving steps %s as %s", ", ".join(self._steps.names()), self.worker_id)

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop taking commands; let those in flight finish within `grace` seconds, then hand
        the rest back to the broker (their leases released so a redelivery need not wait)."""
        for queue, tag in self._consumers:
            await quietly(
                f"cancelling the consumer of {queue.name}", functools.partial(queue.cancel, tag)
            )
        self._consumers = []
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("handing %d unfinished command(s) back", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await quietly("closing the consumer channel", self._channel.close)
        if self._publisher is not None:
            await self._publisher.close()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    # -- deliveries ------------------------------------------------------------------------

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._handle(message), name=f"step:{message.message_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _parse(self, message: AbstractIncomingMessage) -> tuple[StepCommand, StepDefinition]:
        try:
            decoded = decode(message.body)
        except ValueError as exc:
            raise InvalidCommand(f"not a valid message: {exc}") from exc
        if not isinstance(decoded, StepCommand):
            raise InvalidCommand(f"expected a StepCommand, got a {decoded.type}")
        definition = self._steps.get(decoded.step_name)
        if definition is None:
            raise InvalidCommand(
                f"this step service does not serve step {decoded.step_name!r} "
                f"(it serves {', '.join(self._steps.names())})"
            )
        return decoded, definition

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        publisher = self._require_publisher()
        try:
            command, definition = self._parse(message)
        except InvalidCommand as exc:
            await dead_letter(publisher, self._topology.dead_letter_exchange, message, str(exc))
            return
        try:
            await self._process(command, definition)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            raise
        except Exception:
            count = (message.headers or {}).get("x-delivery-count", 0)
            backoff = self._config.backoff(count if isinstance(count, int) else 0)
            log.exception(
                "could not settle %s; handing it back in %.1fs", message.message_id, backoff
            )
            await asyncio.sleep(backoff)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        try:
            await message.ack()
        except Exception:
            # The channel went away: the broker redelivers, and the redelivery republishes.
            log.warning("could not ack %s; it will be redelivered", message.message_id)

    # -- one invocation --------------------------------------------------------------------

    async def _process(self, command: StepCommand, definition: StepDefinition) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.duplicate_wait
        delay = 0.05
        while True:
            settled = await self._claim_and_run(command, definition)
            if not isinstance(settled, _NotClaimed):
                if settled is not None:
                    await self._publish_result(command, settled)
                    return
                log.warning(
                    "lost the lease of %s/%s/%s during attempt %d; not publishing",
                    command.workflow_id,
                    command.step_name,
                    command.step_key,
                    command.attempt,
                )
            current = await self._store.get(self._pool, command)
            if current is None:
                continue
            verdict = decide(current, command)
            if verdict is Verdict.REPUBLISH:
                await self._publish_result(command, current)
                return
            if verdict is Verdict.STALE:
                log.info(
                    "ignoring attempt %d of %s/%s: attempt %d holds it",
                    command.attempt,
                    command.workflow_id,
                    command.step_name,
                    current.attempt,
                )
                return
            if verdict is Verdict.CLAIM:
                continue
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{command.workflow_id}/{command.step_name} is still held by "
                    f"{current.lease_owner} after {self._config.duplicate_wait}s"
                )
            remaining = max(current.lease_remaining or 0.0, 0.0) + 0.01
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, self._config.poll_max)

    async def _claim_and_run(
        self, command: StepCommand, definition: StepDefinition
    ) -> Invocation | _NotClaimed | None:
        """Claim the invocation and run it to a recorded outcome; `_NOT_CLAIMED` if the row
        would not be claimed, None if the lease was lost.

        The claim and the outcome share one transaction while the body is quick (or
        transactional): until it commits, the uncommitted claim row is the lease — a duplicate
        delivery waits on its lock, and a crash leaves no claim behind to wait out. A
        non-transactional body still running after `inline_budget` has its claim committed and
        finishes under a renewed lease, so that no transaction stays open for long."""
        body: asyncio.Future[_Succeeded | ErrorInfo] | None = None
        async with self._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                if await self._store.claim(conn, command) is None:
                    await transaction.rollback()
                    return _NOT_CLAIMED
                outcome: _Succeeded | ErrorInfo | None
                if definition.transactional:
                    outcome = await self._call_in_savepoint(command, definition, conn)
                else:
                    body = asyncio.ensure_future(self._call(command, definition, None))
                    done, _ = await asyncio.wait({body}, timeout=self._config.inline_budget)
                    outcome = body.result() if done else None
                if outcome is None:
                    # Slow: make the claim visible as a lease, and hold no transaction open
                    # for the rest of the body.
                    await transaction.commit()
                else:
                    recorded = await self._record(conn, command, outcome)
                    if recorded is None:
                        await transaction.rollback()
                    else:
                        await transaction.commit()
                    return recorded
            except BaseException:
                if body is not None:
                    body.cancel()
                if conn.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await transaction.rollback()
                raise
        assert body is not None
        return await self._finish_under_lease(command, body)

    async def _finish_under_lease(
        self, command: StepCommand, body: asyncio.Future[_Succeeded | ErrorInfo]
    ) -> Invocation | None:
        try:
            async with self._lease(command):
                outcome = await body
            return await self._record(self._pool, command, outcome)
        except asyncio.CancelledError:
            body.cancel()
            # Stopping: give the lease up so that the redelivery can run it at once.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._store.release(self._pool, command), timeout=2.0)
            raise

    async def _call_in_savepoint(
        self, command: StepCommand, definition: StepDefinition, conn: DbConnection
    ) -> _Succeeded | ErrorInfo:
        """A transactional body: its writes stand or fall with the outcome. A failure rolls back
        to the savepoint, so the failure can still be recorded in the same transaction."""
        savepoint = conn.transaction()
        await savepoint.start()
        try:
            outcome = await self._call(command, definition, conn)
        except BaseException:
            with contextlib.suppress(Exception):
                await savepoint.rollback()
            raise
        if isinstance(outcome, ErrorInfo):
            await savepoint.rollback()
        else:
            await savepoint.commit()
        return outcome

    async def _record(
        self, db: DbConnection | asyncpg.Pool[Any], command: StepCommand, outcome: Any
    ) -> Invocation | None:
        if isinstance(outcome, ErrorInfo):
            return await self._store.fail(db, command, outcome)
        assert isinstance(outcome, _Succeeded)
        return await self._store.succeed(db, command, outcome.output)

    async def _call(
        self,
        command: StepCommand,
        definition: StepDefinition,
        connection: DbConnection | None,
    ) -> _Succeeded | ErrorInfo:
        try:
            value = definition.parse_input(command.input)
        except ValidationError as exc:
            return ErrorInfo(
                type="InvalidInput", message=str(exc)[:_MAX_ERROR_MESSAGE], retryable=False
            )
        context: StepContext[Any] = StepContext(
            workflow_id=command.workflow_id,
            workflow_name=command.workflow_name,
            step_name=command.step_name,
            step_key=command.step_key,
            attempt=command.attempt,
            input=value,
            dependencies=command.dependencies,
            publish=self._publish_from_step,
            connection=connection,
        )
        try:
            returned = await definition.function(context)
            return _Succeeded(to_json(returned))
        except PydanticSerializationError as exc:
            return ErrorInfo(
                type="InvalidOutput",
                message=f"the step returned something that is not JSON: {exc}",
                retryable=False,
            )
        except Exception as exc:
            log.info(
                "step %s of %s failed on attempt %d: %r",
                command.step_name,
                command.workflow_id,
                command.attempt,
                exc,
            )
            return error_from(exc)

    @contextlib.asynccontextmanager
    async def _lease(self, command: StepCommand) -> AsyncIterator[None]:
        """Keep renewing the lease while the body runs."""
        renewer = asyncio.create_task(self._renew(command))
        try:
            yield
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _renew(self, command: StepCommand) -> None:
        interval = self._config.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            try:
                if not await self._store.renew(self._pool, command):
                    log.warning(
                        "lease of %s/%s lost while running; its outcome will not be recorded",
                        command.workflow_id,
                        command.step_name,
                    )
                    return
            except Exception:
                log.warning("could not renew the lease of %s", command.message_id, exc_info=True)

    # -- publishing ------------------------------------------------------------------------

    def _require_publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("StepWorker.start() has not been called")
        return self._publisher

    async def _publish_result(self, command: StepCommand, invocation: Invocation) -> None:
        result = result_for(command, invocation)
        await self._require_publisher().publish(
            OutgoingMessage.of(result, exchange=self._topology.exchange, routing_key=RESULT_KEY)
        )

    async def _publish_from_step(
        self, message: Envelope, routing_key: str, correlation_id: str | None
    ) -> None:
        await self._require_publisher().publish(
            OutgoingMessage.of(
                message,
                exchange=self._topology.exchange,
                routing_key=routing_key,
                correlation_id=correlation_id,
            )
        )
