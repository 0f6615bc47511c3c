"""The external system: consume requests, reply to each once (by a deterministic message id)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import PublishError

from relayflow import tracing
from relayflow.amqp import Backoff, OutgoingMessage, Publisher, Settler, quietly
from relayflow.amqp.senders import Senders
from relayflow.contracts import ExternalReply, ExternalRequest, decode
from relayflow.topology import SIGNAL_KEY, Topology


def ticket_id_for(correlation_id: str) -> str:
    """The same request always gets the same ticket, however often it is delivered."""
    return "T-" + hashlib.sha256(correlation_id.encode()).hexdigest()[:12].upper()


def reply_to(request: ExternalRequest) -> ExternalReply:
    return ExternalReply(
        message_id=f"reply:{request.correlation_id}",
        workflow_id=request.workflow_id,
        correlation_id=request.correlation_id,
        payload={
            "ticketId": ticket_id_for(request.correlation_id),
            "status": "accepted",
            "receivedAt": datetime.now(UTC).isoformat(),
        },
    )


@dataclass(frozen=True, slots=True)
class ExternalConfig:
    reply_delay: float = 0.0
    prefetch: int = 64
    # Pause before handing a request back after an error, doubling per redelivery up to the max.
    retry_backoff: float = 1.0
    retry_backoff_max: float = 30.0
    # Who may send requests (`relayflow.amqp.senders`); empty: anyone.
    senders: Senders = field(default_factory=Senders)


class ExternalSystem:
    def __init__(
        self,
        *,
        connection: AbstractRobustConnection,
        topology: Topology,
        config: ExternalConfig | None = None,
    ) -> None:
        self._connection = connection
        self._topology = topology
        self._config = config or ExternalConfig()
        self._publisher: Publisher | None = None
        self._settler: Settler | None = None
        self._channel: AbstractChannel | None = None
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._publisher = await Publisher.open(self._connection)
        self._settler = Settler(
            self._publisher,
            self._topology.dead_letter_exchange,
            backoff=Backoff(
                first=self._config.retry_backoff, longest=self._config.retry_backoff_max
            ),
        )
        self._channel = await self._connection.channel()
        await self._channel.set_qos(prefetch_count=self._config.prefetch)
        queue = await self._channel.get_queue(self._topology.external_queue)
        self._consumer = (queue, await queue.consume(self._on_message))

    async def stop(self, *, grace: float = 10.0) -> None:
        if self._consumer is not None:
            queue, tag = self._consumer
            await quietly(
                f"cancelling the consumer of {queue.name}", functools.partial(queue.cancel, tag)
            )
            self._consumer = None
        if self._inflight:
            _, pending = await asyncio.wait(set(self._inflight), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._channel is not None and not self._channel.is_closed:
            await quietly("closing the consumer channel", self._channel.close)
        if self._publisher is not None:
            await self._publisher.close()

    @property
    def consuming(self) -> bool:
        """Its consumer attached: started, not stopped, its channel open."""
        return self._consumer is not None and not self._consumer[0].channel.is_closed

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._handle(message))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _require_settler(self) -> tuple[Publisher, Settler]:
        if self._publisher is None or self._settler is None:
            raise RuntimeError("ExternalSystem.start() has not been called")
        return self._publisher, self._settler

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        publisher, settler = self._require_settler()
        async with settler.settling(message):
            try:
                request = decode(message.body)
            except ValueError as exc:
                await settler.dead_letter(message, f"not a valid message: {exc}")
                return
            if not isinstance(request, ExternalRequest):
                await settler.dead_letter(
                    message, f"expected an ExternalRequest, got a {request.type}"
                )
                return
            refused = self._config.senders.refusal(request.type, message.user_id) or (
                _unanswerable(request)
            )
            if refused is not None:
                await settler.dead_letter(message, refused)
                return
            if self._config.reply_delay:
                await asyncio.sleep(self._config.reply_delay)
            reply = OutgoingMessage.of(
                reply_to(request),
                exchange=self._topology.exchange,
                routing_key=request.reply_to,
                correlation_id=request.correlation_id,
            )
            try:
                with self._traced(message, request, reply) as reply:
                    await publisher.publish(reply)
            except PublishError as exc:
                # The broker returned the reply as unroutable: replyTo names no bound queue, and
                # trying again will not change that.
                await settler.dead_letter(
                    message, f"reply to {request.reply_to!r} could not be delivered: {exc!r}"
                )

    @contextlib.contextmanager
    def _traced(
        self, message: AbstractIncomingMessage, request: ExternalRequest, reply: OutgoingMessage
    ) -> Iterator[OutgoingMessage]:
        """While tracing, the reply continues the request's trace, as a system that takes part
        in tracing does: a `process` span for the request, a `send` span for the reply."""
        if not tracing.on:
            yield reply
            return
        process = tracing.process(
            message, self._topology.external_queue, request.message_id, request.workflow_id
        )
        send = tracing.sending(
            process, reply.exchange, reply.routing_key, reply.message_id, request.workflow_id
        )
        try:
            yield replace(reply, traceparent=tracing.traceparent_of(send))
        finally:
            send.end()
            process.end()


def _unanswerable(request: ExternalRequest) -> str | None:
    """A reply goes to the orchestrator, as a signal of the workflow that asked: any other
    routing key would let a request make this system publish wherever it names."""
    if request.reply_to != SIGNAL_KEY:
        return (
            f"replyTo must be {SIGNAL_KEY!r} (the orchestrator's signals), not {request.reply_to!r}"
        )
    return None
