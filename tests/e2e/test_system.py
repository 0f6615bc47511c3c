"""End to end: the real services as processes, driven over HTTP, SSE and the broker."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import asyncpg
import httpx
import orjson
import pytest

from relayflow.contracts import StartWorkflow, encode, new_message_id, workflow_id_for_key
from relayflow.contracts.asyncapi import DEAD_LETTER_MESSAGE
from relayflow.topology import (
    CONTROL_KEY,
    EXTERNAL_REQUEST_KEY,
    RESULT_KEY,
    SIGNAL_KEY,
    START_KEY,
    Topology,
    step_key,
)
from relayflow.workflow import WorkflowRegistry
from tests.contract.asyncapi_validation import (
    DOCUMENT_NAMESPACE,
    Sent,
    channel_errors,
    committed_document,
)
from tests.e2e.conftest import System
from tests.support import read_sse, wait_for

pytestmark = pytest.mark.e2e

STEPS = ["validate", "persist", "publishToMQ", "awaitResponse", "finalize"]


def form(tag: str = "") -> dict[str, str]:
    return {
        "name": f"Ada {tag}".strip(),
        "email": "ada@example.com",
        "message": f"hello {uuid.uuid4()}",
    }


async def stream_until_terminal(
    client: httpx.AsyncClient, url: str, timeout: float = 60
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout), client.stream("GET", url) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for event in read_sse(response):
            events.append(event)
            if event["event"] in ("workflow.completed", "workflow.failed"):
                break
    return events


async def wait_completed(
    client: httpx.AsyncClient, base_url: str, workflow_id: str, timeout: float = 60
) -> dict[str, Any]:
    async def completed() -> dict[str, Any] | None:
        response = await client.get(f"{base_url}/workflows/{workflow_id}")
        if response.status_code == 200 and response.json()["status"] in ("completed", "failed"):
            body: dict[str, Any] = response.json()
            return body
        return None

    result: dict[str, Any] = await wait_for(completed, timeout=timeout, interval=0.1)
    return result


def assert_complete_history(events: list[dict[str, Any]], workflow_id: str) -> None:
    assert [int(e["id"]) for e in events] == list(range(1, len(events) + 1))
    assert all(e["data"]["workflowId"] == workflow_id for e in events)
    assert events[0]["event"] == "workflow.started"
    assert events[-1]["event"] == "workflow.completed"
    completed = [e["data"]["stepName"] for e in events if e["event"] == "step.completed"]
    assert completed == STEPS


async def test_form_submission_completes_over_sse(system: System) -> None:
    """The quick-start promise: submit the form, get 202 at once, watch every step complete live."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{system.base_url}/submit", json=form())
        assert response.status_code == 202
        body = response.json()
        assert body["status"] == "accepted"
        events = await stream_until_terminal(
            client, f"{system.base_url}/workflows/{body['workflowId']}/events"
        )
        assert_complete_history(events, body["workflowId"])
        state = (await client.get(f"{system.base_url}/workflows/{body['workflowId']}")).json()
    assert state["status"] == "completed"
    assert [step["name"] for step in state["steps"]] == STEPS
    assert all(step["status"] == "completed" and step["attempts"] == 1 for step in state["steps"])
    assert state["output"]["status"] == "finalized"


async def test_same_idempotency_key_runs_one_workflow(
    system: System, pool: asyncpg.Pool[Any]
) -> None:
    """Retrying a submission with the same Idempotency-Key must not start a second workflow."""
    payload = form("idem")
    key = f"key-{uuid.uuid4()}"
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(
                client.post(
                    f"{system.base_url}/submit", json=payload, headers={"Idempotency-Key": key}
                )
                for _ in range(3)
            )
        )
        ids = {answer.json()["workflowId"] for answer in answers}
        assert [answer.status_code for answer in answers] == [202, 202, 202]
        assert len(ids) == 1
        workflow_id = ids.pop()
        await wait_completed(client, system.base_url, workflow_id)
        again = await client.post(
            f"{system.base_url}/submit", json=payload, headers={"Idempotency-Key": key}
        )
        assert again.json()["workflowId"] == workflow_id
        conflict = await client.post(
            f"{system.base_url}/submit", json=form("other"), headers={"Idempotency-Key": key}
        )
        assert conflict.status_code in (409, 422)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM form_submissions WHERE workflow_id = $1", workflow_id
        )
        == 1
    )
    assert (
        await pool.fetchval("SELECT count(*) FROM workflows WHERE idempotency_key = $1", key) == 1
    )


async def test_start_published_straight_to_the_broker_completes(
    system: System, amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    """Any program can start a workflow by publishing StartWorkflow itself, with the same
    idempotency as the gateway (the id derived from the key)."""
    key = f"direct-{uuid.uuid4()}"
    workflow_id = workflow_id_for_key("formSubmission", key)
    message = StartWorkflow(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        idempotency_key=key,
        workflow_name="formSubmission",
        input=form("direct"),
    )
    channel = await amqp_connection.channel(publisher_confirms=True, on_return_raises=True)
    exchange = await channel.get_exchange(Topology(system.namespace).exchange, ensure=False)
    for _ in range(2):
        await exchange.publish(
            aio_pika.Message(
                encode(message), message_id=new_message_id(), content_type="application/json"
            ),
            routing_key=START_KEY,
        )
    await channel.close()
    async with httpx.AsyncClient(timeout=10) as client:
        state = await wait_completed(client, system.base_url, workflow_id)
    assert state["status"] == "completed"


async def test_late_subscriber_gets_the_whole_history(system: System) -> None:
    """Opening the stream long after the workflow finished still yields every event, once, in
    order, and then the stream ends."""
    async with httpx.AsyncClient(timeout=10) as client:
        workflow_id = (await client.post(f"{system.base_url}/submit", json=form("late"))).json()[
            "workflowId"
        ]
        await wait_completed(client, system.base_url, workflow_id)
        events = await stream_until_terminal(
            client, f"{system.base_url}/workflows/{workflow_id}/events"
        )
        assert_complete_history(events, workflow_id)
        client.headers["Last-Event-ID"] = "3"
        resumed = await stream_until_terminal(
            client, f"{system.base_url}/workflows/{workflow_id}/events"
        )
    assert [int(e["id"]) for e in resumed] == list(range(4, len(events) + 1))


async def test_orchestrator_killed_mid_workflow_recovers_without_duplicate_effects(
    system: System, pool: asyncpg.Pool[Any], amqp_connection: aio_pika.abc.AbstractRobustConnection
) -> None:
    """SIGKILL of the orchestrator while workflows are in flight: once it is back, every workflow
    completes and no step's side effect happened twice."""
    async with httpx.AsyncClient(timeout=10) as client:
        answers = await asyncio.gather(
            *(client.post(f"{system.base_url}/submit", json=form(f"kill-{i}")) for i in range(20))
        )
        ids = [answer.json()["workflowId"] for answer in answers]

        async def some_waiting() -> bool:
            statuses = await pool.fetch(
                "SELECT steps->'awaitResponse'->>'status' AS wait FROM workflows"
                " WHERE id = ANY($1)",
                ids,
            )
            return any(row["wait"] == "waiting" for row in statuses)

        await wait_for(some_waiting, timeout=30, interval=0.02)
        await system.kill("orchestrator")
        unfinished = await pool.fetchval(
            "SELECT count(*) FROM workflows WHERE id = ANY($1) AND status = 'running'", ids
        )
        await system.start("orchestrator")
        for workflow_id in ids:
            state = await wait_completed(client, system.base_url, workflow_id, timeout=90)
            assert state["status"] == "completed", state
    assert unfinished > 0, "the kill came too late to interrupt anything"
    rows = await pool.fetch(
        "SELECT workflow_id, finalize_count FROM form_submissions WHERE workflow_id = ANY($1)", ids
    )
    assert sorted(row["workflow_id"] for row in rows) == sorted(ids)
    assert {row["finalize_count"] for row in rows} == {1}
    executions = await pool.fetch(
        "SELECT step_name, executions FROM step_invocations WHERE workflow_id = ANY($1)", ids
    )
    assert len(executions) == 4 * len(ids)
    assert {row["executions"] for row in executions} == {1}


async def test_captured_messages_travel_as_the_asyncapi_document_says(
    system: System,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
) -> None:
    """The contract test of the AsyncAPI document: every message a real run sends — the form,
    a batch import with its child, an approval signalled, cancelled and retried, a message
    dead-lettered — is captured from every exchange and checked against the committed
    document: its exchange and routing key are a channel there, the channel carries its type,
    and its payload, headers and AMQP properties validate against that message's schemas."""
    document = committed_document()
    topology = Topology(system.namespace)
    channel = await amqp_connection.channel()
    capture = await channel.declare_queue("", exclusive=True, auto_delete=True)
    main = await channel.get_exchange(topology.exchange, ensure=False)
    for key in [
        START_KEY,
        RESULT_KEY,
        SIGNAL_KEY,
        CONTROL_KEY,
        EXTERNAL_REQUEST_KEY,
        *(step_key(s) for s in registry.task_names()),
    ]:
        await capture.bind(main, routing_key=key)
    for fanout in (topology.events_exchange, topology.dead_letter_exchange):
        await capture.bind(await channel.get_exchange(fanout, ensure=False), routing_key="")
    broken = f"not-json-{uuid.uuid4()}"
    async with httpx.AsyncClient(timeout=10) as client:
        form_id = (await client.post(f"{system.base_url}/submit", json=form("capture"))).json()[
            "workflowId"
        ]
        batch = {"items": [{"sku": "CAP-1", "qty": 2}], "notify": True}
        batch_id = (
            await client.post(f"{system.base_url}/workflows/batchImport", json=batch)
        ).json()["workflowId"]
        approval = {"requestId": f"r-{uuid.uuid4()}", "amount": 5}
        approval_id = (
            await client.post(f"{system.base_url}/workflows/approval", json=approval)
        ).json()["workflowId"]
        # Nothing here serves quote's foreign `price` step: it waits, to be cancelled and retried.
        quote = {"currency": "EUR", "items": [{"sku": "CAP-1", "qty": 1, "unitCents": 1}]}
        quote_id = (await client.post(f"{system.base_url}/workflows/quote", json=quote)).json()[
            "workflowId"
        ]
        await wait_completed(client, system.base_url, form_id)
        await wait_completed(client, system.base_url, batch_id)

        async def status(workflow_id: str) -> str | None:
            response = await client.get(f"{system.base_url}/workflows/{workflow_id}")
            return str(response.json()["status"]) if response.status_code == 200 else None

        for action, after in (("", "running"), ("cancel", "cancelled"), ("retry", "running")):
            if action:
                answer = await client.post(
                    f"{system.base_url}/workflows/{quote_id}/{action}", json={}
                )
                assert answer.status_code == 202, answer.text

            async def reached(after: str = after) -> bool:
                return await status(quote_id) == after

            await wait_for(reached, timeout=30)
        await client.post(f"{system.base_url}/workflows/{quote_id}/cancel", json={})
        signalled = await client.post(
            f"{system.base_url}/workflows/{approval_id}/signals/decision",
            json={"approved": True, "by": "ada"},
        )
        assert signalled.status_code == 202, signalled.text

        async def approved() -> bool:
            return await status(approval_id) == "completed"

        await wait_for(approved, timeout=60)
    publisher = await amqp_connection.channel(publisher_confirms=True)
    await (await publisher.get_exchange(topology.exchange, ensure=False)).publish(
        aio_pika.Message(b"{not json", message_id=broken), routing_key=START_KEY
    )
    await publisher.close()
    ours = {form_id, batch_id, approval_id, quote_id}
    seen: set[tuple[str, str]] = set()
    failures: list[str] = []

    def concerns_us(message: aio_pika.abc.AbstractIncomingMessage) -> bool:
        if message.message_id == broken:
            return True
        try:
            body = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            return False
        if body.get("type") == "WorkflowEventBatch":
            return any(event["workflowId"] in ours for event in body["events"])
        # A child (the batch import's notification) names its parent.
        parent = (body.get("parent") or {}).get("workflowId")
        return body.get("workflowId") in ours or parent in ours

    async def dead_letter_seen() -> bool:
        while (message := await capture.get(fail=False, no_ack=True)) is not None:
            if not concerns_us(message):
                continue
            sent = Sent.received(message, system.namespace)
            if sent.exchange == DOCUMENT_NAMESPACE and message.message_id == broken:
                continue  # our own broken publish, before the orchestrator dead-lettered it
            channel_id, name, errors = channel_errors(document, sent)
            seen.add((str(channel_id), name))
            failures.extend(f"{channel_id}/{name} {message.message_id}: {e}" for e in errors)
        return ("deadLetters", DEAD_LETTER_MESSAGE) in seen

    await wait_for(dead_letter_seen, timeout=30, interval=0.05)
    await channel.close()
    assert not failures, "\n".join(failures)
    carried = {
        (channel_id, name)
        for channel_id, spec in document["channels"].items()
        if spec["bindings"]["amqp"]["is"] == "routingKey"
        for name in spec["messages"]
    }
    # Events travel in batches, one per transaction; a single WorkflowEvent is the batch's item.
    assert carried - seen == {("workflowEvents", "WorkflowEvent")}, sorted(carried - seen)
