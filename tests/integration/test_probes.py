"""The readiness and liveness probes (`relayflow.probes`) against the real broker and database:
what Kubernetes is told about a service must be the service's real state."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from aio_pika.abc import AbstractIncomingMessage

from relayflow.amqp import BatchConsumer
from relayflow.db import create_pool
from relayflow.probes import Probes, ProbeServer, ready_check
from relayflow.settings import Settings
from relayflow.topology import Topology
from services.steps.service import serve
from services.steps.settings import StepServiceSettings
from tests.support import unique_name, wait_for


@contextlib.contextmanager
def served(probes: Probes, stop: asyncio.Event) -> Iterator[str]:
    """`probes` bound to this loop and served on a free port; its base URL."""
    probes.bind(asyncio.get_running_loop(), stop)
    server: ProbeServer = probes.serve("127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


async def test_a_step_service_is_ready_once_it_consumes_and_unready_once_stopping(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    """A rollout must wait for the new pod to consume, and a terminating pod must stop counting
    as available at once, while its loop — still draining — stays live."""
    probes = Probes()
    stop = asyncio.Event()
    service_settings = StepServiceSettings(
        AMQP_URL=settings.amqp_url,
        DATABASE_URL=settings.database_url,
        namespace=settings.namespace,
        steps=["validate"],
    )
    with served(probes, stop) as base:
        response = await client.get(f"{base}/readyz")
        assert (response.status_code, response.json()) == (503, {"status": "starting"})
        assert (await client.get(f"{base}/livez")).status_code == 200
        task = asyncio.create_task(serve(service_settings, stop, probes))
        try:

            async def ready() -> httpx.Response | None:
                if task.done():
                    task.result()
                answer = await client.get(f"{base}/readyz")
                return answer if answer.status_code == 200 else None

            answer: httpx.Response = await wait_for(ready, what="the step service ready")
            assert answer.json() == {
                "status": "ready",
                "database": True,
                "broker": True,
                "consumer": True,
            }
            assert answer.headers["content-type"] == "application/json"
            metrics = await client.get(f"{base}/metrics")
            assert metrics.status_code == 200
            assert "process_cpu_seconds_total" in metrics.text
        finally:
            stop.set()
        response = await client.get(f"{base}/readyz")
        assert (response.status_code, response.json()) == (503, {"status": "stopping"})
        await asyncio.wait_for(task, timeout=15)


async def test_readiness_names_the_part_that_is_down(
    settings: Settings, amqp_url: str, database_url: str, client: httpx.AsyncClient
) -> None:
    """Each part is asked of the real resource: a stopped consumer, a closed pool and a closed
    broker connection each turn /readyz to 503, named."""
    topology = Topology.from_settings(settings)
    connection = await aio_pika.connect_robust(amqp_url)
    pool: asyncpg.Pool[Any] = await create_pool(database_url, min_size=1, max_size=2)
    channel = await connection.channel()
    queue = await channel.declare_queue(unique_name(f"{topology.namespace}.probe."), exclusive=True)

    async def settle(messages: Sequence[AbstractIncomingMessage]) -> None:
        for message in messages:
            await message.ack()

    consumer = BatchConsumer(queue, settle)
    probes = Probes()
    try:
        with served(probes, asyncio.Event()) as base:
            await consumer.start()
            probes.ready_when(
                ready_check(connection=connection, consuming=lambda: consumer.consuming, pool=pool)
            )

            async def parts() -> tuple[int, dict[str, object]]:
                response = await client.get(f"{base}/readyz")
                return response.status_code, response.json()

            ready = {"database": True, "broker": True, "consumer": True}
            assert await parts() == (200, {"status": "ready", **ready})
            await consumer.stop()
            unavailable = {"status": "unavailable", **ready}
            assert await parts() == (503, {**unavailable, "consumer": False})
            await pool.close()
            assert await parts() == (503, {**unavailable, "consumer": False, "database": False})
            await connection.close()
            assert await parts() == (
                503,
                {"status": "unavailable", "database": False, "broker": False, "consumer": False},
            )
    finally:
        await consumer.stop()
        await pool.close()
        await connection.close()


async def test_a_blocked_event_loop_fails_liveness_and_a_free_one_passes(
    client: httpx.AsyncClient,
) -> None:
    """/livez is answered on the loop: a loop stuck in sync code (a blocking call in a step
    body) must fail it, though the HTTP thread and /metrics still answer."""
    probes = Probes(live_timeout=0.2)
    with served(probes, asyncio.Event()) as base, ThreadPoolExecutor(1) as threads:
        assert (await client.get(f"{base}/livez")).json() == {"status": "ok"}
        answer = threads.submit(httpx.get, f"{base}/livez", timeout=10)
        time.sleep(1.0)  # noqa: ASYNC251 - blocking the loop is what is tested
        blocked = answer.result()
        assert blocked.status_code == 503
        assert blocked.json() == {"status": "unresponsive", "waitedSeconds": 0.2}
        assert (await client.get(f"{base}/livez")).status_code == 200
        assert (await client.post(f"{base}/livez")).status_code == 405
