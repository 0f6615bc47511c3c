"""The real orchestrator service, run in the test's process on the test's namespace."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika

from relayflow.settings import Settings
from relayflow.topology import Topology
from services.orchestrator.__main__ import serve
from services.orchestrator.settings import OrchestratorSettings
from tests.support import wait_for


@contextlib.asynccontextmanager
async def running_orchestrator(settings: Settings, **overrides: Any) -> AsyncIterator[None]:
    """`serve()` with `overrides` of the orchestrator's settings, until the block ends; entered
    once it consumes (its queue has a consumer)."""
    own = OrchestratorSettings(**{**settings.model_dump(), **overrides})
    stop = asyncio.Event()
    task = asyncio.create_task(serve(own, stop))
    try:

        async def consuming() -> bool:
            if task.done():
                task.result()
            connection = await aio_pika.connect(settings.amqp_url)
            async with connection:
                channel = await connection.channel()
                try:
                    queue = await channel.declare_queue(
                        Topology(settings.namespace).orchestrator_queue, passive=True
                    )
                except aio_pika.exceptions.ChannelClosed:
                    return False
                return (queue.declaration_result.consumer_count or 0) > 0

        await wait_for(consuming)
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
