"""The step worker: consumes `StepCommand`s, runs each invocation to one recorded outcome, and
answers the orchestrator with a `StepResult`.

An invocation is (workflowId, stepName, stepKey), one row of `step_invocations`. For a command:

1. Claim the row inside a transaction: new, failed on an older attempt, or running with an
   expired lease (its holder died). Commands of one step queue that arrive while the worker is
   busy are claimed, run and recorded together: one statement claims them all, one records their
   outcomes, one commit (`batch_size`, `batch_workers` batches at once per queue). At low load a
   batch is a single command, so nothing waits to fill one. Transactional steps' commands each
   get a transaction of their own, so that slow ones run side by side.
2. Not claimed: the row decides (`store.decide`). Succeeded → publish the stored output again;
   failed on this attempt or a newer one → publish the stored failure again; running under a live
   lease → a duplicate is in flight: keep the delivery, poll until the row settles or the lease
   expires, then decide again. The result's message id is deterministic, so a copy is deduplicated
   by the orchestrator's inbox.
3. Claimed: run the body. While it is quick (`inline_budget`) — and always for a transactional
   step — the claim stays uncommitted and the outcome is recorded in the same transaction: one
   commit per batch, the row lock keeps duplicates waiting, and a crash leaves no claim behind. A
   transactional body's writes share that transaction (a savepoint lets a failure be recorded
   without them), so they commit exactly once. A non-transactional body that outlives the budget
   gets its claim committed as a lease, renewed every `lease_seconds / 3` while it runs, and its
   outcome is recorded by an UPDATE guarded by lease owner, attempt and status (zero rows: the
   lease was lost, publish nothing, look again).
4. Commit, publish the result (confirmed, mandatory), then ack — each command on its own task,
   so that publishing overlaps the next batch. A crash in between is healed by the redelivery,
   which finds the settled row and publishes its outcome. A batch that fails as a whole (a
   deadlock, a lost connection) hands each of its commands to this path one by one.

A message that is not a `StepCommand` for a step this worker serves is dead-lettered with a reason
on its first delivery. Anything else that goes wrong (database or broker unreachable) hands the
delivery back after a short backoff; the queue's delivery limit is the backstop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import AsyncIterator, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import asyncpg
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractRobustConnection,
)
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from relayflow.amqp import BatchConsumer, OutgoingMessage, Publisher, dead_letter, quietly
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
from relayflow.steps.store import (
    Invocation,
    InvocationKey,
    InvocationStatus,
    InvocationStore,
    Verdict,
    decide,
    invocation_key,
)
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
    # Commands of one step queue claimed, run and recorded in one transaction at most, and how
    # many such batches run at once per queue. A batch takes what queued up while the others
    # were busy, so at low load it is one command and adds no wait; one batch at a time makes
    # the largest batches (measured: fewest commits and least CPU under load). A batch waits for
    # its quick bodies (at most `inline_budget`) before it commits. Transactional steps are not
    # batched.
    batch_size: int = 32
    batch_workers: int = 1

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


@dataclass(frozen=True, slots=True)
class _Slow:
    """A body that outlived the inline budget: its claim is committed as a lease."""

    body: asyncio.Future[_Succeeded | ErrorInfo]


# What one claim-and-run gives for a command.
_Attempt: TypeAlias = "Invocation | _NotClaimed | _Slow"


@dataclass(frozen=True, slots=True)
class _Delivery:
    message: AbstractIncomingMessage
    command: StepCommand
    definition: StepDefinition


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
        self._consumers: list[BatchConsumer] = []
        self._inflight: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._publisher = await Publisher.open(self._connection)
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._config.prefetch)
        for definition in self._steps:
            queue = await self._channel.get_queue(self._topology.step_queue(definition.name))
            consumer = BatchConsumer(
                queue,
                self._handle_batch,
                max_batch=self._config.batch_size,
                workers=self._config.batch_workers,
            )
            await consumer.start()
            self._consumers.append(consumer)
        log.info("serving steps %s as %s", ", ".join(self._steps.names()), self.worker_id)

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop taking commands; let those in flight finish within `grace` seconds, then hand
        the rest back to the broker (their leases released so a redelivery need not wait)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        # Batches under way finish their transaction and hand their commands to tasks.
        await asyncio.gather(*(consumer.stop(grace) for consumer in self._consumers))
        self._consumers = []
        if self._inflight:
            remaining = max(0.0, deadline - loop.time())
            _, pending = await asyncio.wait(set(self._inflight), timeout=remaining)
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

    async def _handle_batch(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Claim, run and record what has arrived in one transaction (one commit for the lot),
        then let each command be answered and acked on its own, so that publishing overlaps
        the next batch. Copies of one invocation, transactional steps, commands that were not
        claimed, slow bodies and a batch that failed as a whole go on one by one (`_settle`)."""
        publisher = self._require_publisher()
        batch: list[_Delivery] = []
        alone: list[_Delivery] = []
        keys: set[InvocationKey] = set()
        for message in messages:
            try:
                command, definition = self._parse(message)
            except InvalidCommand as exc:
                await dead_letter(publisher, self._topology.dead_letter_exchange, message, str(exc))
                continue
            delivery = _Delivery(message, command, definition)
            key = invocation_key(command)
            # One statement cannot claim a row twice: a copy meets the first one's outcome.
            # Transactional bodies would run one after another on the batch's connection: each
            # gets a transaction of its own instead, so that slow ones run side by side.
            (alone if key in keys or definition.transactional else batch).append(delivery)
            keys.add(key)
        firsts: list[_Attempt | None]
        try:
            firsts = list(await self._run([(d.command, d.definition) for d in batch]))
        except asyncio.CancelledError:
            for delivery in batch:
                with contextlib.suppress(Exception):
                    await delivery.message.nack(requeue=True)
            raise
        except Exception:
            log.warning("a batch of %d command(s) failed; going on one by one", len(batch))
            firsts = [None] * len(batch)
        for delivery, first in zip([*batch, *alone], [*firsts, *[None] * len(alone)], strict=True):
            self._spawn(self._settle(delivery, first), delivery.message)

    def _spawn(self, work: Coroutine[Any, Any, None], message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(work, name=f"step:{message.message_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _settle(self, delivery: _Delivery, first: _Attempt | None) -> None:
        """Take the command to an answer and ack it; `first`: the outcome of a claim already
        attempted for it."""
        message = delivery.message
        try:
            await self._process(delivery.command, delivery.definition, first)
        except asyncio.CancelledError:
            if isinstance(first, _Slow):
                first.body.cancel()
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

    async def _process(
        self, command: StepCommand, definition: StepDefinition, first: _Attempt | None = None
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._config.duplicate_wait
        delay = 0.05
        attempt = first
        while True:
            if attempt is None:
                (attempt,) = await self._run([(command, definition)])
            settled: Invocation | _NotClaimed | None = (
                await self._finish_under_lease(command, attempt.body)
                if isinstance(attempt, _Slow)
                else attempt
            )
            attempt = None  # from here on, every look claims afresh
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

    async def _run(self, items: Sequence[tuple[StepCommand, StepDefinition]]) -> list[_Attempt]:
        """Claim the invocations of `items` (distinct ones) and run them, in one transaction;
        for each, the recorded outcome, `_NOT_CLAIMED` if its row would not be claimed, or
        `_Slow` for a body still running when the transaction ended.

        While the bodies are quick (`inline_budget`), or transactional, claims and outcomes
        share the transaction: until it commits, an uncommitted claim row is the lease — a
        duplicate delivery waits on its lock, and a crash leaves no claim behind to wait out.
        Transactional bodies run one after another in savepoints of it (their writes commit
        with their success); the others run concurrently meanwhile. A non-transactional body
        still running after `inline_budget` has its claim committed as a lease and finishes
        under renewal (`_finish_under_lease`), so that no transaction stays open for long."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        budget_ends = loop.time() + self._config.inline_budget
        results: list[_Attempt] = [_NOT_CLAIMED] * len(items)
        bodies: dict[int, asyncio.Future[_Succeeded | ErrorInfo]] = {}
        async with self._pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                claimed = await self._store.claim_many(conn, [command for command, _ in items])
                if not claimed:
                    await transaction.rollback()
                    return results
                mine = [i for i, (c, _) in enumerate(items) if invocation_key(c) in claimed]
                outcomes = await self._run_bodies(conn, items, mine, bodies, budget_ends)
                recorded = await self._record(
                    conn, [(items[i][0], outcome) for i, outcome in outcomes.items()]
                )
                # Commits the outcomes, and the claims of slow bodies as their leases.
                await transaction.commit()
            except BaseException:
                for body in bodies.values():
                    body.cancel()
                if conn.is_in_transaction():
                    with contextlib.suppress(Exception):
                        await transaction.rollback()
                raise
        for i in mine:
            command = items[i][0]
            if i in outcomes:
                # Missing only if the lease was lost, which a held row lock rules out; the
                # caller then looks at the row again.
                results[i] = recorded.get(invocation_key(command), _NOT_CLAIMED)
            else:
                results[i] = _Slow(bodies[i])
        return results

    async def _run_bodies(
        self,
        conn: DbConnection,
        items: Sequence[tuple[StepCommand, StepDefinition]],
        mine: Sequence[int],
        bodies: dict[int, asyncio.Future[_Succeeded | ErrorInfo]],
        budget_ends: float,
    ) -> dict[int, _Succeeded | ErrorInfo]:
        """Run the claimed `items[i]` for i in `mine`; the outcomes of those done by
        `budget_ends` (transactional ones always). The others stay running in `bodies`."""
        for i in mine:
            command, definition = items[i]
            if not definition.transactional:
                bodies[i] = asyncio.ensure_future(self._call(command, definition, None))
        outcomes: dict[int, _Succeeded | ErrorInfo] = {}
        for i in mine:
            command, definition = items[i]
            if definition.transactional:
                outcomes[i] = await self._call_in_savepoint(command, definition, conn)
        if bodies:
            await asyncio.wait(
                bodies.values(), timeout=budget_ends - asyncio.get_running_loop().time()
            )
        outcomes.update((i, body.result()) for i, body in bodies.items() if body.done())
        return outcomes

    async def _finish_under_lease(
        self, command: StepCommand, body: asyncio.Future[_Succeeded | ErrorInfo]
    ) -> Invocation | None:
        try:
            async with self._lease(command):
                outcome = await body
            recorded = await self._record(self._pool, [(command, outcome)])
            return recorded.get(invocation_key(command))
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
        self,
        db: DbConnection | asyncpg.Pool[Any],
        outcomes: Sequence[tuple[StepCommand, _Succeeded | ErrorInfo]],
    ) -> dict[InvocationKey, Invocation]:
        """Record outcomes of invocations this worker holds; the ones recorded, by key (one
        missing had its lease lost)."""
        if not outcomes:
            return {}
        return await self._store.settle_many(
            db,
            [
                (
                    command,
                    outcome.output if isinstance(outcome, _Succeeded) else None,
                    outcome if isinstance(outcome, ErrorInfo) else None,
                )
                for command, outcome in outcomes
            ],
        )

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
