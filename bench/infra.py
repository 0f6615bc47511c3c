"""The shared broker and database: per-run database names and queue namespaces, created and
removed by the harness, and waiting for processes to be ready."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import asyncpg

from relayflow.amqp.connection import connect_once

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True, slots=True)
class Infra:
    amqp_url: str
    server_url: str  # a PostgreSQL URL; its database part is replaced per system

    @classmethod
    def from_env(cls) -> Infra:
        return cls(
            amqp_url=os.environ.get("AMQP_URL", DEFAULT_AMQP_URL),
            server_url=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        )

    def database_url(self, name: str, scheme: str | None = None) -> str:
        parts = urlsplit(self.server_url)._replace(path=f"/{name}")
        if scheme is not None:
            parts = parts._replace(scheme=scheme)
        return urlunsplit(parts)

    async def create_database(self, name: str) -> str:
        admin = await asyncpg.connect(self.database_url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        return self.database_url(name)

    async def drop_database(self, name: str) -> None:
        admin = await asyncpg.connect(self.database_url("postgres"))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()

    async def delete_amqp(self, queues: Iterable[str], exchanges: Iterable[str]) -> None:
        """Remove a run's queues and exchanges from the shared broker (missing ones are fine)."""
        connection = await connect_once(self.amqp_url)
        try:
            for kind, names in (("queue", queues), ("exchange", exchanges)):
                for name in names:
                    channel = await connection.channel()
                    with contextlib.suppress(Exception):
                        if kind == "queue":
                            await channel.queue_delete(name)
                        else:
                            await channel.exchange_delete(name)
                    with contextlib.suppress(Exception):
                        await channel.close()
        finally:
            await connection.close()

    async def consumers(self, queue: str) -> int:
        connection = await connect_once(self.amqp_url)
        try:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return 0
            return declared.declaration_result.consumer_count or 0
        finally:
            await connection.close()


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


async def wait_until(
    condition: Callable[[], Awaitable[bool]], *, timeout: float, what: str, interval: float = 0.1
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await condition():
        if loop.time() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout:g}s")
        await asyncio.sleep(interval)


class Processes:
    """Child processes of one system, each logging to its own file under `log_dir`."""

    def __init__(self, log_dir: Path, env: dict[str, str]) -> None:
        self.log_dir = log_dir
        self.env = env
        self.running: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, role: str, *argv: str, env: dict[str, str] | None = None) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{role}.log").open("ab") as log:
            self.running[role] = await asyncio.create_subprocess_exec(
                *argv,
                cwd=ROOT,
                env={**self.env, **(env or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def python(self, role: str, *args: str, env: dict[str, str] | None = None) -> None:
        await self.start(role, sys.executable, *args, env=env)

    def check_alive(self) -> None:
        for role, process in self.running.items():
            if process.returncode is not None:
                tail = (self.log_dir / f"{role}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{role} exited with {process.returncode}:\n{tail}")

    def pids(self) -> dict[str, int]:
        return {role: process.pid for role, process in self.running.items()}

    async def stop(self, grace: float = 15.0) -> None:
        """SIGTERM each process (it stops its own children), then SIGKILL the process groups of
        those still running after `grace` seconds."""
        processes = [p for p in self.running.values() if p.returncode is None]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace):
                await asyncio.gather(*(p.wait() for p in processes))
        except TimeoutError:
            for process in processes:
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
            await asyncio.gather(*(p.wait() for p in processes))
        self.running.clear()
