"""`order` served as a user of relayflow serves it: the run command pointed at this package
(`relayflow-run --app orders_app`) — gateway, orchestrator and step service, each a process, on
a database and a queue namespace of this test's own — and orders started over HTTP and followed
to their end; the application's tables show each effect once."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from conftest import AMQP_URL
from orders_app.steps import steps
from orders_app.workflows import ORDER

from relayflow.testing_system import RunningApp, running_app
from relayflow.topology import Topology

pytestmark = pytest.mark.e2e

ENDED = {"completed", "failed", "compensated", "compensation_failed", "cancelled"}
HELD = "SELECT count(*) FROM order_reservations WHERE workflow_id = $1 AND released_at IS NULL"


async def delete_namespace(namespace: str) -> None:
    topology = Topology(namespace)
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        # Every task's queue and every body's: the step service declares those of local ones too.
        served = {*ORDER.task_names(), *steps.names()}
        for queue in [*topology.queue_bindings(served), topology.dead_letter_queue]:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(queue)
        for exchange in (
            topology.exchange,
            topology.events_exchange,
            topology.dead_letter_exchange,
        ):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(exchange)


@pytest.fixture(scope="module")
async def served(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningApp]:
    namespace = f"orders-{uuid.uuid4().hex[:10]}"
    try:
        async with running_app(
            [sys.executable, "-m", "relayflow.supervisor"],
            app="orders_app",
            amqp_url=AMQP_URL,
            database_url=database_url,
            namespace=namespace,
            cwd=tmp_path_factory.mktemp("run"),
            ready_within=60,
        ) as app:
            yield app
    finally:
        await delete_namespace(namespace)


async def until(condition: Callable[[], Awaitable[Any]], *, within: float, what: str) -> Any:
    """Poll `condition` until it returns something truthy, or fail saying what never came."""
    deadline = asyncio.get_running_loop().time() + within
    while not (value := await condition()):
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{what} within {within:g}s")
        await asyncio.sleep(0.1)
    return value


async def run_order(served: RunningApp, order: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=served.base_url, timeout=10) as client:
        response = await client.post("/workflows/order", json=order)
        assert response.status_code == 202, response.text
        workflow_id = response.json()["workflowId"]

        async def ended() -> dict[str, Any] | None:
            found = await client.get(f"/workflows/{workflow_id}")
            body: dict[str, Any] = found.json()
            return body if found.status_code == 200 and body["status"] in ENDED else None

        ran: dict[str, Any] = await until(
            ended, within=60, what=f"order {workflow_id} did not end ({served.log})"
        )
        return ran


def an_order(**changes: Any) -> dict[str, Any]:
    return {
        "orderId": f"o-{uuid.uuid4().hex[:8]}",
        "items": [{"sku": f"sku-{n}", "qty": n, "unitPrice": 100} for n in range(1, 6)],
        "card": "tok_visa",
        "country": "FR",
        **changes,
    }


async def test_an_order_runs_through_the_services(served: RunningApp, database_url: str) -> None:
    ran = await run_order(served, an_order())
    assert ran["status"] == "completed", ran
    assert ran["output"]["units"] == 15
    conn = await asyncpg.connect(database_url)
    try:
        reserved = await conn.fetchval(
            HELD,
            ran["workflowId"],
        )
        amount = await conn.fetchval(
            "SELECT amount FROM order_payments WHERE workflow_id = $1", ran["workflowId"]
        )
        tracking = await conn.fetchval(
            "SELECT tracking FROM order_shipments WHERE workflow_id = $1", ran["workflowId"]
        )
    finally:
        await conn.close()
    assert (reserved, amount, tracking) == (5, 1500, ran["output"]["tracking"])


async def test_a_declined_order_is_undone_through_the_services(
    served: RunningApp, database_url: str
) -> None:
    """The undo runs in the step service, for a step the orchestrator ran itself."""
    ran = await run_order(served, an_order(card="tok_declined"))
    assert ran["status"] == "compensated", ran
    conn = await asyncpg.connect(database_url)
    try:
        held = await conn.fetchval(
            HELD,
            ran["workflowId"],
        )
    finally:
        await conn.close()
    assert held == 0
