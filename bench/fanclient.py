"""The fan-out run's subscribers: thousands of SSE streams read by the bench process, each event
stamped with the time the kernel put its bytes on the client's socket (SO_TIMESTAMPNS), not only
the time this process got round to reading them.

What is measured must be the gateway. One Python process reading 10,000 streams reaches the
last of them long after its bytes arrived (on 2 cores it also competes with the gateway for CPU),
so a timestamp taken at read time adds the reader's own lag to the spread. The kernel's receive
timestamp is when the gateway's write reached the socket — what a browser on its own machine
would see — however late this process reads it; both are kept, so that the difference shows.
Each stream is a non-blocking socket with a reader callback (no task, no `StreamReader`), which
keeps the reader's share of the CPU small.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from dataclasses import dataclass

from bench.http import HttpError

# Linux's value (asm-generic/socket.h, SO_TIMESTAMPNS_OLD); the socket module does not name it.
SO_TIMESTAMPNS = 35
_ANCILLARY = socket.CMSG_SPACE(16)  # one struct timespec
_READ = 65_536


@dataclass(frozen=True, slots=True)
class Arrival:
    kernel: float  # when the event's bytes reached the socket (time.time()'s clock)
    read: float  # when this process read them


def _stamp(ancillary: list[tuple[int, int, bytes]]) -> float | None:
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= 16:
            seconds, nanoseconds = struct.unpack("qq", data[:16])
            return int(seconds) + int(nanoseconds) / 1e9
    return None


class Subscriber:
    """One SSE stream (`GET path`): `open` returns once the response head is in; then every
    event's first arrival is recorded by name, and `done` resolves with the name of the first
    event in `terminal` (or fails if the stream ends or breaks before one)."""

    def __init__(self, host: str, port: int, path: str, terminal: frozenset[str]) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.terminal = terminal
        self.arrivals: dict[str, Arrival] = {}
        self.done: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._sock: socket.socket | None = None
        self._reading = False
        self._raw = b""  # chunked framing not parsed yet
        self._need: int | None = None  # bytes of the current chunk (with its CRLF) still due
        self._text = b""  # SSE lines not complete yet
        self._event = "message"

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        sock = self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        await loop.sock_connect(sock, (self.host, self.port))
        await loop.sock_sendall(
            sock,
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n".encode(),
        )
        head = b""
        while b"\r\n\r\n" not in head:
            data = await loop.sock_recv(sock, _READ)
            if not data:
                raise HttpError(f"GET {self.path}: closed before the response head")
            head += data
        head, self._raw = head.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").lower().split("\r\n")
        if not lines[0].startswith("http/1.1 200"):
            raise HttpError(f"GET {self.path} answered {lines[0]!r}")
        if "transfer-encoding: chunked" not in lines:
            raise HttpError("expected a chunked event stream")
        now = time.time()
        self._parse(now, now)
        if not self.done.done():
            loop.add_reader(sock.fileno(), self._readable)
            self._reading = True

    def _readable(self) -> None:
        assert self._sock is not None
        try:
            data, ancillary, _, _ = self._sock.recvmsg(_READ, _ANCILLARY)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._finish(exc)
            return
        read = time.time()
        if not data:
            self._finish(HttpError(f"stream {self.path} ended without a terminal event"))
            return
        self._raw += data
        self._parse(_stamp(ancillary) or read, read)

    def _parse(self, kernel: float, read: float) -> None:
        while not self.done.done():
            if self._need is None:
                end = self._raw.find(b"\r\n")
                if end < 0:
                    return
                size = int(self._raw[:end].split(b";", 1)[0], 16)
                self._raw = self._raw[end + 2 :]
                if size == 0:
                    self._finish(HttpError(f"stream {self.path} ended without a terminal event"))
                    return
                self._need = size + 2
            if len(self._raw) < self._need:
                return
            self._text += self._raw[: self._need - 2]
            self._raw = self._raw[self._need :]
            self._need = None
            self._lines(kernel, read)

    def _lines(self, kernel: float, read: float) -> None:
        while b"\n" in self._text and not self.done.done():
            line, self._text = self._text.split(b"\n", 1)
            line = line.rstrip(b"\r")
            if line.startswith(b"event:"):
                self._event = line[6:].strip().decode()
            elif not line:
                event, self._event = self._event, "message"
                if event == "message":
                    continue
                self.arrivals.setdefault(event, Arrival(kernel, read))
                if event in self.terminal:
                    self._finish(event)

    def _finish(self, outcome: str | Exception) -> None:
        self._stop_reading()
        if self.done.done():
            return
        if isinstance(outcome, Exception):
            self.done.set_exception(outcome)
        else:
            self.done.set_result(outcome)

    def _stop_reading(self) -> None:
        if self._reading and self._sock is not None:
            self._reading = False
            asyncio.get_running_loop().remove_reader(self._sock.fileno())

    def close(self) -> None:
        self._stop_reading()
        if not self.done.done():
            self.done.cancel()
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()
