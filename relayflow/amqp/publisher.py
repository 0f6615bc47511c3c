"""Confirmed, mandatory publishing: a message counts as sent only once the broker has routed it
to a queue and confirmed it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractRobustConnection
from pamqp.commands import Basic

from relayflow.amqp.connection import quietly
from relayflow.contracts import BaseMessage, encode
from relayflow.tracing import TRACEPARENT

log = logging.getLogger(__name__)

_PERSISTENT = aio_pika.DeliveryMode.PERSISTENT.value
_TRANSIENT = aio_pika.DeliveryMode.NOT_PERSISTENT.value


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    type: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    # False for broadcasts (the events fanout): no queue may be listening yet, so an unrouted
    # message is not an error, and since what they carry is also in PostgreSQL they are sent
    # transient, sparing the broker a disk write. Work messages are mandatory and persistent.
    mandatory: bool = True
    # The W3C trace context it continues (`relayflow.tracing`), sent as the `traceparent` header.
    traceparent: str | None = None
    # The message `body` encodes, when it was made from one (`of`): what a consumer in this
    # process takes without decoding the body again (`relayflow.steps.eager`). Not sent.
    source: BaseMessage | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(
        cls,
        message: BaseMessage,
        *,
        exchange: str,
        routing_key: str,
        correlation_id: str | None = None,
        mandatory: bool = True,
        traceparent: str | None = None,
    ) -> OutgoingMessage:
        return cls(
            exchange=exchange,
            routing_key=routing_key,
            body=encode(message),
            message_id=message.message_id,
            type=str(getattr(message, "type", type(message).__name__)),
            headers={"x-schema-version": message.schema_version},
            correlation_id=correlation_id,
            mandatory=mandatory,
            traceparent=traceparent,
            source=message,
        )


def broker_user(connection: AbstractConnection) -> str:
    """The user `connection` authenticated as (aio-pika's default when the URL names none)."""
    url = connection.url if isinstance(connection, aio_pika.Connection) else None
    return (url.user if url is not None else None) or "guest"


# What a publish meets while its connection is lost or being restored (maybe on another node):
# it is tried again. A publish tried again may reach the queue twice; every consumer skips a
# message id it has seen.
_CONNECTION_LOST: tuple[type[BaseException], ...] = (
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.AMQPConnectionError,
    ConnectionError,
    # A confirm the lost connection cancels, as aiormq does when it gives a stuck one up.
    asyncio.CancelledError,
)
_TRIED_AGAIN: tuple[type[BaseException], ...] = (
    *_CONNECTION_LOST,
    aiormq.exceptions.DeliveryError,
    # Not confirmed: the 3.10 trouble above, when the leader's node hung rather than died.
    TimeoutError,
)
_LEAST_ATTEMPT = 1.0
# Between two tries; and how long a closed channel on a live connection is left to aio-pika to
# restore before the publisher opens a fresh one.
_RETRY_PAUSE = 0.2
_RESTORE_GRACE = 2.0


def _nacked(exc: BaseException) -> bool:
    """The broker refused the message (Basic.Nack; not an unroutable one's return)."""
    return (
        isinstance(exc, aiormq.exceptions.DeliveryError)
        and not isinstance(exc, aiormq.exceptions.PublishError)
        and isinstance(exc.frame, Basic.Nack)
    )


class Publisher:
    """Publishes on one confirm channel. aio-pika pipelines confirms, so publishing a batch
    concurrently costs one round trip, not one per message.

    Frames go straight to the channel's aiormq layer, as aio-pika's `Exchange.publish` itself
    does, but without building an `aio_pika.Message` and its properties on the way: about 14%
    of the CPU of a confirmed publish (measured), on every command, result and start we send.

    Opened on a connection (`open`), a publisher outlasts a failover: a publish is tried again
    until its timeout, on a fresh channel where the old one cannot serve —
    - the connection was lost: aio-pika restores the channel once it has reconnected, to
      whichever node; one still closed a moment after (its restore failed, or the broker closed
      it) is replaced;
    - the broker nacked it: RabbitMQ 3.10 nacks every publish of a channel to a quorum queue
      whose leader's node died before the channel first reached the queue — for as long as
      the channel lives (measured: over 150 s, the queue long led from another node), while a
      channel opened after the election is confirmed at once. A nack for another reason
      (no quorum: most nodes down) is answered the same way, until the timeout;
    - no confirm came: when the leader's node hung rather than died, the same channel is not
      nacked but never answered. Each attempt gets half the time left (at least a second), so
      a silent channel is replaced and the publish tried again within the timeout."""

    def __init__(
        self,
        channel: AbstractChannel,
        *,
        timeout: float = 10.0,
        user_id: str | None = None,
        connection: AbstractConnection | None = None,
    ) -> None:
        self._channel = channel
        self._timeout = timeout
        # The broker user we connected as, on every message: RabbitMQ refuses any other value,
        # so consumers can tell who sent what (`relayflow.amqp.senders`).
        self._user_id = user_id
        self._connection = connection
        self._closed_seen: float | None = None
        self._renewing = asyncio.Lock()
        self._closing = False

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, *, confirm_timeout: float = 10.0
    ) -> Publisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(
            channel, timeout=confirm_timeout, user_id=broker_user(connection), connection=connection
        )

    async def publish(self, message: OutgoingMessage) -> None:
        """Raises `aio_pika.exceptions.DeliveryError`/`PublishError` when the broker refuses or
        cannot route the message, `asyncio.TimeoutError` when it does not confirm in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout
        while True:
            used = self._channel
            remaining = deadline - loop.time()
            # An attempt gets half of what is left (at least a second): a channel that stays
            # silent has time to be replaced and the publish tried once more.
            within = (
                max(remaining / 2, min(remaining, _LEAST_ATTEMPT))
                if self._connection
                else remaining
            )
            try:
                # Bounded as a whole: a robust channel's underlay waits for the reconnection.
                async with asyncio.timeout(max(within, 0.1)):
                    await self._send(await self._underlay(), message, within)
            except _TRIED_AGAIN as exc:
                if isinstance(exc, asyncio.CancelledError) and _cancelled():
                    raise
                silent = isinstance(exc, TimeoutError)
                lost = not (silent or isinstance(exc, aiormq.exceptions.DeliveryError))
                if not (lost or silent or _nacked(exc)):
                    raise
                if self._connection is None or self._closing or loop.time() >= deadline:
                    if isinstance(exc, asyncio.CancelledError):
                        raise aiormq.exceptions.ChannelInvalidStateError(
                            "the connection was lost"
                        ) from None
                    raise
                if silent and self._connection.connected.is_set():
                    await self._renew(used, "a publish was not confirmed in time", deadline)
                elif not (lost or silent):
                    await self._renew(used, "the broker nacked a publish", deadline)
                await asyncio.sleep(min(_RETRY_PAUSE, max(deadline - loop.time(), 0)))
            else:
                return

    async def _underlay(self) -> aiormq.abc.AbstractChannel:
        if not self._channel.is_closed:
            self._closed_seen = None
            return await self._channel.get_underlay_channel()
        connection = self._connection
        if connection is None or connection.is_closed or not connection.connected.is_set():
            raise aiormq.exceptions.ChannelInvalidStateError(f"{self._channel!r} closed")
        loop = asyncio.get_running_loop()
        if self._closed_seen is None:
            self._closed_seen = loop.time()
        if loop.time() - self._closed_seen < _RESTORE_GRACE:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{self._channel!r} being restored")
        await self._renew(
            self._channel, "the channel stayed closed after a reconnection", loop.time() + 10
        )
        return await self._channel.get_underlay_channel()

    async def _renew(self, used: AbstractChannel, why: str, deadline: float) -> None:
        """Replace `used` by a fresh channel, once (concurrent publishes saw the same); an
        open that outlasts `deadline` raises TimeoutError."""
        assert self._connection is not None
        loop = asyncio.get_running_loop()
        async with self._renewing:
            if self._channel is not used or self._closing:
                return
            log.warning("%s; publishing on a fresh channel", why)
            async with asyncio.timeout(max(deadline - loop.time(), 0.1)):
                self._channel = await self._connection.channel(
                    publisher_confirms=True, on_return_raises=True
                )
            self._closed_seen = None
        await quietly("closing the old publishing channel", used.close)

    async def _send(
        self, channel: aiormq.abc.AbstractChannel, message: OutgoingMessage, within: float
    ) -> None:
        within = max(within, 0.1)
        headers = dict(message.headers)
        if message.traceparent is not None:
            headers[TRACEPARENT] = message.traceparent
        await channel.basic_publish(
            message.body,
            exchange=message.exchange,
            routing_key=message.routing_key,
            properties=Basic.Properties(
                content_type="application/json",
                delivery_mode=_PERSISTENT if message.mandatory else _TRANSIENT,
                headers=headers,
                message_id=message.message_id,
                message_type=message.type,
                correlation_id=message.correlation_id,
                user_id=self._user_id,
            ),
            mandatory=message.mandatory,
            timeout=within,
        )

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        """Publish all, concurrently; the result says, per message, what went wrong if anything."""
        results = await asyncio.gather(
            *(self.publish(message) for message in messages), return_exceptions=True
        )
        return [result if isinstance(result, BaseException) else None for result in results]

    async def close(self) -> None:
        self._closing = True
        if not self._channel.is_closed:
            await quietly("closing the publisher's channel", self._channel.close)


def _cancelled() -> bool:
    """True when the running task itself is being cancelled (not a confirm that the lost
    connection cancelled)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
