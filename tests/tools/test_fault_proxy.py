"""The fault proxy itself: each mode does what the failure-mode tests rely on."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import pytest

from tests.tools.fault_proxy import FaultProxy, send_command


@pytest.fixture
async def echo() -> AsyncIterator[tuple[str, int]]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    yield ("127.0.0.1", server.sockets[0].getsockname()[1])
    server.close()


async def roundtrip(port: int, payload: bytes = b"ping", timeout: float = 2) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), timeout)
    finally:
        writer.close()


async def test_pass_forwards_both_ways(echo: tuple[str, int]) -> None:
    """In pass mode the proxy must be invisible, or every other fault test measures the proxy."""
    async with FaultProxy(echo) as proxy:
        assert await roundtrip(proxy.port, b"hello") == b"hello"


async def test_cut_closes_open_connections_and_new_ones_pass(echo: tuple[str, int]) -> None:
    """A cut must reach the client as a closed connection, and the next connection must work."""
    async with FaultProxy(echo) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        assert await proxy.cut() == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 2)
        writer.close()
        assert await roundtrip(proxy.port) == b"ping"


async def test_blackhole_drops_bytes_then_pass_closes_the_corrupted_link(
    echo: tuple[str, int],
) -> None:
    """Black-hole must swallow bytes without closing anything (a silently dead link)."""
    async with FaultProxy(echo) as proxy:
        proxy.blackhole()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"lost")
        await writer.drain()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        assert proxy.open_connections == 1
        proxy.pass_through()
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 2)
        writer.close()
        assert await roundtrip(proxy.port) == b"ping"


async def test_delay_holds_each_chunk_back(echo: tuple[str, int]) -> None:
    """Delay must slow the link by about the configured time per direction, keeping order."""
    async with FaultProxy(echo) as proxy:
        proxy.delay(150)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await roundtrip(proxy.port, b"abc") == b"abc"
        assert loop.time() - started >= 0.29


async def test_controlled_from_another_process(echo: tuple[str, int]) -> None:
    """The chaos suite and humans drive a proxy running as its own process over its control port."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.tools.fault_proxy",
        "--target",
        f"{echo[0]}:{echo[1]}",
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        ports = json.loads(await asyncio.wait_for(process.stdout.readline(), 20))
        assert await roundtrip(ports["port"]) == b"ping"
        answer = await send_command(ports["control"], "blackhole")
        assert answer["mode"] == "blackhole"
        with pytest.raises(TimeoutError):
            await roundtrip(ports["port"], timeout=0.3)
        assert (await send_command(ports["control"], "pass"))["mode"] == "pass"
        assert (await send_command(ports["control"], "cut"))["ok"] is True
        assert (await send_command(ports["control"], "bogus"))["ok"] is False
        assert await roundtrip(ports["port"]) == b"ping"
    finally:
        process.terminate()
        await process.wait()
