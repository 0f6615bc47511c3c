"""Broker and database restarts, and cut, black-holed and slow links to them."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.support import wait_for
from tests.tools.cluster import SERVICES, Cluster
from tests.tools.ledger import WORKFLOW_NAME
from tests.tools.private_services import PrivatePostgres, PrivateRabbit

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

SLOW = {"RELAYFLOW_LEDGER_DELAY": "0.3"}


# What each parametrised fault touches: the orchestrator's AMQP link on its own, since it once
# failed to restore its consumer after a reconnect, which the others would have hidden.
AMQP_GROUPS = [
    pytest.param(("gateway", "steps", "external"), 120, id="gateway-steps-external"),
    pytest.param(("orchestrator",), 40, id="orchestrator"),
]
DB_GROUPS = [pytest.param(SERVICES, 120, id="all-services")]


@pytest.fixture
def cluster_env() -> dict[str, str]:
    return SLOW


async def test_broker_restart_mid_run(
    cluster: Cluster, client: httpx.AsyncClient, private_rabbit: PrivateRabbit
) -> None:
    """A broker restart closes every connection: each service must reconnect, restore its
    consumers and carry on, and no accepted workflow may be lost or run a step twice."""
    ids = await cluster.submit_many(client, 30, "broker-restart")
    assert len(ids) == 30
    await cluster.wait_in_flight(least=3)
    await private_rabbit.restart()
    await cluster.wait_ready(client)
    more = await cluster.submit_many(client, 10, "after-restart")
    await cluster.assert_exactly_once(ids + more, timeout=40)


async def test_postgres_restart_mid_run(
    cluster: Cluster, client: httpx.AsyncClient, private_postgres: PrivatePostgres
) -> None:
    """A database restart rolls back every open transaction (a step's effect among them): each
    must be retried whole, so every workflow completes with each effect committed once."""
    ids = await cluster.submit_many(client, 30, "pg-restart")
    assert len(ids) == 30
    await cluster.wait_in_flight(least=3)
    await private_postgres.restart(mode="fast")
    more = await cluster.submit_many(client, 10, "after-pg-restart")
    await cluster.assert_exactly_once(ids + more)


@pytest.mark.parametrize(
    ("link", "services", "timeout"),
    [
        *(pytest.param("amqp", *p.values, id=f"amqp-{p.id}", marks=p.marks) for p in AMQP_GROUPS),
        *(pytest.param("db", *p.values, id=f"db-{p.id}", marks=p.marks) for p in DB_GROUPS),
    ],
)
async def test_connections_cut(
    cluster: Cluster,
    client: httpx.AsyncClient,
    link: str,
    services: tuple[str, ...],
    timeout: float,
) -> None:
    """Connections cut at once mid-run (a network blip): the services reconnect, and the cut
    transactions and unacked deliveries are retried without duplicate effects."""
    ids = await cluster.submit_many(client, 30, f"cut-{link}")
    await cluster.wait_in_flight(least=3)
    for service in services:
        await getattr(cluster.links[service], link).cut()
    await cluster.assert_exactly_once(ids, timeout=timeout)


@pytest.mark.parametrize(
    ("link", "services", "timeout"),
    [
        *(pytest.param("amqp", *p.values, id=f"amqp-{p.id}", marks=p.marks) for p in AMQP_GROUPS),
        *(pytest.param("db", *p.values, id=f"db-{p.id}", marks=p.marks) for p in DB_GROUPS),
    ],
)
async def test_connections_black_holed(
    cluster: Cluster,
    client: httpx.AsyncClient,
    link: str,
    services: tuple[str, ...],
    timeout: float,
) -> None:
    """Links that go silent for a few seconds (no FIN, no RST) must be outlived: once they pass
    again, every workflow completes, each effect once."""
    ids = await cluster.submit_many(client, 20, f"hole-{link}")
    await cluster.wait_in_flight(least=3)
    for service in services:
        getattr(cluster.links[service], link).blackhole()
    try:
        # The outage itself: a span of silence is the fault being injected, not a wait.
        await asyncio.sleep(3)
    finally:
        for service in services:
            getattr(cluster.links[service], link).pass_through()
    await cluster.assert_exactly_once(ids, timeout=timeout)


@pytest.mark.parametrize("link", ["amqp", "db"])
async def test_slow_links(cluster: Cluster, client: httpx.AsyncClient, link: str) -> None:
    """A slow network (150 ms each way on every link) must slow the system, not break it."""
    for service in SERVICES:
        getattr(cluster.links[service], link).delay(150)
    ids = await cluster.submit_many(client, 10, f"slow-{link}")
    assert len(ids) == 10
    await cluster.assert_exactly_once(ids)


async def test_the_gateway_answers_503_while_the_database_is_down(
    cluster: Cluster, client: httpx.AsyncClient, private_postgres: PrivatePostgres
) -> None:
    """With PostgreSQL stopped, a request that needs it is a 503 with Retry-After (a client
    retries), never a 500; once it is back, the same requests succeed."""
    [workflow_id] = await cluster.submit_many(client, 1, "before-pg-stop")
    await cluster.wait_terminal([workflow_id])
    reads = [
        f"{cluster.base_url}/workflows/{workflow_id}",
        f"{cluster.base_url}/workflows?limit=5",
    ]
    await private_postgres.stop_server("fast")
    try:
        for url in reads:
            response = await client.get(url)
            assert response.status_code == 503, (url, response.status_code, response.text)
            assert response.headers["retry-after"] == "1"
            assert "retry shortly" in response.json()["error"]
        started = await client.post(
            f"{cluster.base_url}/workflows/{WORKFLOW_NAME}",
            json={"tag": "during-pg-stop"},
            headers={"Idempotency-Key": "during-pg-stop"},
        )
        assert started.status_code == 503, started.text
    finally:
        await private_postgres.start_server()

    async def served_again() -> bool:
        return all([(await client.get(url)).status_code == 200 for url in reads])

    await wait_for(served_again, what="the gateway to read again once PostgreSQL is back")
    await cluster.assert_exactly_once([workflow_id])
