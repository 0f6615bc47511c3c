"""The live-event hub: one consumer per gateway process, fanning workflow events out to the
event streams open in this process.

The hub consumes a server-named exclusive queue bound to the events fanout, so every replica
sees every event. Each stream subscribes to one workflow id and gets a bounded queue; when a
stream falls behind and its queue fills, the hub empties it and leaves a `RESYNC` marker, and
the stream replays from PostgreSQL (where every event is stored before it is published). A slow
stream therefore never holds up the consumer or the other streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from dataclasses import dataclass
from typing import Any

import orjson
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from relayflow.contracts import WorkflowEvent
from relayflow.topology import Topology

log = logging.getLogger(__name__)


class Signal(enum.Enum):
    RESYNC = "resync"  # events were dropped: read PostgreSQL
    CLOSED = "closed"  # the gateway is stopping


@dataclass(frozen=True, slots=True)
class LiveEvent:
    workflow_id: str
    seq: int
    event: str
    body: dict[str, Any]  # the WorkflowEvent wire JSON as published
    terminal: bool


Item = LiveEvent | Signal


class Subscription:
    def __init__(self, hub: EventHub, workflow_id: str, buffer: int) -> None:
        self.workflow_id = workflow_id
        self._hub = hub
        self._queue: asyncio.Queue[Item] = asyncio.Queue(maxsize=buffer)

    def offer(self, item: Item) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            # Too slow to keep up: drop what is buffered; the stream rereads PostgreSQL.
            log.debug("a stream of %s fell behind; it will replay", self.workflow_id)
            while not self._queue.empty():
                self._queue.get_nowait()
            self._queue.put_nowait(Signal.RESYNC if item is not Signal.CLOSED else item)

    async def get(self, within: float) -> Item | None:
        """The next item, or None after `within` seconds without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), within)
        except TimeoutError:
            return None

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


class EventHub:
    def __init__(self, *, buffer: int = 256) -> None:
        self._buffer = buffer
        self._subscribers: dict[str, set[Subscription]] = {}
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values())

    @property
    def consuming(self) -> bool:
        return (
            self._consumer_tag is not None
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def start(self, channel: AbstractChannel, topology: Topology) -> None:
        await channel.set_qos(prefetch_count=self._buffer)
        self._channel = channel
        self._queue = await topology.declare_event_listener(channel)
        self._consumer_tag = await self._queue.consume(self._on_message)

    def subscribe(self, workflow_id: str) -> Subscription:
        subscription = Subscription(self, workflow_id, self._buffer)
        if self._closed:
            subscription.offer(Signal.CLOSED)
        else:
            self._subscribers.setdefault(workflow_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subs = self._subscribers.get(subscription.workflow_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._subscribers[subscription.workflow_id]

    def dispatch(self, event: LiveEvent) -> int:
        """Hand `event` to this workflow's streams; returns how many got it."""
        subs = self._subscribers.get(event.workflow_id, ())
        for subscription in tuple(subs):
            subscription.offer(event)
        return len(subs)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        try:
            event = parse_event(message.body)
        except ValueError as exc:
            # Every event is also stored in PostgreSQL, so streams lose nothing by this.
            log.warning("ignoring an unparseable workflow event %s: %s", message.message_id, exc)
        else:
            self.dispatch(event)
        await message.ack()

    def close(self) -> None:
        """Tell every open stream that the gateway is stopping."""
        self._closed = True
        for subs in tuple(self._subscribers.values()):
            for subscription in tuple(subs):
                subscription.offer(Signal.CLOSED)
        self._subscribers.clear()

    async def stop(self) -> None:
        self.close()
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._consumer_tag)
        self._consumer_tag = None
        if self._channel is not None and not self._channel.is_closed:
            with contextlib.suppress(Exception):
                await self._channel.close()


def parse_event(body: bytes) -> LiveEvent:
    """Raises ValueError (pydantic's ValidationError or orjson's) for anything but an event."""
    try:
        raw = orjson.loads(body)
        event = WorkflowEvent.model_validate(raw)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise ValueError(str(exc)) from exc
    return LiveEvent(
        workflow_id=event.workflow_id,
        seq=event.seq,
        event=str(event.event),
        body=raw,
        terminal=event.terminal,
    )
