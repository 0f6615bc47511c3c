"""The orchestrator's transport: decode deliveries, apply them in one transaction, commit, then
settle each delivery (ack, or dead-letter with a reason) and hand the outbox to the relay."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from aio_pika.abc import AbstractIncomingMessage
from pydantic import TypeAdapter, ValidationError

from relayflow import metrics, tracing
from relayflow.amqp import Backoff, Publisher, dead_letter
from relayflow.amqp.senders import Senders
from relayflow.amqp.settle import delivery_count, hand_back
from relayflow.contracts import (
    DEFAULT_MAX_INPUT_BYTES,
    CancelWorkflow,
    OrchestratorInput,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    body_may_be_unstorable,
    describe_path,
    encoded_size,
    unstorable,
)
from relayflow.hops import HopTrace
from relayflow.machine import Ignored, Rejected, TimerFired
from relayflow.orchestration import store
from relayflow.orchestration.processor import Deferred, Delivered, Processor
from relayflow.orchestration.relay import OutboxRelay
from relayflow.topology import Topology

log = logging.getLogger(__name__)

_input_adapter: TypeAdapter[OrchestratorInput] = TypeAdapter(OrchestratorInput)

# A deferred input (a signal ahead of its workflow's start) comes back after 1, 2, 4, 8, 16 and
# 30 s by default, then is dead-lettered: a start a minute late is lost or stuck, not slow. Well
# inside the quorum queue's delivery limit.
DEFER_LONGEST = 30.0
# On stop, how long the acks still waiting on the relay's confirms may take (part of the
# shutdown that deploy/k8s's terminationGracePeriodSeconds must cover).
ACKS_WAIT = 5.0

# Errors that one transaction may hit through no fault of its input; trying again resolves them.
_TRANSIENT = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
# Errors that say the input itself cannot be stored (bad value, broken constraint).
_INPUT_FAULTS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


@dataclass(frozen=True, slots=True)
class _Delivery:
    message: AbstractIncomingMessage
    input: OrchestratorInput

    @property
    def message_id(self) -> str:
        return self.input.message_id


class Orchestrator:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        processor: Processor,
        relay: OutboxRelay,
        publisher: Publisher,
        topology: Topology,
        *,
        max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES,
        defer_first: float = 1.0,
        defer_limit: int = 6,
        hops: HopTrace | None = None,
        senders: Senders | None = None,
    ) -> None:
        self._hops = hops or HopTrace()
        self._senders = senders or Senders()
        self._max_input_bytes = max_input_bytes
        self._defer_backoff = Backoff(first=defer_first, longest=max(defer_first, DEFER_LONGEST))
        self._defer_limit = defer_limit
        self._deferred: set[asyncio.Task[None]] = set()
        # Acks waiting for the relay to publish what their batch sent.
        self._acking: set[asyncio.Task[None]] = set()
        self._pool = pool
        self._processor = processor
        self._relay = relay
        self._publisher = publisher
        self._topology = topology

    async def handle_batch(self, messages: Sequence[AbstractIncomingMessage]) -> None:
        self._hops.record_each("orch.delivered", messages)
        deliveries: list[_Delivery] = []
        for message in messages:
            try:
                item = _input_adapter.validate_json(message.body)
            except ValidationError as exc:
                await self._dead_letter(message, f"invalid message: {_describe(exc)}")
                continue
            problem = (
                self._senders.refusal(item.type, message.user_id)
                or self._senders.tenant_refusal(item.type, _tenant_of(item), message.user_id)
                or self._unacceptable(message.body, item)
            )
            if problem is not None:
                await self._dead_letter(message, problem)
                continue
            deliveries.append(_Delivery(message, item))
        if not deliveries:
            return
        traces = self._trace(deliveries) if tracing.on else None
        try:
            await self._apply(deliveries, traces)
        except _INPUT_FAULTS:
            # One input poisons the whole transaction; find it by applying them one by one.
            log.warning("batch of %d failed on its data; isolating", len(deliveries))
            for delivery in deliveries:
                try:
                    await self._apply([delivery], traces)
                except _INPUT_FAULTS as exc:
                    await self._dead_letter(delivery.message, f"cannot be stored: {exc}")
        finally:
            for delivery in deliveries if traces is not None else ():
                tracing.finish(delivery.message_id)

    def _trace(self, deliveries: Sequence[_Delivery]) -> dict[str, str]:
        """A `process` span per delivery; the trace context each workflow's outgoing messages
        continue (of the latest of its inputs in the batch that has one)."""
        traces: dict[str, str] = {}
        queue = self._topology.orchestrator_queue
        for delivery in deliveries:
            message = delivery.message
            span = tracing.process(message, queue, delivery.message_id, delivery.input.workflow_id)
            tracing.begin(delivery.message_id, span)
            # What follows an input continues its trace when it had one (a start begins the
            # workflow's); after an input from a sender that does not trace, the workflow's own.
            if isinstance(delivery.input, StartWorkflow) or tracing.incoming(message.headers):
                traces[delivery.input.workflow_id] = tracing.traceparent_of(span)
        return traces

    def _unacceptable(self, body: bytes, item: OrchestratorInput) -> str | None:
        """What makes a schema-valid input unfit to store: text PostgreSQL refuses, or a start
        larger than the input limit the gateway applies too. Both checks cost nothing for an
        ordinary message (a byte search, a length)."""
        if body_may_be_unstorable(body):
            found = unstorable(orjson.loads(body))
            if found is not None:
                path, reason = found
                return f"cannot be stored: {describe_path(path)} {reason}"
        if isinstance(item, StartWorkflow) and len(body) > self._max_input_bytes:
            size = encoded_size(item.input)
            if size > self._max_input_bytes:
                return (
                    f"input too large: {size} bytes of JSON, the limit is "
                    f"{self._max_input_bytes} (RELAYFLOW_MAX_INPUT_BYTES)"
                )
        return None

    async def _apply(
        self, deliveries: Sequence[_Delivery], traces: Mapping[str, str] | None = None
    ) -> None:
        for attempt in range(1, 6):
            try:
                delivered = await self._transaction(deliveries, traces)
                break
            except _TRANSIENT as exc:
                log.info("transaction attempt %d hit %s; retrying", attempt, type(exc).__name__)
                await asyncio.sleep(0.01 * attempt)
        else:
            raise RuntimeError("transaction kept conflicting; handing the batch back")
        self._hops.record_each("orch.committed", deliveries)
        published = self._relay.submit(delivered.result.outbox)
        # Counted after the hand-over: the next step's command does not wait for the metrics.
        metrics.count_duplicates(delivered.fresh)
        metrics.count_events(delivered.result.events, delivered.result.states)
        applied: list[AbstractIncomingMessage] = []
        for delivery, outcome in zip(deliveries, delivered.outcomes(), strict=True):
            if isinstance(outcome, Rejected):
                if traces is not None:
                    tracing.finish(delivery.message_id, error=outcome.reason)
                await self._dead_letter(delivery.message, outcome.reason)
            elif isinstance(outcome, Deferred):
                await self._defer(delivery.message, outcome.reason)
            else:
                if isinstance(outcome, Ignored):
                    log.debug("ignored %s: %s", delivery.message.message_id, outcome.reason)
                applied.append(delivery.message)
        self._ack_once_published(published, applied)

    def _ack_once_published(
        self, published: asyncio.Future[None], messages: list[AbstractIncomingMessage]
    ) -> None:
        """Ack the batch's inputs once the broker has answered for what the batch sent (the
        commit already made the acks safe). An ack on a quorum queue is a write to the broker's
        log; sent beside the next step's command it could only compete with it. (Measured
        alone, the change is within the bench's noise; the command's slow hop was the events
        sent with it, see the relay.)"""
        if not messages:
            return
        task = asyncio.create_task(_ack_after(published, messages))
        self._acking.add(task)
        task.add_done_callback(self._acking.discard)

    async def _transaction(
        self, deliveries: Sequence[_Delivery], traces: Mapping[str, str] | None
    ) -> Delivered:
        # Outbox rows the relay has had confirmed go out with this transaction's writes (one
        # commit fewer than deleting them on their own); back to the relay if it fails.
        with self._relay.take_sent() as sent:
            async with self._pool.acquire() as conn, conn.transaction():
                delivered = await self._processor.deliver(
                    conn, [d.input for d in deliveries], sent=sent, hops=self._hops, traces=traces
                )
                self._hops.record_each("orch.written", deliveries)
        return delivered

    async def fire_due_timers(self, limit: int = 100) -> int:
        """Claim due timers and apply them; returns how many fired."""
        async with self._pool.acquire() as conn, conn.transaction():
            timers: list[TimerFired] = await store.claim_due_timers(conn, limit)
            if not timers:
                return 0
            result = await self._processor.apply(conn, timers)
        self._relay.submit(result.outbox)
        metrics.count_events(result.events, result.states)
        return len(timers)

    async def _defer(self, message: AbstractIncomingMessage, reason: str) -> None:
        """Hand `message` back after a backoff that doubles with each return; once it has come
        back `defer_limit` times (about a minute by default), dead-letter it with the reason."""
        returns = delivery_count(message)
        if returns >= self._defer_limit:
            waited = sum(self._defer_backoff.after(n) for n in range(returns))
            await self._dead_letter(
                message, f"{reason} (handed back {returns} times over {waited:.0f}s)"
            )
            return
        log.info("deferring %s: %s", message.message_id, reason)
        task = asyncio.create_task(self._hand_back_later(message))
        self._deferred.add(task)
        task.add_done_callback(self._deferred.discard)

    async def _hand_back_later(self, message: AbstractIncomingMessage) -> None:
        try:
            await asyncio.sleep(self._defer_backoff.after(delivery_count(message)))
        finally:
            await hand_back(message)

    async def stop(self) -> None:
        """Send the acks still waiting on the relay, and hand deferred deliveries back at once
        (another replica, or this one restarted, takes them)."""
        if self._acking:
            await asyncio.wait(list(self._acking), timeout=ACKS_WAIT)
        for task in list(self._deferred):
            task.cancel()
        await asyncio.gather(*self._deferred, return_exceptions=True)

    async def _dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        await dead_letter(self._publisher, self._topology.dead_letter_exchange, message, reason)


async def _ack_after(
    published: asyncio.Future[None], messages: list[AbstractIncomingMessage]
) -> None:
    await published
    for message in messages:
        try:
            await message.ack()
        except Exception as exc:
            # A channel closed meanwhile: the broker redelivers, the inbox deduplicates.
            log.info("could not ack %s: %r", message.message_id, exc)


def _describe(exc: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or '<body>'}: {error['msg']}"
        for error in exc.errors()[:10]
    ]
    return "; ".join(problems)


def _tenant_of(item: OrchestratorInput) -> str | None:
    """The tenant a start, cancel, retry or signal names (None: none named, or another kind)."""
    if isinstance(item, StartWorkflow | CancelWorkflow | RetryWorkflow | SignalWorkflow):
        return item.tenant
    return None
