"""Thousands of idle event streams on one gateway process: what each costs in memory.

The gateway runs as its own process so that its resident memory can be read from /proc and the
client's sockets do not count. Half of the streams follow one workflow, half are dashboard feeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from relayflow.contracts import new_workflow_id
from relayflow.settings import Settings
from relayflow.testing_system import free_port
from tests.e2e.conftest import ROOT
from tests.support import wait_for

log = logging.getLogger(__name__)

STREAMS = 2000
WARM_UP = 100
# About 1.6 times the measured cost (about 20 KB: see the log line), so that RSS noise passes
# and a regression fails (with sse-starlette's task group per stream, each cost 48 KB).
MAX_BYTES_PER_STREAM = 32 * 1024


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc status")


@pytest.fixture
async def gateway_process(settings: Settings, tmp_path: Path) -> AsyncIterator[tuple[int, str]]:
    port = free_port()
    env = {
        **os.environ,
        "AMQP_URL": settings.amqp_url,
        "DATABASE_URL": settings.database_url,
        "RELAYFLOW_NAMESPACE": settings.namespace,
        "RELAYFLOW_GATEWAY_PORT": str(port),
        "RELAYFLOW_LOG_LEVEL": "WARNING",
        # Keys other tests made in the run's shared database would switch it to required.
        "RELAYFLOW_AUTH": "off",
        # Thousands of streams from one address, opened 200 at a time: over the default limits.
        "RELAYFLOW_RATE_LIMIT": "0",
        "RELAYFLOW_MAX_STREAMS": "0",
    }
    with (tmp_path / "gateway.log").open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.gateway", cwd=ROOT, env=env, stdout=out, stderr=out
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=5) as client:

            async def ready() -> bool:
                assert process.returncode is None, (tmp_path / "gateway.log").read_text()
                with contextlib.suppress(httpx.TransportError):
                    return (await client.get(f"{base_url}/readyz")).status_code == 200
                return False

            await wait_for(ready, timeout=30)
        yield process.pid, base_url
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 30)


Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def open_stream(port: int, path: str, streams: list[Stream]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    streams.append((reader, writer))
    writer.write(f"GET {path} HTTP/1.1\r\nHost: gw\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    assert b"retry:" in await reader.readuntil(b"\r\n\r\n")  # the stream is being served


async def open_streams(port: int, paths: list[str], streams: list[Stream]) -> None:
    for start in range(0, len(paths), 200):
        await asyncio.gather(*(open_stream(port, p, streams) for p in paths[start : start + 200]))


async def still_open(reader: asyncio.StreamReader) -> bool:
    """Whether the gateway has not ended this stream (what it sent meanwhile is dropped)."""
    while True:
        try:
            async with asyncio.timeout(0.2):
                if not await reader.read(65_536):
                    return False
        except TimeoutError:
            return True


async def test_idle_streams_cost_little_memory(
    gateway_process: tuple[int, str], pool: asyncpg.Pool[Any]
) -> None:
    """Thousands of open dashboards must be affordable: each idle stream (its connection, the
    request's task and one helper task, a subscription) may cost at most a few tens of KiB of
    gateway memory."""
    pid, base_url = gateway_process
    port = int(base_url.rsplit(":", 1)[1])
    workflow_id = new_workflow_id()
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at, updated_at)
        VALUES ($1, 'formSubmission', 'running', '{}', 'h', '{}', now(), now())
        """,
        workflow_id,
    )
    paths = [f"/workflows/{workflow_id}/events", "/events"]
    streams: list[Stream] = []
    try:
        await open_streams(port, [paths[i % 2] for i in range(WARM_UP)], streams)
        before = rss_bytes(pid)
        await open_streams(port, [paths[i % 2] for i in range(STREAMS)], streams)
        after = rss_bytes(pid)
        # A stream that ended early would cost nothing and flatter the figure.
        open_now = await asyncio.gather(*(still_open(reader) for reader, _ in streams))
        assert all(open_now), f"{open_now.count(False)} streams ended while idle"
    finally:
        for _, writer in streams:
            writer.close()
    per_stream = (after - before) / STREAMS
    log.warning(
        "%d idle streams: gateway RSS %.1f -> %.1f MiB, %.0f bytes per stream",
        STREAMS,
        before / 2**20,
        after / 2**20,
        per_stream,
    )
    assert per_stream < MAX_BYTES_PER_STREAM
