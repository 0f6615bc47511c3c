"""The feed: every workflow's events on one SSE stream (`GET /events`), for the dashboard's list.

Events carry no global order (each workflow numbers its own), so the feed's ids are the gateway
hub's: `<epoch>.<position>`, where `epoch` is random per gateway process and `position` counts the
events that process received. The hub keeps its most recent events in a ring, so:

- a client that reconnects to the same process with a `Last-Event-ID` the ring still covers gets
  what it missed (filtered as before), then live events: no gap, no duplicate;
- any other client — a first connection, another replica, a restarted gateway, an id too old, or
  a stream that fell behind further than the ring — first gets a `reset` event: "what you have may
  be stale, fetch the list again (`GET /workflows`), then apply the events that follow".

A first connection therefore always starts with `reset`, and a client needs one code path: on
`reset`, (re)load the list. Events are filtered by workflow name and by status (see `touches`).
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Iterable

import orjson
from sse_starlette import ServerSentEvent

from relayflow.contracts import EventType
from relayflow.model import WorkflowStatus
from services.gateway.events import EventFilter, EventHub, LiveEvent, Signal, Subscription
from services.gateway.models import FeedReset, ResetReason

RESET_EVENT = "reset"
# `<epoch>.<position>`; bounded, so that a huge position is just an id we cannot resume from.
_LAST_ID = re.compile(r"([^.]{1,64})\.([0-9]{1,18})")

_AFTER: dict[str, tuple[WorkflowStatus, ...]] = {
    EventType.WORKFLOW_STARTED: (WorkflowStatus.RUNNING,),
    EventType.WORKFLOW_RETRIED: (
        WorkflowStatus.FAILED,
        WorkflowStatus.CANCELLED,
        WorkflowStatus.COMPENSATION_FAILED,
        WorkflowStatus.RUNNING,
        WorkflowStatus.COMPENSATING,
    ),
    EventType.WORKFLOW_COMPLETED: (WorkflowStatus.RUNNING, WorkflowStatus.COMPLETED),
    EventType.WORKFLOW_FAILED: (WorkflowStatus.RUNNING, WorkflowStatus.FAILED),
    EventType.WORKFLOW_CANCELLED: (WorkflowStatus.RUNNING, WorkflowStatus.CANCELLED),
    EventType.WORKFLOW_COMPENSATING: (WorkflowStatus.RUNNING, WorkflowStatus.COMPENSATING),
    EventType.WORKFLOW_COMPENSATED: (WorkflowStatus.COMPENSATING, WorkflowStatus.COMPENSATED),
    EventType.WORKFLOW_COMPENSATION_FAILED: (
        WorkflowStatus.COMPENSATING,
        WorkflowStatus.COMPENSATION_FAILED,
    ),
    # Undos run while the workflow compensates (a retrying undo says so with `step.retrying`).
    EventType.STEP_COMPENSATING: (WorkflowStatus.COMPENSATING,),
    EventType.STEP_COMPENSATED: (WorkflowStatus.COMPENSATING,),
    EventType.STEP_COMPENSATION_FAILED: (WorkflowStatus.COMPENSATING,),
    EventType.STEP_RETRYING: (WorkflowStatus.RUNNING, WorkflowStatus.COMPENSATING),
}


def touches(event: str) -> tuple[str, ...]:
    """The workflow statuses an event concerns: the status it leaves and the one it enters
    (`workflow.retried` leaves failed, cancelled or compensation_failed). Step events happen
    while running, undos while compensating. A feed
    filtered on a status gets exactly the events that can change a list filtered on it."""
    return _AFTER.get(event, (WorkflowStatus.RUNNING,))


def event_filter(
    workflow: str | None, status: str | None, tenant: str | None = None
) -> EventFilter | None:
    """What a feed lets through: events of workflow name `workflow`, that touch `status`, of
    `tenant`'s workflows (None: each, any)."""
    if workflow is None and status is None and tenant is None:
        return None

    def accepts(event: LiveEvent) -> bool:
        return (
            (workflow is None or event.workflow_name == workflow)
            and (status is None or status in touches(event.event))
            and (tenant is None or event.tenant == tenant)
        )

    return accepts


def parse_last_id(raw: str | None) -> tuple[str, int] | None:
    """`<epoch>.<position>`, or None for anything else (which means: start with a reset)."""
    found = _LAST_ID.fullmatch(raw or "")
    if found is None:
        return None
    return found[1], int(found[2])


def _event(epoch: str, event: LiveEvent) -> ServerSentEvent:
    return ServerSentEvent(
        data=orjson.dumps(event.body, option=orjson.OPT_SORT_KEYS).decode(),
        id=f"{epoch}.{event.position}",
        event=event.event,
    )


def _reset(epoch: str, position: int, reason: ResetReason) -> ServerSentEvent:
    body = FeedReset(reason=reason).model_dump(mode="json", by_alias=True)
    return ServerSentEvent(
        data=orjson.dumps(body).decode(),
        id=f"{epoch}.{position}",
        event=RESET_EVENT,
    )


def _filtered(events: Iterable[LiveEvent], accepts: EventFilter | None) -> list[LiveEvent]:
    return [event for event in events if accepts is None or accepts(event)]


async def follow_feed(
    hub: EventHub,
    subscription: Subscription,
    *,
    start: int,
    missed: list[LiveEvent] | None,
) -> AsyncGenerator[ServerSentEvent, None]:
    """The feed's SSE body. `start` is the hub position when `subscription` was taken, and
    `missed` what the client missed up to then (None: it must reset); both must be read in the
    same step as the subscription, with no await in between."""
    accepts = subscription.accepts
    epoch = hub.epoch
    with subscription:
        if missed is None:
            yield _reset(epoch, start, "connected")
        else:
            for event in _filtered(missed, accepts):
                yield _event(epoch, event)
        last = start
        while True:
            # Idle, a feed has nothing to do (pings keep the connection open), so it waits without
            # a timer: one fewer per open dashboard.
            item = await subscription.get()
            if item is Signal.CLOSED:
                return
            if isinstance(item, Signal):  # RESYNC (this stream overflowed) or RESET
                caught_up = hub.recent_after(last) if item is Signal.RESYNC else None
                if caught_up is None:
                    # Too far behind for the ring: the client reloads the list, which reflects
                    # everything up to now, so only newer events matter after this.
                    last = hub.position
                    yield _reset(epoch, last, "missed events")
                    continue
                for event in _filtered(caught_up, accepts):
                    yield _event(epoch, event)
                last = max(last, hub.position)
                continue
            assert isinstance(item, LiveEvent)
            if item.position <= last:
                continue
            last = item.position
            yield _event(epoch, item)
