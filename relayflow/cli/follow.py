"""Following a workflow's events (`GET /workflows/{id}/events`, Server-Sent Events) to its end,
whatever happens to the connection.

Each SSE event's `id` is the event's seq. When the connection drops (or the gateway restarts, or
nothing arrives within `READ_TIMEOUT`: the gateway pings every 15 s) the stream is opened again
with `Last-Event-ID` = the last seq seen, so nothing is missed or shown twice; 5xx and 429
answers are retried the same way, with a pause that doubles up to `MAX_PAUSE`, for `give_up_after`
seconds in a row. The stream ends after a terminal event unless later ones follow it (a retried
workflow goes on with `workflow.retried`): so the end is the server's close after a terminal
event, or its 204 to a reconnect that has already seen the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from relayflow.cli.context import Context
from relayflow.cli.errors import CliError
from relayflow.cli.gateway import path, refusal, unreachable
from relayflow.contracts import TERMINAL_EVENTS

TERMINAL = frozenset(str(event) for event in TERMINAL_EVENTS)
COMPLETED = "workflow.completed"
UNKNOWN = "workflow.unknown"
READ_TIMEOUT = 60.0
FIRST_PAUSE = 0.25
MAX_PAUSE = 5.0
GIVE_UP_AFTER = 60.0
LAST_EVENT_ID = "Last-Event-ID"


@dataclass(frozen=True, slots=True)
class Event:
    """One workflow event: `body` is the WorkflowEvent JSON the gateway sent."""

    seq: int
    event: str
    body: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL


@dataclass(slots=True)
class _Frame:
    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)


async def sse_frames(lines: AsyncIterator[str]) -> AsyncIterator[_Frame]:
    """The events of an SSE body, line by line (comments and `retry:` skipped)."""
    frame = _Frame()
    async for line in lines:
        if not line:
            if frame.data or frame.event is not None:
                yield frame
            frame = _Frame()
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            frame.id = value
        elif name == "event":
            frame.event = value
        elif name == "data":
            frame.data.append(value)
    if frame.data:
        yield frame


class _Retry(Exception):
    """The stream broke, or the gateway could not serve it for now: open it again."""


async def follow(
    http: httpx.AsyncClient,
    context: Context,
    workflow_id: str,
    *,
    after: int = 0,
    give_up_after: float = GIVE_UP_AFTER,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    on_reconnect: Callable[[str], None] = lambda _: None,
) -> AsyncIterator[Event]:
    """Every event of the workflow after seq `after`, once each, in order, until its end.
    `on_reconnect` hears why the stream is opened again."""
    last = after
    loop = asyncio.get_running_loop()
    broken_since: float | None = None
    pause = FIRST_PAUSE
    url = path("workflows", workflow_id, "events")
    opened = [False]
    while True:
        seen_terminal = False
        why = "the stream ended before the workflow did"
        try:
            async for event in _one_stream(
                http, context, url=url, workflow_id=workflow_id, last=last, opened=opened
            ):
                if event is None:  # 204: the end was seen before
                    return
                broken_since, pause = None, FIRST_PAUSE
                last = event.seq
                seen_terminal = event.terminal
                yield event
            if seen_terminal:
                return
        except _Retry as exc:
            why = str(exc)
        now = loop.time()
        broken_since = now if broken_since is None else broken_since
        if now - broken_since >= give_up_after:
            raise CliError(
                f"lost the event stream of {workflow_id} for {give_up_after:.0f} s "
                f"({why}); the last event seen is {last}"
            )
        on_reconnect(f"{why}; reconnecting after event {last}")
        await sleep(pause)
        pause = min(pause * 2, MAX_PAUSE)


async def _one_stream(
    http: httpx.AsyncClient,
    context: Context,
    *,
    url: str,
    workflow_id: str,
    last: int,
    opened: list[bool],
) -> AsyncIterator[Event | None]:
    """One connection's events (None for a 204). A gateway that cannot be reached before any
    stream opened is an error at once (a wrong address is not worth a minute of retries);
    `opened[0]` says whether one did."""
    headers = {"Accept": "text/event-stream"}
    if last:
        headers[LAST_EVENT_ID] = str(last)
    timeout = httpx.Timeout(READ_TIMEOUT, connect=10.0)
    try:
        async with http.stream("GET", url, headers=headers, timeout=timeout) as response:
            if response.status_code == 204:
                yield None
                return
            if response.status_code != 200:
                await response.aread()
                error = refusal(response, f"the events of {workflow_id}")
                if response.status_code >= 500 or response.status_code == 429:
                    raise _Retry(error.format_message())
                raise error
            opened[0] = True
            async for frame in sse_frames(response.aiter_lines()):
                if frame.event == UNKNOWN:
                    raise CliError(
                        f"no workflow {workflow_id}: the gateway waited for it to start and "
                        "heard nothing"
                    )
                if frame.id is None or frame.event is None:
                    continue
                try:
                    body = orjson.loads("\n".join(frame.data))
                except orjson.JSONDecodeError as exc:
                    raise _Retry(f"event {frame.id} is not JSON ({exc})") from exc
                yield Event(int(frame.id), frame.event, body if isinstance(body, dict) else {})
    except httpx.ConnectError as exc:
        if not opened[0]:
            raise unreachable(context, exc) from exc
        raise _Retry(unreachable(context, exc).format_message()) from exc
    except (httpx.TransportError, httpx.StreamError) as exc:
        raise _Retry(f"the stream broke ({exc or type(exc).__name__})") from exc
