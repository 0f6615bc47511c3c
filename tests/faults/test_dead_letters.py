"""`relayflow dead-letters` and `relayflow workflows cancel|retry --broker`: listing, showing and
re-driving dead letters, cancelling and retrying workflows over the broker.

Runs on the shared broker in a namespace of its own (nothing is restarted here)."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass

import aio_pika
import orjson
import pytest

from relayflow.amqp import Publisher, dead_letter
from relayflow.amqp.dead_letters import DeadLetter, list_dead_letters, redrive, show_dead_letter
from relayflow.cli.control import control
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


async def run_cli(env: dict[str, str], *args: str, module: str = "relayflow.cli") -> Ran:
    """The command as an operator types it, as a process."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return Ran(process.returncode, out.decode(), err.decode())


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str
    err: str


async def test_cli_lists_shows_and_redrives_dead_letters(
    amqp_url: str, amqp_connection: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> None:
    """The commands an operator types: each dead letter's id, queue and reason; one of them
    whole (its headers and body, to see what is wrong with it) without consuming it; and back
    where it came from."""
    channel = await _declared(amqp_connection, topology)
    publisher = await Publisher.open(amqp_connection)
    message = await _work_message(channel, topology, b'{"half": ', "dl-cli")
    await dead_letter(publisher, topology.dead_letter_exchange, message, "not valid JSON")
    env = {**os.environ, "AMQP_URL": amqp_url, "RELAYFLOW_NAMESPACE": topology.namespace}

    listed = await run_cli(env, "dead-letters", "list", "--json")
    assert listed.code == 0, listed.err
    rows = [orjson.loads(line) for line in listed.out.splitlines()]
    assert [(r["message_id"], r["reason"]) for r in rows] == [("dl-cli", "not valid JSON")]

    shown = await run_cli(env, "dead-letters", "show", "dl-cli", "--json")
    assert shown.code == 0, shown.err
    whole = orjson.loads(shown.out)
    assert (whole["message_id"], whole["type"], whole["reason"]) == (
        "dl-cli",
        "StepCommand",
        "not valid JSON",
    )
    assert whole["body"] == '{"half": '
    assert whole["headers"]["x-relayflow-reason"] == "not valid JSON"
    assert whole["routing_key"] == step_key(STEP)
    text = await run_cli(env, "dead-letters", "show", "dl-cli")
    assert text.code == 0, text.err
    assert "reason          not valid JSON" in text.out
    assert text.out.rstrip().endswith('{"half":')
    missing = await run_cli(env, "dead-letters", "show", "dl-nobody")
    assert missing.code == 2
    assert "no dead letter with message id dl-nobody" in missing.err

    unnamed = await run_cli(env, "dead-letters", "redrive")
    assert unnamed.code == 2
    assert "--message-id" in unnamed.err
    # The deprecated alias is the same command.
    again = await run_cli(
        env, "dead-letters", "redrive", "--message-id", "dl-cli", module="relayflow.admin"
    )
    assert again.code == 0, again.err
    assert "deprecated" in again.err
    assert again.out.splitlines()[-1] == "1 dead letter(s) re-driven"
    async for back in get_messages(channel, topology.step_queue(STEP), count=1):
        assert back.message_id == "dl-cli"
    empty = await run_cli(env, "dead-letters", "list")
    assert empty.out.splitlines() == [f"0 dead letter(s) in {topology.dead_letter_queue}"]
    await publisher.close()
    await channel.close()


async def test_cli_cancels_over_the_broker(
    amqp_url: str, amqp_connection: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> None:
    """`workflows cancel --broker` (and `relayflow-admin workflows cancel`, which it replaces)
    needs no gateway: the CancelWorkflow lands on the orchestrator's queue."""
    channel = await _declared(amqp_connection, topology)
    env = {**os.environ, "AMQP_URL": amqp_url, "RELAYFLOW_NAMESPACE": topology.namespace}
    ran = await run_cli(
        env, "workflows", "cancel", "wf_abc", "--reason", "stuck", "--broker", "--json"
    )
    assert ran.code == 0, ran.err
    assert orjson.loads(ran.out)["workflowId"] == "wf_abc"
    alias = await run_cli(env, "workflows", "retry", "wf_abc", module="relayflow.admin")
    assert alias.code == 0, alias.err
    assert alias.out.startswith("RetryWorkflow for wf_abc published")
    got = [
        orjson.loads(message.body)
        async for message in get_messages(channel, topology.orchestrator_queue, count=2)
    ]
    assert [(body["type"], body["reason"]) for body in got] == [
        ("CancelWorkflow", "stuck"),
        ("RetryWorkflow", ""),
    ]
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


async def test_browsing_keeps_the_queue_order(
    amqp_connection: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> None:
    """A quorum queue puts a requeued message at its tail: a browse that looked at only the
    first few would move them behind the rest. Listing a part, showing one and re-driving
    another leave the others in the order they were dead-lettered."""
    channel = await _declared(amqp_connection, topology)
    publisher = await Publisher.open(amqp_connection)
    ids = [f"order-{n}" for n in range(6)]
    for message_id in ids:
        message = await _work_message(channel, topology, b"{}", message_id)
        await dead_letter(publisher, topology.dead_letter_exchange, message, "for the order")

    async def order() -> list[str]:
        return [letter.message_id for letter in await list_dead_letters(amqp_connection, topology)]

    for _ in range(100):
        if len(await order()) == len(ids):
            break
        await asyncio.sleep(0.05)
    assert await order() == ids
    assert [letter.message_id for letter in await list_dead_letters(amqp_connection, topology, 2)]
    assert await order() == ids, "listing a part moved it behind the rest"
    await show_dead_letter(amqp_connection, topology, "order-1")
    assert await order() == ids
    await redrive(amqp_connection, topology, message_ids=["order-2"])
    assert await order() == [message_id for message_id in ids if message_id != "order-2"]
    await publisher.close()
    await channel.close()
