"""Event streams: every event of a workflow, exactly once and in order, over SSE.

A stream subscribes to the live hub *first*, then replays PostgreSQL from just after the last
event the client saw (`Last-Event-ID`), then follows live events. A live event at or below the
last sent seq is a duplicate and skipped; one beyond the next expected seq means something was
missed (or arrived out of order), so the gap is read from PostgreSQL — every event is committed
there before it is published — and live events ahead of the gap wait in a small buffer. Every
`catch_up_interval` without live traffic the stream rereads PostgreSQL too, which covers events
published while the hub's broker connection was down. After the terminal event
(`workflow.completed`, `workflow.failed` or `workflow.cancelled`) the stream ends — unless later
events follow it (a failed or cancelled workflow can be retried: `workflow.retried`, then more),
in which case the stream goes on. While the stream waits caught up, the hub may write live
events for it without waking it (`services.gateway.events.Subscription.write_now`); the stream
then takes the seq they reached from its subscription. A client that reconnects having seen the
current terminal event of a finished workflow is answered 204 (by the handler), which makes
browsers stop retrying.

A workflow nobody has heard of (no row, no events) may still be starting: the stream waits up to
`unknown_wait` seconds for it, then sends one `workflow.unknown` event and ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from sse_starlette import ServerSentEvent

from relayflow.contracts import TERMINAL_EVENTS as _TERMINAL
from relayflow.hops import HopTrace
from services.gateway.events import LiveEvent, Signal, Subscription
from services.gateway.models import UnknownWorkflow
from services.gateway.sse import workflow_frame
from services.gateway.store import StoredEvent

TERMINAL_EVENTS = frozenset(str(event) for event in _TERMINAL)
UNKNOWN_EVENT = "workflow.unknown"
REPLAY_PAGE = 500
# While a gap is open, PostgreSQL is polled this often. A workflow not known yet is polled at the
# catch-up interval, as an idle one: its events come live (the hub resyncs its streams when its
# channel reopens), and a poll a second from each of thousands of streams waiting for one workflow
# kept the gateway too busy to fan the first events out.
_GAP_POLL = 0.25


@dataclass(frozen=True, slots=True)
class Outgoing:
    seq: int
    event: str
    body: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS

    def to_sse(self) -> bytes:
        return workflow_frame(self.seq, self.event, self.body)


@dataclass(slots=True)
class Sequencer:
    """Puts events from two sources (replay and live) into one gap-free, duplicate-free order."""

    last: int = 0
    ahead: dict[int, Outgoing] = field(default_factory=dict)
    finished: bool = False

    @property
    def has_gap(self) -> bool:
        return bool(self.ahead)

    def accept(self, events: Iterable[Outgoing]) -> list[Outgoing]:
        """The events that can go out now, in order; the rest wait for the gap to close.
        `finished` says whether the last one sent is terminal (a retry may follow it later)."""
        ready: list[Outgoing] = []
        for event in events:
            if event.seq > self.last:
                self.ahead[event.seq] = event
        while self.last + 1 in self.ahead:
            nxt = self.ahead.pop(self.last + 1)
            self.last = nxt.seq
            ready.append(nxt)
            self.finished = nxt.terminal
        return ready


class EventReads(Protocol):
    """What a stream reads: `services.gateway.reads.Reads` (a replica where it may), or the
    primary's `GatewayStore` itself."""

    async def events_after(
        self, workflow_id: str, after_seq: int, tenant: str | None, *, limit: int = ...
    ) -> list[StoredEvent]: ...

    async def workflow_exists(self, workflow_id: str, tenant: str | None) -> bool: ...


def _from_store(event: StoredEvent) -> Outgoing:
    return Outgoing(event.seq, event.event, event.body)


def _from_live(event: LiveEvent) -> Outgoing:
    return Outgoing(event.seq, event.event, event.body)


async def _replay(
    store: EventReads, workflow_id: str, tenant: str | None, sequencer: Sequencer
) -> list[Outgoing]:
    ready: list[Outgoing] = []
    while True:
        rows = await store.events_after(workflow_id, sequencer.last, tenant, limit=REPLAY_PAGE)
        ready.extend(sequencer.accept(map(_from_store, rows)))
        if len(rows) < REPLAY_PAGE:
            break
    return ready


async def follow(
    store: EventReads,
    subscription: Subscription,
    *,
    last_event_id: int,
    unknown_wait: float,
    catch_up_interval: float,
    hops: HopTrace | None = None,
) -> AsyncGenerator[ServerSentEvent | bytes, None]:
    """The SSE body for one client; `subscription` must be taken before this starts. `hops`
    records each event once it is written (the body resumes after the write). Another tenant's
    workflow than the subscription's is, here too, one that does not exist."""
    hops = hops or HopTrace()
    workflow_id, tenant = subscription.workflow_id, subscription.tenant
    assert workflow_id is not None
    sequencer = Sequencer(last=last_event_id)
    loop = asyncio.get_running_loop()
    with subscription:
        for event in await _replay(store, workflow_id, tenant, sequencer):
            yield event.to_sse()
            hops.record("gw.sse", event.event, workflow_id, event.seq)
        if sequencer.finished:
            return
        known = sequencer.last > last_event_id or await store.workflow_exists(workflow_id, tenant)
        give_up_at = loop.time() + unknown_wait
        while not sequencer.finished:
            if sequencer.has_gap:
                timeout = _GAP_POLL
            elif not known:
                timeout = min(catch_up_interval, max(0.0, give_up_at - loop.time()))
            else:
                timeout = catch_up_interval
            subscription.last = sequencer.last
            subscription.following = not sequencer.has_gap
            item = await subscription.get(timeout)
            subscription.following = False
            written = _adopt(subscription, sequencer)
            known = known or written
            if item is Signal.CLOSED:
                return  # the gateway is stopping; the client resumes with Last-Event-ID
            ready: list[Outgoing] = []
            if isinstance(item, LiveEvent):
                ready = sequencer.accept([_from_live(item)])
            if isinstance(item, Signal) or sequencer.has_gap or (item is None and not written):
                # A timeout without live traffic, a resync after overflow, or a gap: PostgreSQL
                # has it all.
                ready.extend(await _replay(store, workflow_id, tenant, sequencer))
            for event in ready:
                yield event.to_sse()
                hops.record("gw.sse", event.event, workflow_id, event.seq)
            if not known:
                known = bool(ready) or await store.workflow_exists(workflow_id, tenant)
                if not known and loop.time() >= give_up_at:
                    yield _unknown(workflow_id, unknown_wait)
                    return


def _adopt(subscription: Subscription, sequencer: Sequencer) -> bool:
    """Take the seq the hub's direct writes reached while the stream waited; whether any did."""
    if subscription.last <= sequencer.last:
        return False
    sequencer.last, sequencer.finished = subscription.last, subscription.finished
    return True


def _unknown(workflow_id: str, waited: float) -> ServerSentEvent:
    body = UnknownWorkflow(
        error=f"no workflow {workflow_id!r} appeared within {waited:g}s", workflow_id=workflow_id
    )
    return ServerSentEvent(
        data=orjson.dumps(body.model_dump(mode="json", by_alias=True)).decode(),
        event=UNKNOWN_EVENT,
    )
