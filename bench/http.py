"""A minimal HTTP/1.1 client over asyncio streams, for loopback only.

httpx would do, but at a few hundred requests a second its own CPU shows up in the machine's CPU
per workflow; this client costs little more than the socket calls, so the figures are the
services'. It knows just what the bench needs: a JSON POST on a keep-alive connection and an SSE
stream read until a terminal event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import orjson

_HEAD_LIMIT = 64 * 1024


class HttpError(RuntimeError):
    """The server answered something the bench did not expect."""


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    body: bytes

    def json(self) -> object:
        return orjson.loads(self.body)

    def text_field(self, name: str) -> str:
        """A string member of a JSON object body (a 202's `workflowId`, say)."""
        document = self.json()
        value = document.get(name) if isinstance(document, dict) else None
        if not isinstance(value, str):
            raise HttpError(f"no string {name!r} in {self.body[:200]!r}")
        return value


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > _HEAD_LIMIT:
        raise HttpError("response head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise HttpError(f"bad status line {lines[0]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


async def _read_chunk(reader: asyncio.StreamReader) -> bytes:
    """One chunk of a chunked body; b"" for the last one."""
    size_line = await reader.readuntil(b"\r\n")
    size = int(size_line.split(b";", 1)[0].strip(), 16)
    if size == 0:
        await reader.readuntil(b"\r\n")  # no trailers expected
        return b""
    data = await reader.readexactly(size + 2)
    return data[:-2]


class Connection:
    """One keep-alive connection for requests with small bodies; reconnects when closed."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post_json(
        self,
        path: str,
        body: object,
        *,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> Response:
        payload = orjson.dumps(body)
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        async with asyncio.timeout(timeout):
            for attempt in range(2):
                if self._writer is None:
                    self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
                assert self._reader is not None
                try:
                    self._writer.write(request)
                    return await self._response(self._reader)
                except (ConnectionError, asyncio.IncompleteReadError):
                    await self.close()
                    if attempt:
                        raise
        raise AssertionError("unreachable")

    async def _response(self, reader: asyncio.StreamReader) -> Response:
        status, headers = await _read_head(reader)
        if headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while chunk := await _read_chunk(reader):
                chunks.append(chunk)
            body = b"".join(chunks)
        else:
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return Response(status, body)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


OnEvent = Callable[[str, float], None]


class EventStream:
    """An SSE stream (`GET path`, `Accept: text/event-stream`), opened before it is read, so
    that a caller can open many and then wait for them all to be attached."""

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host = host
        self.port = port
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        """Connect and send the request; returns once the response head (200) is in."""
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        self._writer.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n".encode()
        )
        status, headers = await _read_head(self._reader)
        if status != 200:
            raise HttpError(f"GET {self.path} answered {status}")
        if headers.get("transfer-encoding", "").lower() != "chunked":
            raise HttpError("expected a chunked event stream")

    async def read_until(
        self, terminal: frozenset[str], on_event: OnEvent | None = None, timeout: float = 60.0
    ) -> str:
        """Read events until one named in `terminal`; return its name. `on_event(name, t)` is
        called for every event with the loop time it arrived."""
        assert self._reader is not None
        loop = asyncio.get_running_loop()
        buffer = b""
        event = "message"
        async with asyncio.timeout(timeout):
            while True:
                chunk = await _read_chunk(self._reader)
                if not chunk:
                    raise HttpError(f"stream {self.path} ended without a terminal event")
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    line = line.rstrip(b"\r")
                    if line.startswith(b"event:"):
                        event = line[6:].strip().decode()
                    elif not line:
                        if event != "message" and on_event is not None:
                            on_event(event, loop.time())
                        if event in terminal:
                            return event
                        event = "message"

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
