"""Tenants at the gateway, against a real gateway, PostgreSQL and RabbitMQ: a key sees and acts
on its own tenant's workflows only — another tenant's is 404 on every route (never 403), absent
from the list and from `/events` — what it starts is its tenant's, and its Idempotency-Keys are
its own namespace."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.auth import AuthSettings, CreatedKey, KeyHasher, Role
from relayflow.contracts import (
    EventType,
    StartWorkflow,
    WorkflowEvent,
    decode,
    new_message_id,
    new_workflow_id,
    workflow_id_for_key,
)
from relayflow.settings import Settings
from relayflow.topology import Topology
from tests.integration.gateway_harness import RunningGateway, made_keys, running_gateway
from tests.support import get_messages

SECRET = SecretStr("gateway-tenants-integration-test-secret-0123456789")
AUTH = AuthSettings(secret=SECRET)
HASHER = KeyHasher.from_secret(SECRET)
FORM = {"name": "Ada", "email": "ada@example.com", "message": "hi"}


def bearer(created: CreatedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {created.key}"}


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(
        settings, AUTH, auth="required", gateway_unknown_workflow_wait=0.5
    ) as gateway:
        yield gateway


@pytest.fixture
async def keys(pool: asyncpg.Pool[Any]) -> AsyncIterator[tuple[CreatedKey, CreatedKey]]:
    """Operator keys (every action but managing keys) of two tenants."""
    async with made_keys(pool, HASHER) as ours, made_keys(pool, HASHER) as theirs:
        yield await ours(Role.OPERATOR), await theirs(Role.OPERATOR)


async def stored(pool: asyncpg.Pool[Any], tenant: str, status: str) -> str:
    """A workflow of `tenant` with its started event (and its end, when it has ended)."""
    workflow_id = new_workflow_id()
    events = [EventType.WORKFLOW_STARTED]
    if status != "running":
        events.append(EventType(f"workflow.{status}"))
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at,
                               updated_at, last_seq, tenant)
        VALUES ($1, 'formSubmission', $2, $3, 'h', '{}'::jsonb, now(), now(), $4, $5)
        """,
        workflow_id,
        status,
        FORM,
        len(events),
        tenant,
    )
    for seq, event in enumerate(events, start=1):
        body = WorkflowEvent(
            message_id=new_message_id(),
            workflow_id=workflow_id,
            workflow_name="formSubmission",
            seq=seq,
            event=event,
            tenant=tenant,
        )
        await pool.execute(
            "INSERT INTO workflow_events (workflow_id, seq, event, body, created_at) "
            "VALUES ($1, $2, $3, $4, now())",
            workflow_id,
            seq,
            str(event),
            body.model_dump(mode="json", by_alias=True, exclude_none=True),
        )
    return workflow_id


async def test_another_tenants_workflow_is_not_found_on_any_route(
    gateway: RunningGateway, keys: tuple[CreatedKey, CreatedKey], pool: asyncpg.Pool[Any]
) -> None:
    ours, theirs = keys
    tenant = theirs.record.tenant
    running = await stored(pool, tenant, "running")
    failed = await stored(pool, tenant, "failed")
    routes: list[tuple[str, str, Any]] = [
        ("GET", f"/workflows/{running}", None),
        ("GET", f"/workflows/{running}/steps/validate/items", None),
        ("POST", f"/workflows/{running}/cancel", {}),
        ("POST", f"/workflows/{failed}/retry", {}),
        ("POST", f"/workflows/{running}/signals/approval", {}),
        ("GET", f"/ui/workflows/{running}", None),
        ("GET", f"/ui/workflows/{running}/panel", None),
    ]
    client = gateway.client
    for method, path, body in routes:
        mine = await client.request(method, path, json=body, headers=bearer(theirs))
        assert mine.status_code != 404 or "no workflow with id" not in mine.text, (path, mine.text)
        other = await client.request(method, path, json=body, headers=bearer(ours))
        assert other.status_code == 404, (path, other.status_code, other.text)
        if not path.startswith("/ui/"):
            assert "no workflow with id" in other.json()["error"], path


async def test_another_tenants_event_stream_is_that_of_a_workflow_that_never_appears(
    gateway: RunningGateway, keys: tuple[CreatedKey, CreatedKey], pool: asyncpg.Pool[Any]
) -> None:
    ours, theirs = keys
    done = await stored(pool, theirs.record.tenant, "completed")
    client = gateway.client
    path = f"/workflows/{done}/events"
    # Its own tenant replays it to the end; having seen the end, it is told to stop (204).
    replayed = await client.get(path, headers=bearer(theirs))
    assert [line for line in replayed.text.splitlines() if line.startswith("event:")] == [
        "event: workflow.started",
        "event: workflow.completed",
    ]
    resumed = await client.get(path, headers={**bearer(theirs), "Last-Event-ID": "2"})
    assert resumed.status_code == 204
    # Another tenant gets nothing of it, and then what an id nobody started gets.
    for headers in (bearer(ours), {**bearer(ours), "Last-Event-ID": "2"}):
        other = await client.get(path, headers=headers)
        assert other.status_code == 200
        assert done in other.text  # the "unknown" event names the id it was asked for
        assert "workflow.started" not in other.text
        assert "event: workflow.unknown" in other.text
    # A stream token it mints for that id opens the same nothing.
    minted = await client.post("/stream-tokens", json={"workflowId": done}, headers=bearer(ours))
    assert minted.status_code == 200
    by_token = await client.get(path, params={"token": minted.json()["token"]})
    assert "workflow.started" not in by_token.text
    assert "event: workflow.unknown" in by_token.text


async def test_the_list_shows_a_tenant_only_its_own(
    gateway: RunningGateway, keys: tuple[CreatedKey, CreatedKey], pool: asyncpg.Pool[Any]
) -> None:
    ours, theirs = keys
    mine = {await stored(pool, ours.record.tenant, "running") for _ in range(2)}
    other = await stored(pool, theirs.record.tenant, "running")
    listed = await gateway.client.get("/workflows", params={"limit": 100}, headers=bearer(ours))
    assert listed.status_code == 200
    assert {item["workflowId"] for item in listed.json()["items"]} == mine
    page = await gateway.client.get("/", headers=bearer(theirs))
    assert other in page.text
    assert not any(workflow_id in page.text for workflow_id in mine)


async def feed_until(
    client: httpx.AsyncClient, key: CreatedKey, wanted: str, opened: asyncio.Event
) -> str:
    """The `/events` stream of `key` up to the first event of workflow `wanted`."""
    seen: list[str] = []
    async with client.stream("GET", "/events", headers=bearer(key)) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("event: reset"):
                opened.set()
            seen.append(line)
            if line.startswith("data:") and wanted in line:
                return "\n".join(seen)
    raise AssertionError(f"the feed ended before {wanted} appeared")


async def test_the_feed_shows_a_tenant_only_its_own_events(
    gateway: RunningGateway,
    keys: tuple[CreatedKey, CreatedKey],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    ours, theirs = keys
    mine, other = new_workflow_id(), new_workflow_id()
    opened = asyncio.Event(), asyncio.Event()
    ours_feed = asyncio.create_task(feed_until(gateway.client, ours, mine, opened[0]))
    theirs_feed = asyncio.create_task(feed_until(gateway.client, theirs, other, opened[1]))
    await asyncio.wait_for(asyncio.gather(opened[0].wait(), opened[1].wait()), 20)
    publisher = await Publisher.open(amqp_connection)
    try:
        # Theirs first: were it let through, ours would see it before its own.
        for workflow_id, key in ((other, theirs), (mine, ours)):
            event = WorkflowEvent(
                message_id=new_message_id(),
                workflow_id=workflow_id,
                workflow_name="formSubmission",
                seq=1,
                event=EventType.WORKFLOW_STARTED,
                tenant=key.record.tenant,
            )
            await publisher.publish(
                OutgoingMessage.of(
                    event, exchange=topology.events_exchange, routing_key="", mandatory=False
                )
            )
        ours_seen = await asyncio.wait_for(ours_feed, 20)
        await asyncio.wait_for(theirs_feed, 20)
    finally:
        await publisher.close()
        for task in (ours_feed, theirs_feed):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, AssertionError):
                await task
    assert other not in ours_seen


async def test_a_start_is_the_callers_tenants_and_keys_are_per_tenant(
    gateway: RunningGateway,
    keys: tuple[CreatedKey, CreatedKey],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    ours, theirs = keys
    answers = []
    # The same Idempotency-Key, even with another body, is another tenant's other request.
    for key, body in ((ours, FORM), (theirs, {**FORM, "name": "Grace"})):
        answer = await gateway.client.post(
            "/submit", json=body, headers={**bearer(key), "Idempotency-Key": "order-1"}
        )
        assert answer.status_code == 202, answer.text
        answers.append(answer.json()["workflowId"])
    assert answers == [
        workflow_id_for_key("formSubmission", "order-1", ours.record.tenant),
        workflow_id_for_key("formSubmission", "order-1", theirs.record.tenant),
    ]
    channel = await amqp_connection.channel()
    try:
        starts = [
            decode(message.body)
            async for message in get_messages(channel, topology.orchestrator_queue, count=2)
        ]
    finally:
        await channel.close()
    tenants = {
        start.workflow_id: start.tenant for start in starts if isinstance(start, StartWorkflow)
    }
    assert tenants == {answers[0]: ours.record.tenant, answers[1]: theirs.record.tenant}
    # Within a tenant, the key still binds its body.
    again = await gateway.client.post(
        "/submit",
        json={**FORM, "name": "Grace"},
        headers={**bearer(ours), "Idempotency-Key": "order-1"},
    )
    assert again.status_code == 409
