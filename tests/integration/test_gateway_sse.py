"""`EventStream`, the gateway's lean SSE response, under the gateway's own uvicorn: what
sse-starlette's task group did — pings, noticing a client that left, dropping one that stopped
reading — must still happen with one helper task per stream."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sse_starlette import ServerSentEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from relayflow.settings import Settings
from services.gateway.app import create_app
from services.gateway.server import build_server, serve_until
from services.gateway.sse import EventStream
from services.gateway.state import STATE_KEY, GatewayState
from tests.integration.gateway_harness import gateway_settings
from tests.support import wait_for


@dataclass
class Probe:
    """The server side of one stream: the test feeds its body and watches it end."""

    feed: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    body_closed: asyncio.Event = field(default_factory=asyncio.Event)
    closes: int = 0

    async def body(self) -> AsyncGenerator[ServerSentEvent, None]:
        self.started.set()
        try:
            while (data := await self.feed.get()) is not None:
                yield ServerSentEvent(data=data.decode())
        finally:
            self.body_closed.set()

    def on_close(self) -> None:
        self.closes += 1


@dataclass
class Server:
    port: int
    probes: list[Probe]


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[Server]:
    """A tiny app of one `EventStream` route, served the way the gateway serves its own."""
    probes: list[Probe] = []

    async def stream(request: Request) -> Response:
        probe = Probe()
        probes.append(probe)
        params = request.query_params
        return EventStream(
            probe.body(),
            ping=float(params.get("ping", "15")),
            retry_ms=500,
            on_close=probe.on_close,
            send_timeout=float(params["send_timeout"]) if "send_timeout" in params else None,
        )

    app = Starlette(routes=[Route("/stream", stream, methods=["GET"])])
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    server = build_server(app, gateway_settings(settings))
    stop = asyncio.Event()
    serve = asyncio.create_task(serve_until(server, stop, sockets=[sock]))

    async def started() -> bool:
        assert not serve.done(), serve
        return bool(server.started)

    try:
        await wait_for(started, timeout=10)
        yield Server(sock.getsockname()[1], probes)
    finally:
        stop.set()
        await serve
        sock.close()


async def open_stream(
    port: int, query: str = "", method: str = "GET", **sockopts: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A raw HTTP/1.1 request (so that reading, or not, is up to the test); returns the head."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    for name, value in sockopts.items():
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(f"{method} /stream{query} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    return reader, writer, head


async def read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of the chunked body: one SSE message."""
    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
    chunk = await reader.readexactly(size + 2)
    return chunk[:-2]


async def test_stream_sends_retry_then_events_then_pings_while_idle(settings: Settings) -> None:
    """The reconnect delay comes first, events follow as the body yields them, and an idle
    stream is kept alive with ping comments at the ping interval."""
    async with serving(settings) as server:
        reader, writer, head = await open_stream(server.port, "?ping=0.2")
        try:
            assert head.startswith(b"HTTP/1.1 200")
            assert b"content-type: text/event-stream" in head
            assert await read_chunk(reader) == b"retry: 500\r\n\r\n"
            await server.probes[0].feed.put(b"one")
            assert await read_chunk(reader) == b"data: one\r\n\r\n"
            loop = asyncio.get_running_loop()
            began = loop.time()
            pings = [await asyncio.wait_for(read_chunk(reader), 5) for _ in range(3)]
            assert all(ping.startswith(b": ping - ") for ping in pings)
            assert loop.time() - began >= 0.5  # paced, not a burst
            await server.probes[0].feed.put(b"two")
            assert await asyncio.wait_for(read_chunk(reader), 5) == b"data: two\r\n\r\n"
        finally:
            writer.close()


async def test_client_leaving_an_idle_stream_ends_it_at_once(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn drops what is sent to a gone client without a word, so only the disconnect
    watch can end an idle stream: its body must be closed (the subscription freed) promptly,
    long before any ping would be attempted, and quietly — a client leaving is no error."""
    caplog.set_level(logging.ERROR)
    async with serving(settings) as server:
        _, writer, _ = await open_stream(server.port)  # pings every 15 s: none will come
        probe = server.probes[0]
        await asyncio.wait_for(probe.started.wait(), 5)
        writer.close()
        await asyncio.wait_for(probe.body_closed.wait(), 2)

        async def closed() -> bool:
            return probe.closes == 1

        await wait_for(closed, timeout=2)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_finished_body_completes_the_response(settings: Settings) -> None:
    """A body that ends (a workflow's terminal event) ends the HTTP response properly, so the
    client sees the end of the stream, and `on_close` runs once."""
    async with serving(settings) as server:
        reader, writer, _ = await open_stream(server.port)
        try:
            probe = server.probes[0]
            await probe.feed.put(b"last")
            await probe.feed.put(None)
            assert await read_chunk(reader) == b"retry: 500\r\n\r\n"
            assert await read_chunk(reader) == b"data: last\r\n\r\n"
            assert await asyncio.wait_for(reader.readuntil(b"0\r\n\r\n"), 5) == b"0\r\n\r\n"
            await asyncio.wait_for(probe.body_closed.wait(), 2)
            assert probe.closes == 1
        finally:
            writer.close()


async def test_head_answers_headers_and_frees_the_stream(settings: Settings) -> None:
    """HEAD gets the headers only; the body never starts, yet `on_close` still frees what the
    handler took for it."""
    async with serving(settings) as server:
        _, writer, head = await open_stream(server.port, method="HEAD")
        try:
            assert head.startswith(b"HTTP/1.1 200")
            probe = server.probes[0]

            async def closed() -> bool:
                return probe.closes == 1

            await wait_for(closed, timeout=2)
            assert not probe.started.is_set()
        finally:
            writer.close()


async def test_a_client_that_stops_reading_is_dropped_without_stalling_others(
    settings: Settings,
) -> None:
    """With a send timeout, a client that stops reading is cut off once the socket is full,
    while a stream on the same server goes on."""
    async with serving(settings) as server:
        _, stuck_writer, _ = await open_stream(server.port, "?send_timeout=0.5", SO_RCVBUF=16_384)
        reader, writer, _ = await open_stream(server.port, "?send_timeout=0.5")
        try:
            stuck, live = server.probes
            filler = b"x" * 65_536
            for _ in range(400):  # 25 MiB: more than any socket buffer holds
                stuck.feed.put_nowait(filler)
            await asyncio.wait_for(stuck.body_closed.wait(), 20)
            assert stuck.closes == 1
            await read_chunk(reader)  # retry:
            await live.feed.put(b"still here")
            assert await asyncio.wait_for(read_chunk(reader), 5) == b"data: still here\r\n\r\n"
            assert live.closes == 0
        finally:
            stuck_writer.close()
            writer.close()


async def test_a_cancelled_request_is_not_taken_for_a_client_leaving() -> None:
    """The helper task stops the stream by cancelling it; a cancel from elsewhere (uvicorn
    ending a request at the graceful-shutdown deadline) must still propagate."""
    probe = Probe()
    response = EventStream(probe.body(), ping=15, on_close=probe.on_close)
    sent: list[dict[str, Any]] = []
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await never.wait()
        raise AssertionError("unreachable")

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET"}
    task = asyncio.create_task(response(scope, receive, send))
    await asyncio.wait_for(probe.started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert probe.body_closed.is_set()
    assert probe.closes == 1
    assert sent[0]["type"] == "http.response.start"


async def test_disconnected_clients_leave_the_event_hub(settings: Settings) -> None:
    """Every open event stream holds a hub subscription; when its client goes, the gateway must
    drop the subscription (or idle dashboards would pile up in memory and in the fan-out)."""
    config = gateway_settings(settings)
    server = build_server(create_app(config), config)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    serve = asyncio.create_task(serve_until(server, stop, sockets=[sock]))
    writers: list[asyncio.StreamWriter] = []
    try:

        async def started() -> bool:
            assert not serve.done(), serve
            return bool(server.started)

        await wait_for(started, timeout=30)
        state = server.lifespan.state[STATE_KEY]
        assert isinstance(state, GatewayState)
        hub = state.hub
        for path in ["/events", "/workflows/wf_sse_unknown/events"] * 5:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writers.append(writer)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        assert hub.subscriber_count == 10
        for writer in writers:
            writer.close()

        async def all_gone() -> bool:
            return hub.subscriber_count == 0

        await wait_for(all_gone, timeout=3, what="every subscription closed")
    finally:
        for writer in writers:
            writer.close()
        stop.set()
        await serve
        sock.close()
