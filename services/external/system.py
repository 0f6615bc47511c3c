"""The external system: consume requests, reply to each once (by a deterministic message id)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aio_pika.exceptions import PublishError

from relayflow.amqp import OutgoingMessage, Publisher, dead_letter, quietly
from relayflow.contracts import ExternalReply, ExternalRequest, decode
from relayflow.topology import Topology

log = logging.getLogger(__name__)


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
    retry_backoff: float = 1.0


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
        self._channel: AbstractChannel | None = None
        self._consumer: tuple[AbstractQueue, str] | None = None
        self._inflight: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._publisher = await Publisher.open(self._connection)
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

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._handle(message))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    def _require_publisher(self) -> Publisher:
        if self._publisher is None:
            raise RuntimeError("ExternalSystem.start() has not been called")
        return self._publisher

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        publisher = self._require_publisher()
        try:
            request = decode(message.body)
        except ValueError as exc:
            reason = f"not a valid message: {exc}"
        else:
            if isinstance(request, ExternalRequest):
                await self._answer(message, request)
                return
            reason = f"expected an ExternalRequest, got a {request.type}"
        await dead_letter(publisher, self._topology.dead_letter_exchange, message, reason)

    async def _answer(self, message: AbstractIncomingMessage, request: ExternalRequest) -> None:
        publisher = self._require_publisher()
        try:
            if self._config.reply_delay:
                await asyncio.sleep(self._config.reply_delay)
            reply = reply_to(request)
            await publisher.publish(
                OutgoingMessage.of(
                    reply,
                    exchange=self._topology.exchange,
                    routing_key=request.reply_to,
                    correlation_id=request.correlation_id,
                )
            )
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            raise
        except PublishError as exc:
            # The broker returned the reply as unroutable: replyTo names no bound queue, and
            # trying again will not change that.
            await dead_letter(
                publisher,
                self._topology.dead_letter_exchange,
                message,
                f"reply to {request.reply_to!r} could not be delivered: {exc!r}",
            )
            return
        except Exception:
            log.exception("could not reply to %s; handing it back", message.message_id)
            await asyncio.sleep(self._config.retry_backoff)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
            return
        with contextlib.suppress(Exception):
            await message.ack()
