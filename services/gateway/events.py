"""The live-event hub: one consumer per gateway process, fanning workflow events out to the
event streams open in this process.

The hub consumes a server-named exclusive queue bound to the events fanout, so every replica
sees every event. Each stream subscribes to one workflow id — or, for the dashboard's feed, to
every workflow through a filter — and gets a bounded inbox; when a stream falls behind and its
inbox fills, the hub empties it and leaves a `RESYNC` marker, and the stream replays from
PostgreSQL (where every event is stored before it is published) or from the hub's recent-events
ring. A slow stream therefore never holds up the consumer or the other streams.

A message the hub cannot read is dead-lettered with the reason, as every consumer does, so that
it can be inspected (`relayflow dead-letters list`); streams lose nothing by it, since
every event is stored in PostgreSQL before it is published.

A stream that is caught up and waiting lets the hub write its workflow's events itself
(`Subscription.write_now`): each broadcast's events are encoded once per workflow, and the same
bytes go to every such stream from the dispatch loop, in one send each, without waking its task
— with thousands of streams on one workflow, waking each in turn to encode and send was most of
the time from the first stream to the last. A stream that is not caught up (a gap, items waiting)
gets its events in its inbox, as before; its task wakes only to end after a terminal event.

Every event the hub receives gets a `position` (1, 2, 3, … in arrival order) within this hub's
`epoch` (random per process): the feed's SSE ids. The last `recent` events are kept so that a
feed client that reconnects to the same process resumes without a gap.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import secrets
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import orjson
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
)
from pydantic import Field, TypeAdapter, ValidationError

from relayflow.amqp import Publisher, Settler, quietly
from relayflow.amqp.senders import Senders
from relayflow.contracts import DEFAULT_TENANT, WorkflowEvent, WorkflowEventBatch
from relayflow.hops import HopTrace
from relayflow.topology import Topology
from services.gateway.sse import DirectWrite, workflow_frame

log = logging.getLogger(__name__)


class Signal(enum.Enum):
    RESYNC = "resync"  # this stream's buffered events were dropped: read them again
    RESET = "reset"  # the hub itself may have missed events (its channel was reopened)
    CLOSED = "closed"  # the gateway is stopping


@dataclass(frozen=True, slots=True)
class LiveEvent:
    workflow_id: str
    seq: int
    event: str
    body: dict[str, Any]  # the WorkflowEvent wire JSON as published
    terminal: bool
    workflow_name: str = ""
    tenant: str = DEFAULT_TENANT
    position: int = 0  # set by the hub on arrival


Item = LiveEvent | Signal
EventFilter = Callable[[LiveEvent], bool]


class Subscription:
    """One stream's bounded inbox: a workflow's events, or (workflow_id None) every event that
    `accepts` lets through. One consumer (its stream) calls `get`.

    Not an `asyncio.Queue`: a queue allocates its three deques (about 2 KiB) up front, and most
    streams sit idle with nothing buffered. Here the buffer exists only while items wait, and a
    waiting stream holds one future and at most one timer."""

    __slots__ = (
        "_direct",
        "_hub",
        "_items",
        "_limit",
        "_waiter",
        "accepts",
        "finished",
        "following",
        "last",
        "tenant",
        "workflow_id",
    )

    def __init__(
        self,
        hub: EventHub,
        workflow_id: str | None,
        buffer: int,
        accepts: EventFilter | None = None,
        tenant: str | None = None,
    ) -> None:
        self.workflow_id = workflow_id
        self.accepts = accepts
        # A workflow's stream for a tenant gets only that tenant's events (None: any tenant's):
        # its id may name another tenant's workflow, or one another tenant starts later.
        self.tenant = tenant
        self._hub = hub
        self._limit = buffer
        self._items: deque[Item] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._direct: DirectWrite | None = None
        # Kept by a workflow's stream: the seq it sent last and whether that one was terminal,
        # and `following` while it waits caught up (no gap), when the hub may write for it.
        self.last = 0
        self.finished = False
        self.following = False

    def offer(self, item: Item) -> None:
        items = self._items
        if items is None:
            items = self._items = deque()
        elif len(items) >= self._limit:
            # Too slow to keep up: drop what is buffered; the stream rereads its source.
            log.debug("a stream of %s fell behind; it will replay", self.workflow_id or "*")
            marker = item if isinstance(item, Signal) else Signal.RESYNC
            for dropped in items:
                if dropped is Signal.CLOSED or (
                    dropped is Signal.RESET and marker is not Signal.CLOSED
                ):
                    marker = dropped
            items.clear()
            item = marker
        items.append(item)
        _wake(self._waiter)

    def attach(self, direct: DirectWrite | None) -> None:
        """How to write to this stream's client directly (None: no longer)."""
        self._direct = direct

    def write_now(self, events: Sequence[LiveEvent], frames: Frames) -> bool:
        """Send `events` (one workflow's, in seq order) to the client now, if the stream is caught
        up and they continue it without a gap; False: offer them to the inbox instead."""
        direct = self._direct
        if direct is None or not self.following or self._items:
            return False
        fresh = [event for event in events if event.seq > self.last]
        if not fresh:
            return True  # duplicates: the stream would skip them
        expected = self.last + 1
        for event in fresh:
            if event.seq != expected:
                return False  # a gap: the stream reads it from PostgreSQL
            expected += 1
        if not direct(frames.after(self.last)):
            return False
        self.last = fresh[-1].seq
        self.finished = fresh[-1].terminal
        if self.finished:
            _wake(self._waiter)  # the stream ends (or waits on for a retry's events)
        return True

    async def get(self, within: float | None = None) -> Item | None:
        """The next item, or None after `within` seconds without one (None: wait for one)."""
        if not self._items:
            # A bare future and at most a timer: no task, no timeout context per idle stream.
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            timer = None if within is None else loop.call_later(within, _wake, waiter)
            try:
                await waiter
            finally:
                if timer is not None:
                    timer.cancel()
                self._waiter = None
        items = self._items
        if not items:
            return None
        item = items.popleft()
        if not items:
            self._items = None
        return item

    def close(self) -> None:
        self._hub.unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class Frames:
    """One workflow's events of one broadcast as its streams send them, encoded once for all of
    them (by the seq after which a stream is; nearly always the same one)."""

    __slots__ = ("_by_last", "_events")

    def __init__(self, events: Sequence[LiveEvent]) -> None:
        self._events = events
        self._by_last: dict[int, bytes] = {}

    def after(self, last: int) -> bytes:
        frames = self._by_last.get(last)
        if frames is None:
            frames = self._by_last[last] = b"".join(
                workflow_frame(event.seq, event.event, event.body)
                for event in self._events
                if event.seq > last
            )
        return frames


class EventHub:
    def __init__(
        self, *, buffer: int = 256, recent: int = 1000, hops: HopTrace | None = None
    ) -> None:
        self._hops = hops or HopTrace()
        self._buffer = buffer
        self._subscribers: dict[str, set[Subscription]] = {}
        self._feeds: set[Subscription] = set()
        self._recent: deque[LiveEvent] = deque(maxlen=recent)
        self.epoch = secrets.token_hex(4)
        self.position = 0
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._topology: Topology | None = None
        self._consumer_tag: str | None = None
        # Acks, and dead-letters what cannot be read: set by `start`, before the first delivery.
        self._settler: Settler | None = None
        self._closed = False

    @property
    def subscriber_count(self) -> int:
        return sum(len(subs) for subs in self._subscribers.values()) + len(self._feeds)

    @property
    def consuming(self) -> bool:
        return (
            self._consumer_tag is not None
            and self._channel is not None
            and not self._channel.is_closed
        )

    async def start(
        self,
        channel: AbstractChannel,
        topology: Topology,
        publisher: Publisher,
        senders: Senders | None = None,
    ) -> None:
        # Only an engine's events reach the streams (`relayflow.amqp.senders`).
        self._senders = senders or Senders()
        await channel.set_qos(prefetch_count=self._buffer)
        self._settler = Settler(publisher, topology.dead_letter_exchange)
        self._channel = channel
        self._topology = topology
        await self._listen()
        if isinstance(channel, AbstractRobustChannel):
            channel.reopen_callbacks.add(self._on_reopen)

    async def _listen(self) -> None:
        assert self._channel is not None
        assert self._topology is not None
        self._queue = await self._topology.declare_event_listener(self._channel)
        self._consumer_tag = await self._queue.consume(self._on_message)

    async def _on_reopen(self, *_: object) -> None:
        """A reopened channel (after a reconnection, maybe to another node) listens on a new
        exclusive queue: the old one may still be held by the lost connection — on a node that
        hung, until the cluster notices — so declaring it again would be refused. Whatever was
        published in between never reaches the new queue, so every stream rereads its source."""
        self._consumer_tag = None
        try:
            await self._listen()
        except Exception:
            # Not consuming, and /readyz says so; the streams' catch-up reads still run.
            log.exception("could not listen for events again after the channel reopened")
        log.info("the events channel was reopened; streams resync")
        self.resync_all()

    def subscribe(self, workflow_id: str, tenant: str | None = None) -> Subscription:
        """The events of workflow `workflow_id`, if it is `tenant`'s (None: any tenant's)."""
        subscription = Subscription(self, workflow_id, self._buffer, tenant=tenant)
        if self._closed:
            subscription.offer(Signal.CLOSED)
        else:
            self._subscribers.setdefault(workflow_id, set()).add(subscription)
        return subscription

    def subscribe_all(self, accepts: EventFilter | None = None) -> Subscription:
        """A feed of every workflow's events that `accepts` lets through, from now on."""
        subscription = Subscription(self, None, self._buffer, accepts)
        if self._closed:
            subscription.offer(Signal.CLOSED)
        else:
            self._feeds.add(subscription)
        return subscription

    def recent_after(self, position: int) -> list[LiveEvent] | None:
        """The events this hub received after `position`, or None if the ring no longer holds
        all of them (the caller must start over)."""
        if position > self.position:
            return None
        if position == self.position:
            return []
        oldest = self._recent[0].position if self._recent else self.position + 1
        if position + 1 < oldest:
            return None
        return [event for event in self._recent if event.position > position]

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.workflow_id is None:
            self._feeds.discard(subscription)
            return
        subs = self._subscribers.get(subscription.workflow_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._subscribers[subscription.workflow_id]

    def dispatch(self, event: LiveEvent) -> int:
        """Number `event`, keep it in the recent ring and hand it to its workflow's streams and
        to the feeds that accept it; returns how many streams got it."""
        return self.dispatch_all([event])

    def dispatch_all(self, events: Sequence[LiveEvent]) -> int:
        """`dispatch` for the events of one broadcast: each workflow's streams get its events of
        the batch together (one send each, when written directly)."""
        numbered: dict[str, list[LiveEvent]] = {}
        handed = 0
        for arrived in events:
            self._hops.record("gw.event", arrived.event, arrived.workflow_id, arrived.seq)
            self.position += 1
            event = replace(arrived, position=self.position)
            self._recent.append(event)
            numbered.setdefault(event.workflow_id, []).append(event)
            for feed in tuple(self._feeds):
                if feed.accepts is None or feed.accepts(event):
                    feed.offer(event)
                    handed += 1
        for workflow_id, batch in numbered.items():
            subs = self._subscribers.get(workflow_id)
            if not subs:
                continue
            batch.sort(key=lambda event: event.seq)
            frames = Frames(batch)
            trace = self._hops.on  # a call per stream and event adds up at 10,000 streams
            tenant = batch[0].tenant  # a workflow's events are all its tenant's
            for subscription in tuple(subs):
                if subscription.tenant is not None and subscription.tenant != tenant:
                    continue
                handed += len(batch)
                if subscription.write_now(batch, frames):
                    for event in batch if trace else ():
                        self._hops.record("gw.sse", event.event, workflow_id, event.seq)
                else:
                    for event in batch:
                        subscription.offer(event)
        return handed

    def resync_all(self) -> None:
        """Live events may have been missed (the broker connection was re-established): every
        stream rereads its source."""
        for subs in tuple(self._subscribers.values()):
            for subscription in tuple(subs):
                subscription.offer(Signal.RESET)
        for feed in tuple(self._feeds):
            feed.offer(Signal.RESET)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        settler = self._settler
        assert settler is not None  # set by `start`, which consumes
        async with settler.settling(message):
            refused = self._senders.refusal("WorkflowEventBatch", message.user_id)
            if refused is not None:
                await settler.dead_letter(message, refused)
                return
            try:
                events = parse_events(message.body)
            except ValueError as exc:
                await settler.dead_letter(message, f"invalid workflow event: {exc}")
                return
            self.dispatch_all(events)

    def close(self) -> None:
        """Tell every open stream that the gateway is stopping."""
        self._closed = True
        for subs in tuple(self._subscribers.values()):
            for subscription in tuple(subs):
                subscription.offer(Signal.CLOSED)
        for feed in tuple(self._feeds):
            feed.offer(Signal.CLOSED)
        self._subscribers.clear()
        self._feeds.clear()

    async def stop(self) -> None:
        self.close()
        if self._queue is not None and self._consumer_tag is not None:
            await quietly(
                "cancelling the events consumer",
                functools.partial(self._queue.cancel, self._consumer_tag),
            )
        self._consumer_tag = None
        if self._channel is not None and not self._channel.is_closed:
            await quietly("closing the events channel", self._channel.close)


_broadcast: TypeAdapter[WorkflowEvent | WorkflowEventBatch] = TypeAdapter(
    Annotated[WorkflowEvent | WorkflowEventBatch, Field(discriminator="type")]
)


def parse_events(body: bytes) -> list[LiveEvent]:
    """The events of one broadcast: a `WorkflowEventBatch` (what the orchestrator sends) or a
    single `WorkflowEvent`. Raises ValueError for anything else."""
    try:
        raw = orjson.loads(body)
        message = _broadcast.validate_python(raw)
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise ValueError(str(exc)) from exc
    if isinstance(message, WorkflowEvent):
        return [_live(message, raw)]
    return [_live(event, body) for event, body in zip(message.events, raw["events"], strict=True)]


def _live(event: WorkflowEvent, body: dict[str, Any]) -> LiveEvent:
    return LiveEvent(
        workflow_id=event.workflow_id,
        seq=event.seq,
        event=str(event.event),
        body=body,
        terminal=event.terminal,
        workflow_name=event.workflow_name,
        tenant=event.tenant or DEFAULT_TENANT,
    )
