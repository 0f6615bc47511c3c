"""The step worker: the broker's side of step invocations.

It consumes the step queues in batches of what has arrived (`BatchConsumer`), decodes each
delivery — one that is not a `StepCommand` for a step this worker serves is dead-lettered with
the reason on its first delivery — and hands each batch's commands to the `InvocationEngine`
(claim, run, lease, record: `relayflow.steps.engine`). Then, each command on its own task so that
publishing overlaps the next batch, it publishes the result (confirmed, mandatory) and acks.
Whatever else goes wrong (database or broker unreachable) hands the delivery back after a
backoff (`relayflow.amqp.settle`); the queue's delivery limit is the backstop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractRobustConnection

from relayflow import tracing
from relayflow.amqp import Backoff, BatchConsumer, OutgoingMessage, Publisher, Settler, quietly
from relayflow.amqp.consumer import Batches
from relayflow.amqp.senders import Senders
from relayflow.contracts import Envelope, StepCommand, StepResult, decode
from relayflow.hops import HopTrace
from relayflow.steps.advance import Advancer
from relayflow.steps.eager import EagerDelivery, OutboxEntry
from relayflow.steps.engine import EngineConfig, InvocationEngine, Started
from relayflow.steps.registry import StepRegistry
from relayflow.steps.store import InvocationStore
from relayflow.topology import RESULT_KEY, Topology, step_key

if TYPE_CHECKING:  # only while tracing
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

T = TypeVar("T")
Row = TypeVar("Row", bound=OutboxEntry)


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    # Unacknowledged deliveries per step queue: how many invocations run at once per step.
    prefetch: int = 32
    # How long a claim holds an invocation without renewal before another worker may take it.
    lease_seconds: float = 30.0
    # `EngineConfig`'s.
    poll_max: float = 1.0
    duplicate_wait: float = 300.0
    inline_budget: float = 0.2
    # Pause before handing a delivery back after an outage, doubling with each redelivery up to
    # the max (`relayflow.amqp.Backoff`).
    retry_backoff: float = 1.0
    retry_backoff_max: float = 30.0
    # Commands of one step queue claimed, run and recorded in one transaction at most, and how
    # many such batches run at once per queue. A batch takes what queued up while the others
    # were busy, so at low load it is one command and adds no wait; one batch at a time makes
    # the largest batches (measured: fewest commits and least CPU under load). A batch waits for
    # its quick bodies (at most `inline_budget`) before it commits. Transactional steps are not
    # batched.
    batch_size: int = 32
    batch_workers: int = 1
    # Connections kept in a transaction opened ahead for the next batches (`InvocationStore`);
    # None: as many as batches can run at once (step queues x `batch_workers`). At most half
    # the pool, so that leases and transactional steps always find one.
    open_ahead: int | None = None
    # Run the commands this worker's own advance produces for steps it serves in process,
    # instead of through the broker (`relayflow.steps.eager`), up to `prefetch` at once.
    eager: bool = True

    @property
    def engine(self) -> EngineConfig:
        return EngineConfig(
            inline_budget=self.inline_budget,
            poll_max=self.poll_max,
            duplicate_wait=self.duplicate_wait,
        )

    @property
    def backoff(self) -> Backoff:
        return Backoff(first=self.retry_backoff, longest=self.retry_backoff_max)


def _started(resource: T | None) -> T:
    if resource is None:
        raise RuntimeError("StepWorker.start() has not been called")
    return resource


def new_worker_id() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(4)}"


class InvalidCommand(Exception):
    """The delivery cannot be a command for this worker; the reason goes with the dead letter."""


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
        hops: HopTrace | None = None,
        advancer: Advancer | None = None,
        senders: Senders | None = None,
    ) -> None:
        self._hops = hops or HopTrace()
        # Only an engine's commands are run (`relayflow.amqp.senders`).
        self._senders = senders or Senders()
        self._steps = steps
        self._connection = connection
        self._topology = topology
        self._config = config or WorkerConfig()
        self.worker_id = worker_id or new_worker_id()
        open_ahead = self._config.open_ahead
        if open_ahead is None:
            open_ahead = len(steps) * self._config.batch_workers
        self._store = InvocationStore(
            pool,
            owner=self.worker_id,
            lease_seconds=self._config.lease_seconds,
            open_ahead=min(open_ahead, pool.get_max_size() // 2),
        )
        self._engine = InvocationEngine(
            steps,
            self._store,
            publish=self._publish_from_step,
            config=self._config.engine,
            hops=self._hops,
            advancer=advancer,
        )
        self._publisher: Publisher | None = None
        self._settler: Settler | None = None
        self._channel: AbstractChannel | None = None
        self._consumers: list[BatchConsumer] = []
        # The routing keys of the commands of the steps served, while taking handed-over ones;
        # those go into batches of their own, whatever their step (one transaction for all
        # that came together, as for a queue's deliveries).
        self._eager_keys: frozenset[str] = frozenset()
        self._eager_batches = Batches(
            "eager", self._handle_batch, max_batch=self._config.batch_size, workers=1
        )
        self._inflight: set[asyncio.Task[None]] = set()
        # Handed-over commands not settled yet, and where a settled one's row goes.
        self._eager_held = 0
        # (Any: the relay's own row type, which the step worker does not need to know.)
        self._eager_done: Callable[[Any], None] | None = None
        self._eager_back: Callable[[Any], None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._publisher = await Publisher.open(self._connection)
        self._settler = Settler(
            self._publisher, self._topology.dead_letter_exchange, backoff=self._config.backoff
        )
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
        if self._config.eager:
            await self._eager_batches.start()
            self._eager_keys = frozenset(step_key(definition.name) for definition in self._steps)
        log.info("serving steps %s as %s", ", ".join(self._steps.names()), self.worker_id)

    async def stop(self, *, grace: float = 10.0) -> None:
        """Stop taking commands; let those in flight finish within `grace` seconds, then hand
        the rest back to the broker (their leases released so a redelivery need not wait)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        self._eager_keys = frozenset()  # nothing more is handed over: the relay publishes it
        # Batches under way finish their transaction and hand their commands to tasks.
        await asyncio.gather(
            *(consumer.stop(grace) for consumer in [*self._consumers, self._eager_batches])
        )
        self._consumers = []
        if self._inflight:
            remaining = max(0.0, deadline - loop.time())
            _, pending = await asyncio.wait(set(self._inflight), timeout=remaining)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("handing %d unfinished command(s) back", len(pending))
                await asyncio.gather(*pending, return_exceptions=True)
        await self._store.close()
        if self._channel is not None and not self._channel.is_closed:
            await quietly("closing the consumer channel", self._channel.close)
        if self._publisher is not None:
            await self._publisher.close()

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def consuming(self) -> bool:
        """Every step queue's consumer attached (the readiness probe's "consumer")."""
        return bool(self._consumers) and all(consumer.consuming for consumer in self._consumers)

    # -- commands handed over in process ---------------------------------------------------

    def hand_over_with(
        self, delivered: Callable[[Row], None], returned: Callable[[Row], None]
    ) -> None:
        """Take commands handed over (`take`); a settled one's row goes to `delivered` (acked)
        or `returned` (handed back: to publish). The relay's `divert` is the usual caller."""
        self._eager_done, self._eager_back = delivered, returned

    def take(self, rows: Sequence[Row]) -> list[Row]:
        """Take the step commands among `rows` that this worker serves, while it holds fewer
        than `prefetch` of them, into its next batch of handed-over commands; returns the rest,
        to publish (`relayflow.steps.eager`)."""
        if self._eager_done is None or not self._eager_keys:
            return list(rows)
        rest: list[Row] = []
        for row in rows:
            message = row.message
            if (
                message.routing_key not in self._eager_keys
                or message.type != "StepCommand"
                or message.exchange != self._topology.exchange
                or self._eager_held >= self._config.prefetch
            ):
                rest.append(row)
                continue
            # The command the row was made from; a row read back from PostgreSQL has only its body.
            command = message.source if message.source is not None else decode(message.body)
            assert isinstance(command, StepCommand)
            delivery = EagerDelivery(
                row,
                command,
                done=lambda row: self._settle_eager(row, delivered=True),
                back=lambda row: self._settle_eager(row, delivered=False),
            )
            if not self._eager_batches.offer(delivery):
                rest.append(row)
                continue
            self._eager_held += 1
            self._hops.record("step.handed", command.message_id)
        return rest

    def _settle_eager(self, row: OutboxEntry, *, delivered: bool) -> None:
        self._eager_held -= 1
        to = self._eager_done if delivered else self._eager_back
        assert to is not None
        to(row)

    # -- deliveries ------------------------------------------------------------------------

    def _parse(self, message: AbstractIncomingMessage) -> StepCommand:
        if isinstance(message, EagerDelivery):
            # Written by this process's own transaction: nothing to check.
            return message.command
        try:
            decoded = decode(message.body)
        except ValueError as exc:
            raise InvalidCommand(f"not a valid message: {exc}") from exc
        if not isinstance(decoded, StepCommand):
            raise InvalidCommand(f"expected a StepCommand, got a {decoded.type}")
        refused = self._senders.refusal(decoded.type, message.user_id)
        if refused is not None:
            raise InvalidCommand(refused)
        body = decoded.body or decoded.step_name
        if self._steps.get(body) is None:
            raise InvalidCommand(
                f"this step service does not serve step body {body!r} "
                f"(it serves {', '.join(self._steps.names())})"
            )
        return decoded

    async def _handle_batch(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        """Hand what has arrived to the engine as one batch (one transaction, one commit), then
        let each command be answered and acked on its own task."""
        self._hops.record_each("step.delivered", messages)
        settler = _started(self._settler)
        deliveries: list[tuple[AbstractIncomingMessage, StepCommand]] = []
        for message in messages:
            try:
                deliveries.append((message, self._parse(message)))
            except InvalidCommand as exc:
                await settler.dead_letter(message, str(exc))
        if tracing.on:
            for message, command in deliveries:
                self._trace(message, command)
        try:
            started = await self._engine.start([command for _, command in deliveries])
        except asyncio.CancelledError:
            for message, _ in deliveries:
                await settler.hand_back(message)
            raise
        for (message, _), one in zip(deliveries, started, strict=True):
            self._spawn(self._answer(message, one), message)

    def _spawn(self, work: Coroutine[Any, Any, None], message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(work, name=f"step:{message.message_id}")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _answer(self, message: AbstractIncomingMessage, started: Started) -> None:
        """Publish the command's result, then ack; a failure hands the delivery back after the
        backoff, and the redelivery finds the recorded outcome (commit, publish, then ack). A
        result the batch's transaction applied to its workflow is not published: the ack
        follows at once (a redelivery would find the result in the orchestrator's inbox)."""
        command = started.command
        try:
            async with _started(self._settler).settling(message):
                result = await self._engine.finish(started)
                if result is not None and not started.advanced:
                    await self._publish_result(result, command.message_id)
        finally:
            if tracing.on:
                tracing.finish(command.message_id)

    def _trace(self, message: AbstractIncomingMessage, command: StepCommand) -> None:
        """The command's `process` span: its body's spans and its result's continue it."""
        queue = self._topology.step_queue(command.body or command.step_name)
        span = tracing.process(
            message,
            queue,
            command.message_id,
            command.workflow_id,
            step=command.step_name,
            step_key=command.step_key,
            attempt=command.attempt,
        )
        tracing.begin(command.message_id, span)

    # -- publishing ------------------------------------------------------------------------

    async def _publish_result(self, result: StepResult, command_id: str) -> None:
        message = OutgoingMessage.of(
            result, exchange=self._topology.exchange, routing_key=RESULT_KEY
        )
        self._hops.record("step.publish", result.message_id, result.workflow_id, result.step_name)
        await self._send(message, tracing.active(command_id) if tracing.on else None)
        self._hops.record("step.confirmed", result.message_id)

    async def _send(self, message: OutgoingMessage, parent: Span | None) -> None:
        """Publish, within a `send` span under `parent` while tracing."""
        if not tracing.on:
            await _started(self._publisher).publish(message)
            return
        span = tracing.sending(parent, message.exchange, message.routing_key, message.message_id)
        try:
            await _started(self._publisher).publish(
                replace(message, traceparent=tracing.traceparent_of(span))
            )
        finally:
            span.end()

    async def _publish_from_step(
        self, message: Envelope, routing_key: str, correlation_id: str | None
    ) -> None:
        outgoing = OutgoingMessage.of(
            message,
            exchange=self._topology.exchange,
            routing_key=routing_key,
            correlation_id=correlation_id,
        )
        # A body's publish continues the body's span (the current one, in the body's task).
        await self._send(outgoing, tracing.current() if tracing.on else None)
