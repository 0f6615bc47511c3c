"""A small TCP fault proxy: put it between a service and RabbitMQ or PostgreSQL and break the
link on purpose.

Modes:

- ``pass``: bytes flow both ways (optionally late, see ``delay``);
- ``cut``: an action, not a state: every open connection is closed at once (both sides see a
  reset or EOF), then the proxy passes again, so clients reconnect;
- ``blackhole``: connections are accepted and kept open but every byte is dropped, like a link
  that died without a FIN. Leaving black-hole mode closes the connections that lost bytes (their
  protocol streams are corrupt), as the peers' keep-alives eventually would;
- ``delay <ms>``: every chunk is forwarded that much later, in order.

In-process::

    async with FaultProxy(("127.0.0.1", 5672)) as proxy:
        url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
        await proxy.cut()
        proxy.blackhole(); ...; proxy.pass_through()

From another process: ``python -m tests.tools.fault_proxy --target 127.0.0.1:5672`` prints one
JSON line ``{"port": …, "control": …}``; send ``cut``, ``blackhole``, ``pass``, ``delay 200`` or
``status`` as one line to the control port (``send_command``) and read one line back.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from tests.tools.lifecycle import Lifecycle

log = logging.getLogger(__name__)

Mode = Literal["pass", "blackhole"]
_CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    dropped: bool = False

    def close(self) -> None:
        for writer in (self.client, self.upstream):
            with contextlib.suppress(Exception):
                # An abort (RST) is what a cut link looks like to both peers.
                writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class FaultProxy(Lifecycle):
    def __init__(
        self,
        target: tuple[str, int],
        *,
        listen: tuple[str, int] = ("127.0.0.1", 0),
        name: str = "proxy",
    ) -> None:
        self.target = target
        self._listen = listen
        self.name = name
        self.mode: Mode = "pass"
        self.delay_ms = 0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self.connections_accepted = 0
        self.cuts = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, *self._listen)

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("FaultProxy.start() has not been called")
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> tuple[str, int]:
        return (self._listen[0], self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._close_links(lambda _: True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    # -- faults ----------------------------------------------------------------------------

    @property
    def open_connections(self) -> int:
        return len(self._links)

    async def cut(self) -> int:
        """Close every open connection now; returns how many were cut. New ones pass."""
        count = self._close_links(lambda _: True)
        self.cuts += 1
        log.info("%s: cut %d connection(s)", self.name, count)
        # Let the cancelled pumps unwind before the caller looks at the world again.
        await asyncio.sleep(0)
        return count

    def blackhole(self) -> None:
        self.mode = "blackhole"
        log.info("%s: black-hole", self.name)

    def pass_through(self) -> None:
        """Back to passing bytes, with no delay. Connections that lost bytes are closed."""
        self.mode = "pass"
        self.delay_ms = 0
        closed = self._close_links(lambda link: link.dropped)
        log.info("%s: pass (closed %d black-holed connection(s))", self.name, closed)

    def delay(self, ms: int) -> None:
        if ms < 0:
            raise ValueError("delay must be >= 0 ms")
        self.delay_ms = ms
        log.info("%s: delay %d ms", self.name, ms)

    def status(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "delayMs": self.delay_ms,
            "connections": len(self._links),
            "accepted": self.connections_accepted,
            "cuts": self.cuts,
        }

    def _close_links(self, which: Callable[[_Link], bool]) -> int:
        chosen = [link for link in self._links if which(link)]
        for link in chosen:
            link.close()
            self._links.discard(link)
        return len(chosen)

    # -- forwarding ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_accepted += 1
        try:
            up_reader, up_writer = await asyncio.wait_for(
                asyncio.open_connection(*self.target), timeout=10
            )
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        link = _Link(client=writer, upstream=up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer)),
            asyncio.create_task(self._pump(link, up_reader, writer)),
        ]
        await asyncio.gather(*link.tasks, return_exceptions=True)
        link.close()
        self._links.discard(link)

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        # (due time, chunk) in arrival order: a delayed link stays ordered.
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        sender = asyncio.create_task(self._send(queue, writer))
        try:
            while True:
                chunk = await reader.read(_CHUNK)
                if not chunk:
                    break
                if self.mode == "blackhole":
                    link.dropped = True
                    continue
                queue.put_nowait((loop.time() + self.delay_ms / 1000, chunk))
            queue.put_nowait(None)
            await sender
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await sender
            link.close()

    @staticmethod
    async def _send(
        queue: asyncio.Queue[tuple[float, bytes] | None], writer: asyncio.StreamWriter
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            item = await queue.get()
            if item is None:
                with contextlib.suppress(OSError):
                    writer.write_eof()
                return
            due, chunk = item
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(chunk)
            await writer.drain()


# -- control from another process -----------------------------------------------------------


async def apply_command(proxy: FaultProxy, line: str) -> dict[str, object]:
    """Run one control command (`cut`, `blackhole`, `pass`, `delay <ms>`, `status`)."""
    words = line.split()
    if not words:
        raise ValueError("empty command")
    command, args = words[0].lower(), words[1:]
    if command == "cut":
        return {"ok": True, "cut": await proxy.cut()}
    if command == "blackhole":
        proxy.blackhole()
    elif command == "pass":
        proxy.pass_through()
    elif command == "delay" and len(args) == 1:
        proxy.delay(int(args[0]))
    elif command != "status":
        raise ValueError(f"unknown command {line!r}")
    return {"ok": True, **proxy.status()}


async def serve_control(
    proxy: FaultProxy, host: str = "127.0.0.1", port: int = 0
) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await apply_command(proxy, line.decode().strip())
                except ValueError as exc:
                    answer = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


async def send_command(port: int, command: str, host: str = "127.0.0.1") -> dict[str, object]:
    """Send one command to a proxy's control port and return its JSON answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    try:
        writer.write(command.encode() + b"\n")
        await writer.drain()
        answer: dict[str, object] = json.loads(await asyncio.wait_for(reader.readline(), 5))
        return answer
    finally:
        writer.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host or "127.0.0.1", int(port))


async def _main(argv: Sequence[str] | None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.tools.fault_proxy")
    parser.add_argument("--target", required=True, type=_address, help="host:port to forward to")
    parser.add_argument("--listen", default="127.0.0.1:0", type=_address)
    parser.add_argument("--control", default="127.0.0.1:0", type=_address)
    args = parser.parse_args(argv)
    proxy = FaultProxy(args.target, listen=args.listen)
    await proxy.start()
    control = await serve_control(proxy, *args.control)
    control_port = control.sockets[0].getsockname()[1]
    sys.stdout.write(json.dumps({"port": proxy.port, "control": control_port}) + "\n")
    sys.stdout.flush()
    try:
        await asyncio.Event().wait()
    finally:
        control.close()
        await proxy.stop()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_main(None))
