"""`relayflow-admin`: listing and re-driving dead letters, cancelling and retrying workflows.

Runs on the shared broker in a namespace of its own (nothing is restarted here)."""

from __future__ import annotations

import asyncio
import os
import sys

import aio_pika
import orjson
import pytest

from relayflow.admin import DeadLetter, control, list_dead_letters, redrive
from relayflow.amqp import Publisher, dead_letter
from relayflow.contracts import CancelWorkflow, RetryWorkflow, new_message_id
from relayflow.topology import CONTROL_KEY, Topology, step_key
from tests.support import get_messages
from tests.tools.cluster import ROOT

STEP = "finalize"


async def _work_message(
    channel: aio_pika.abc.AbstractChannel, topology: Topology, body: bytes, message_id: str
) -> aio_pika.abc.AbstractIncomingMessage:
    exchange = await channel.get_exchange(topology.exchange, ensure=False)
    await exchange.publish(
        aio_pika.Message(body, message_id=message_id, type="StepCommand"),
        routing_key=step_key(STEP),
    )
    queue = await channel.get_queue(topology.step_queue(STEP))
    for _ in range(100):
        message = await queue.get(fail=False, no_ack=False)
        if message is not None:
            return message
        await asyncio.sleep(0.05)
    raise AssertionError("the work message did not arrive")


async def _declared(
    amqp_connection: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> aio_pika.abc.AbstractChannel:
    channel = await amqp_connection.channel()
    await topology.declare(channel, [STEP])
    return channel


async def test_list_shows_dead_letters_without_consuming_and_redrive_returns_them(
    amqp_connection: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> None:
    """An operator must see why and where from a message was dead-lettered without losing it,
    and re-drive it to where it came from once the cause is fixed."""
    channel = await _declared(amqp_connection, topology)
    publisher = await Publisher.open(amqp_connection)
    message = await _work_message(channel, topology, b'{"broken": true}', "dl-1")
    await dead_letter(publisher, topology.dead_letter_exchange, message, "not a StepCommand")
    # And one the broker dead-lettered itself (a reject without requeue: x-death headers).
    rejected = await _work_message(channel, topology, b'{"poison": true}', "dl-2")
    await rejected.reject(requeue=False)

    async def listed() -> dict[str, DeadLetter]:
        letters = await list_dead_letters(amqp_connection, topology)
        return {letter.message_id: letter for letter in letters}

    for _ in range(100):
        letters = await listed()
        if len(letters) == 2:
            break
        await asyncio.sleep(0.05)
    assert set(letters) == {"dl-1", "dl-2"}
    ours, brokers = letters["dl-1"], letters["dl-2"]
    assert ours.reason == "not a StepCommand"
    assert ours.routing_key == step_key(STEP)
    assert ours.age_seconds is not None
    assert brokers.reason == "broker: rejected"
    assert brokers.queue == topology.step_queue(STEP)
    assert set(await listed()) == {"dl-1", "dl-2"}, "listing consumed dead letters"

    sent = await redrive(amqp_connection, topology, message_ids=["dl-1"])
    assert [letter.message_id for letter in sent] == ["dl-1"]
    async for back in get_messages(channel, topology.step_queue(STEP), count=1):
        assert back.message_id == "dl-1"
        assert back.body == b'{"broken": true}'
        assert "x-relayflow-reason" not in (back.headers or {})
    assert set(await listed()) == {"dl-2"}
    sent = await redrive(amqp_connection, topology, message_ids=None)
    assert [letter.message_id for letter in sent] == ["dl-2"]
    assert await listed() == {}
    await publisher.close()
    await channel.close()


async def test_cli_lists_dead_letters(
    amqp_url: str, amqp_connection: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> None:
    """The command an operator types prints each dead letter's id, queue and reason."""
    channel = await _declared(amqp_connection, topology)
    publisher = await Publisher.open(amqp_connection)
    message = await _work_message(channel, topology, b"{", "dl-cli")
    await dead_letter(publisher, topology.dead_letter_exchange, message, "not valid JSON")
    env = {**os.environ, "AMQP_URL": amqp_url, "RELAYFLOW_NAMESPACE": topology.namespace}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relayflow.admin",
        "dead-letters",
        "list",
        "--json",
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    rows = [orjson.loads(line) for line in out.splitlines()]
    assert [(r["message_id"], r["reason"]) for r in rows] == [("dl-cli", "not valid JSON")]
    await publisher.close()
    await channel.close()


@pytest.mark.parametrize("model", [CancelWorkflow, RetryWorkflow])
async def test_cancel_and_retry_reach_the_orchestrator_queue(
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
    model: type[CancelWorkflow] | type[RetryWorkflow],
) -> None:
    """`workflows cancel/retry` must land, confirmed, on the orchestrator's queue as the
    contract's CancelWorkflow/RetryWorkflow with the control routing key."""
    channel = await _declared(amqp_connection, topology)
    message = model(message_id=new_message_id(), workflow_id="wf_abc", reason="operator")
    await control(amqp_connection, topology, message)
    async for got in get_messages(channel, topology.orchestrator_queue, count=1):
        body = orjson.loads(got.body)
        assert body["type"] == message.type
        assert body["workflowId"] == "wf_abc"
        assert got.routing_key == CONTROL_KEY
    await channel.close()
