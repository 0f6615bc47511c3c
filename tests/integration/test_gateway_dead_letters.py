"""The operator's dead-letter routes and pages against a real gateway, RabbitMQ and PostgreSQL:
a message dead-lettered through the real topology is listed, shown whole (escaped on its page)
and re-driven back to its queue; looking consumes nothing; the roles and the tenant decide who
may look and who may re-drive; the overview reads every queue's depth from the broker."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest

from relayflow.amqp import Publisher, dead_letter
from relayflow.auth import CreatedKey, Role, create_key, revoke_key
from relayflow.contracts import DEFAULT_TENANT
from relayflow.settings import Settings
from relayflow.topology import Topology, step_key
from tests.integration.gateway_harness import RunningGateway, running_gateway
from tests.integration.test_gateway_auth import AUTH, HASHER, bearer
from tests.support import get_messages, unique_name, wait_for

STEP = "validate"  # a step of the seed workflow: its queue is in the gateway's topology
SCRIPT = "<script>alert(1)</script>"


async def dead_lettered(
    connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
    message_id: str,
    body: bytes = b'{"note": "' + SCRIPT.encode() + b'"}',
    reason: str = "not a StepCommand",
) -> None:
    """A message dead-lettered as our consumers do it: taken from its queue, then moved to the
    dead-letter exchange with a reason."""
    channel = await connection.channel()
    try:
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(body, message_id=message_id, type="StepCommand"),
            routing_key=step_key(STEP),
        )
        queue = await channel.get_queue(topology.step_queue(STEP), ensure=False)

        async def taken() -> aio_pika.abc.AbstractIncomingMessage | None:
            return await queue.get(fail=False, no_ack=False)

        message = await wait_for(taken, timeout=10)
        publisher = await Publisher.open(connection)
        try:
            await dead_letter(publisher, topology.dead_letter_exchange, message, reason)
        finally:
            await publisher.close()
    finally:
        await channel.close()


async def listed_ids(gateway: RunningGateway, headers: dict[str, str] | None = None) -> list[str]:
    response = await gateway.client.get("/dead-letters", headers=headers or {})
    assert response.status_code == 200, response.text
    return [str(item["messageId"]) for item in response.json()["items"]]


async def until_listed(
    gateway: RunningGateway, count: int, headers: dict[str, str] | None = None
) -> list[str]:
    async def enough() -> list[str] | None:
        ids = await listed_ids(gateway, headers)
        return ids if len(ids) >= count else None

    listed: list[str] = await wait_for(enough, timeout=10)
    return listed


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings) as gateway:
        yield gateway


async def test_list_show_and_redrive_a_dead_letter(
    gateway: RunningGateway,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    """The operator's loop: see why a message was dead-lettered and from where, read it whole,
    re-drive it once the cause is fixed, and find it back on its queue and gone from the DLQ."""
    await dead_lettered(amqp_connection, topology, "dl-a")
    await dead_lettered(amqp_connection, topology, "dl-b", body=b"not json", reason="broken")
    assert await until_listed(gateway, 2) == ["dl-a", "dl-b"]

    page = (await gateway.client.get("/dead-letters")).json()
    assert page["queue"] == topology.dead_letter_queue
    assert page["seen"] == 2
    assert page["next"] is None
    first = page["items"][0]
    assert first["reason"] == "not a StepCommand"
    assert first["type"] == "StepCommand"
    assert first["routingKey"] == step_key(STEP)
    assert first["exchange"] == topology.exchange
    assert first["ageSeconds"] is not None
    paged = (await gateway.client.get("/dead-letters", params={"offset": 1, "limit": 1})).json()
    assert [item["messageId"] for item in paged["items"]] == ["dl-b"]
    assert (await gateway.client.get("/dead-letters", params={"limit": 0})).status_code == 422

    shown = await gateway.client.get("/dead-letters/dl-a")
    assert shown.status_code == 200, shown.text
    assert shown.json()["body"] == {"note": SCRIPT}
    assert shown.json()["headers"]["x-relayflow-reason"] == "not a StepCommand"
    assert (await gateway.client.get("/dead-letters/dl-b")).json()["body"] == "not json"
    assert (await gateway.client.get("/dead-letters/nope")).status_code == 404

    listing = await gateway.client.get("/ui/dead-letters")
    assert listing.status_code == 200
    assert 'data-message-id="dl-a"' in listing.text
    assert "data-redrive-all" in listing.text  # open mode: anyone may
    detail = await gateway.client.get("/ui/dead-letters/dl-a")
    assert detail.status_code == 200
    assert SCRIPT not in detail.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail.text
    assert (await gateway.client.get("/ui/dead-letters/nope")).status_code == 404
    # Looking consumed nothing, and kept the order.
    assert await listed_ids(gateway) == ["dl-a", "dl-b"]

    missing = await gateway.client.post("/dead-letters/redrive", json={"messageIds": ["nope"]})
    assert missing.status_code == 404
    bodies: list[dict[str, Any]] = [
        {},
        {"all": True, "messageIds": ["dl-a"]},
        {"all": False},
        {"messageIds": []},
    ]
    for bad in bodies:
        assert (await gateway.client.post("/dead-letters/redrive", json=bad)).status_code == 422
    sent = await gateway.client.post("/dead-letters/redrive", json={"messageIds": ["dl-a"]})
    assert sent.status_code == 200, sent.text
    assert [item["messageId"] for item in sent.json()["redriven"]] == ["dl-a"]
    channel = await amqp_connection.channel()
    try:
        async for back in get_messages(channel, topology.step_queue(STEP), count=1):
            assert back.message_id == "dl-a"
            assert back.body == b'{"note": "' + SCRIPT.encode() + b'"}'
            assert "x-relayflow-reason" not in (back.headers or {})
    finally:
        await channel.close()
    assert await listed_ids(gateway) == ["dl-b"]

    everything = await gateway.client.post("/dead-letters/redrive", json={"all": True})
    assert [item["messageId"] for item in everything.json()["redriven"]] == ["dl-b"]
    assert await listed_ids(gateway) == []


async def test_the_overview_reads_every_queue_from_the_broker(
    gateway: RunningGateway,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    """Queue depths come from passive declarations of the topology's queues, no management
    API; a dead letter shows in its queue's count."""
    await dead_lettered(amqp_connection, topology, "dl-depth")
    await until_listed(gateway, 1)

    async def counted() -> httpx.Response | None:
        # Browsing hands the dead letter back: the count is 1 again once that has settled.
        page = await gateway.client.get("/ui/overview")
        assert page.status_code == 200, page.text
        row = page.text.split(f'data-queue="{topology.dead_letter_queue}"', 1)[1]
        return page if '<td class="num" data-messages>1</td>' in row.split("</tr>", 1)[0] else None

    page = await wait_for(counted, what="the dead letter counted in its queue")
    for queue in (topology.orchestrator_queue, topology.step_queue(STEP), topology.external_queue):
        assert f'data-queue="{queue}"' in page.text
    row = page.text.split(f'data-queue="{topology.dead_letter_queue}"', 1)[1]
    assert '<td class="num" data-messages>1</td>' in row.split("</tr>", 1)[0]
    assert 'id="outbox"' in page.text
    assert 'data-status-count="completed"' in page.text


@pytest.fixture
async def required_gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, AUTH, auth="required") as gateway:
        yield gateway


@pytest.fixture
async def keys(pool: asyncpg.Pool[Any]) -> AsyncIterator[dict[str, CreatedKey]]:
    """Keys of the default tenant (the namespace's own) by role, and an operator of another."""
    made: dict[str, CreatedKey] = {}
    async with pool.acquire() as conn:
        for name, tenant, role in (
            ("read", DEFAULT_TENANT, Role.READ),
            ("operator", DEFAULT_TENANT, Role.OPERATOR),
            ("submit", DEFAULT_TENANT, Role.SUBMIT),
            ("other", unique_name("t-"), Role.OPERATOR),
        ):
            made[name] = await create_key(conn, HASHER, tenant=tenant, role=role)
    yield made
    async with pool.acquire() as conn:
        for created in made.values():
            await revoke_key(conn, created.record.id)


async def test_a_read_key_looks_an_operator_redrives_another_tenant_sees_nothing(
    required_gateway: RunningGateway,
    keys: dict[str, CreatedKey],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    """Least privilege: looking is `read`, re-driving `operator`; and the queue holds any
    tenant's messages, so another tenant's key is refused both."""
    gateway = required_gateway
    client = gateway.client
    await dead_lettered(amqp_connection, topology, "dl-role")
    read, operator = bearer(keys["read"]), bearer(keys["operator"])
    assert await until_listed(gateway, 1, headers=read) == ["dl-role"]
    assert (await client.get("/dead-letters/dl-role", headers=read)).status_code == 200
    page = await client.get("/ui/dead-letters", headers=read)
    assert page.status_code == 200
    assert "data-redrive" not in page.text
    assert "data-read-only" in page.text
    refused = await client.post(
        "/dead-letters/redrive", json={"messageIds": ["dl-role"]}, headers=read
    )
    assert refused.status_code == 403
    assert "may not redrive" in refused.json()["error"]
    assert await listed_ids(gateway, read) == ["dl-role"]

    submit = bearer(keys["submit"])
    assert (await client.get("/dead-letters", headers=submit)).status_code == 403
    other = bearer(keys["other"])
    for method, path in (
        ("GET", "/dead-letters"),
        ("GET", "/dead-letters/dl-role"),
        ("GET", "/ui/dead-letters"),
        ("POST", "/dead-letters/redrive"),
    ):
        response = await client.request(method, path, json={"all": True}, headers=other)
        assert response.status_code == 403, (method, path)
    overview = await client.get("/ui/overview", headers=other)
    assert overview.status_code == 200
    assert 'id="outbox"' not in overview.text  # the namespace's, not this tenant's

    for method, path in (("GET", "/dead-letters"), ("POST", "/dead-letters/redrive")):
        assert (await client.request(method, path, json={})).status_code == 401
    page = await client.get("/ui/dead-letters")
    assert page.status_code == 303  # a page: to sign in

    sent = await client.post("/dead-letters/redrive", json={"all": True}, headers=operator)
    assert sent.status_code == 200, sent.text
    assert [item["messageId"] for item in sent.json()["redriven"]] == ["dl-role"]
    assert await listed_ids(gateway, read) == []
