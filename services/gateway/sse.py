"""Event streams on sse-starlette with one helper task per stream instead of four.

`EventSourceResponse.__call__` runs each stream in an anyio task group of four tasks — the body,
the pings, a disconnect listener and a shutdown listener — each with its cancel scope and events.
That machinery was half of what an idle stream cost the gateway (about 23 of 47 KiB), and
thousands of open dashboards are thousands of idle streams. An idle stream needs far less:

- the request's own task iterates the body and sends its events;
- one small task waits in `receive()` for the client to leave — the only way to learn it, since
  uvicorn silently drops what is sent to a gone client — and sends the keep-alive ping whenever a
  ping interval passes without that. When the client leaves, or a ping fails, it cancels the
  request's task, which closes the body (its `finally` blocks run) and returns.

Sends need no lock: the two tasks' sends are whole ASGI messages, and the final, empty chunk goes
out only after the helper has been cancelled, so no ping can follow it.

What stays sse-starlette's: the headers, the event encoding, the ping's format, HEAD answered
without a body, `send_timeout` (`SendTimeoutError` ends the stream). Not here: sse-starlette's
watch for server shutdown. The gateway ends its streams itself — on stop the event hub closes
every subscription, and each body returns — which is also how the existing streams stopped, as
the process's signal handling bypasses what sse-starlette watches.

Fan-out to thousands of streams of one workflow adds a third way to send: `direct` hands the
event hub a writer with which it sends an event batch to a caught-up stream straight from its
dispatch loop, without waking the stream's task (`services.gateway.events.Subscription`). An
ASGI send that need not wait (the transport is not paused) completes on its first step, so the
writer runs it there; one that must wait for the client to drain is finished in a task, which the
stream's next send awaits first, so the order of chunks holds.
"""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncGenerator, Callable, Coroutine, Generator, Mapping
from datetime import UTC, datetime
from functools import cache
from typing import Any

import orjson
from sse_starlette import EventSourceResponse, ServerSentEvent
from sse_starlette.event import ensure_bytes
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from relayflow import metrics

# Sends `bytes` (SSE messages) now, from the caller's stack; False: not sent, send them as usual.
DirectWrite = Callable[[bytes], bool]


def workflow_frame(seq: int, event: str, body: object) -> bytes:
    """The SSE message of one workflow event as its stream sends it: `id` the seq, `data` the
    event's JSON with sorted keys."""
    return ServerSentEvent(
        data=orjson.dumps(body, option=orjson.OPT_SORT_KEYS).decode(), id=str(seq), event=event
    ).encode()


class EventStream(EventSourceResponse):
    """An SSE response whose body is `events`. `retry_ms`, when given, is sent first (the
    browser's reconnect delay); `on_close` runs once the response is over, however it ended —
    also if the body never started (the client left at once, or the request was a HEAD).
    `direct` is given a `DirectWrite` once the stream is open, and None before it closes."""

    def __init__(
        self,
        events: AsyncGenerator[ServerSentEvent | bytes, None],
        *,
        ping: float,
        retry_ms: int | None = None,
        on_close: Callable[[], None] | None = None,
        send_timeout: float | None = None,
        direct: Callable[[DirectWrite | None], None] | None = None,
    ) -> None:
        super().__init__(events, ping=ping, send_timeout=send_timeout)
        # sse-starlette's lock orders the sends of its tasks; these sends need none (see the
        # module docstring), and the lock's waiter deque would be 0.7 KiB of every idle stream.
        self.__dict__.pop("_send_lock", None)
        self._events = events
        self._retry_ms = retry_ms
        self._on_close = on_close
        self._client_left = False
        self._failure: Exception | None = None
        self._direct = direct
        self._asgi_send: Send | None = None
        self._pending: asyncio.Future[None] | None = None  # a direct write waiting for the client
        self._owner: asyncio.Task[None] | None = None

    def init_headers(self, headers: Mapping[str, str] | None = None) -> None:
        # Every stream sends the same few headers: share the (immutable) pairs, not copies.
        super().init_headers(headers)
        self.raw_headers = [_shared(*pair) for pair in self.raw_headers]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["type"] == "http" and scope["method"].upper() != "HEAD":
                await self._serve(receive, send)
            else:
                await super().__call__(scope, receive, send)
        finally:
            if self._on_close is not None:
                self._on_close()

    async def _serve(self, receive: Receive, send: Send) -> None:
        metrics.sse_opened()
        try:
            await self._stream(receive, send)
        finally:
            metrics.sse_closed()

    async def _stream(self, receive: Receive, send: Send) -> None:
        owner = self._owner = asyncio.current_task()
        assert owner is not None
        await self._send(
            send,
            {
                "type": "http.response.start",
                "status": self.status_code,
                "headers": self.raw_headers,
            },
        )
        watcher = asyncio.get_running_loop().create_task(
            self._watch(receive, send, owner), name="sse:watch"
        )
        try:
            if self._retry_ms is not None:
                await self._send_chunk(send, ServerSentEvent(retry=self._retry_ms).encode())
            if self._direct is not None:
                self._asgi_send = send
                self._direct(self._write_now)
            async for event in self._events:
                await self._send_chunk(send, ensure_bytes(event, self.sep))
        except asyncio.CancelledError:
            if not (self._client_left or self._failure is not None):
                raise  # not the watcher's: the server is cancelling this request
            # The watcher's cancel has done its work; it must not reach uvicorn or Starlette.
            owner.uncancel()
        finally:
            if self._direct is not None:
                self._direct(None)
            watcher.cancel()
            self.active = False
            # A body interrupted at a `yield` (a failed send) still holds its subscription.
            await self._events.aclose()
        if self._pending is not None and (self._client_left or self._failure is not None):
            self._pending.cancel()
        if self._failure is not None:
            raise self._failure
        if not self._client_left:
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()

    async def _watch(self, receive: Receive, send: Send, owner: asyncio.Task[None]) -> None:
        """Wait for the client to leave, pinging after every quiet interval; then stop `owner`."""
        interval = self.ping_interval or None  # 0: no pings
        try:
            while True:
                try:
                    async with asyncio.timeout(interval):
                        message = await receive()
                except TimeoutError:
                    await self._send_chunk(send, self._ping_chunk())
                    continue
                if message["type"] == "http.disconnect":
                    self._client_left = True
                    break
        except Exception as exc:  # a failed ping ends the stream with its error
            self._failure = exc
        owner.cancel()

    def _ping_chunk(self) -> bytes:
        event = (
            self.ping_message_factory()
            if self.ping_message_factory is not None
            else ServerSentEvent(comment=f"ping - {datetime.now(UTC)}", sep=self.sep)
        )
        return ensure_bytes(event, self.sep)

    async def _send_chunk(self, send: Send, chunk: bytes) -> None:
        await self._send(send, {"type": "http.response.body", "body": chunk, "more_body": True})

    async def _send(self, send: Send, message: Message) -> None:
        """`send`, within `send_timeout` (a client that stops reading must not hold its stream
        forever); asyncio's timeout, as anyio's cancel scope per event costs more."""
        if self.send_timeout is None:
            await self._after_pending()
            await send(message)
            return
        try:
            async with asyncio.timeout(self.send_timeout):
                await self._after_pending()
                await send(message)
        except TimeoutError:
            raise SendTimeoutError from None

    async def _after_pending(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            await pending

    def _write_now(self, chunk: bytes) -> bool:
        send = self._asgi_send
        if send is None or not self.active or self._pending is not None:
            return False
        sending = send({"type": "http.response.body", "body": chunk, "more_body": True})
        if not isinstance(sending, Coroutine):  # not steppable by hand: a task sends it
            self._pending = asyncio.ensure_future(sending)
            return True
        try:
            waiting_on = sending.send(None)
        except StopIteration:
            return True
        except Exception as exc:  # as a failed ping does, a failed send ends the stream
            self._failure = exc
            self._stop_serving()
            return True
        # The client is slow: the send waits for the transport to drain, in a task now.
        self._pending = asyncio.get_running_loop().create_task(_resume(sending, waiting_on))
        return True

    def _stop_serving(self) -> None:
        if self._owner is not None:
            self._owner.cancel()


@types.coroutine
def _resume(sending: Coroutine[Any, Any, None], waiting_on: object) -> Generator[Any, None, None]:
    """The rest of a coroutine that was stepped by hand and yielded `waiting_on` (a future): a
    task awaits that, then runs the coroutine on as if it had always been its own."""
    yield waiting_on
    yield from sending.__await__()


@cache
def _shared(name: bytes, value: bytes) -> tuple[bytes, bytes]:
    return name, value
