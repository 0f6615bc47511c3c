"""The external-system stand-in against the real broker: replies, deduplicable copies and dead
letters."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aio_pika.abc import AbstractChannel, AbstractRobustConnection

from apps.form_submission.external.service import serve
from apps.form_submission.external.settings import ExternalSettings
from apps.form_submission.external.system import ExternalSystem, ticket_id_for
from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.amqp.settle import REASON_HEADER
from relayflow.contracts import (
    ExternalReply,
    ExternalRequest,
    StepCommand,
    decode,
    encode,
    new_workflow_id,
)
from relayflow.settings import Settings
from relayflow.topology import EXTERNAL_REQUEST_KEY, SIGNAL_KEY, Topology
from relayflow.workflow import WorkflowRegistry
from tests.support import get_messages, wait_for


@contextlib.asynccontextmanager
async def running(
    connection: AbstractRobustConnection, topology: Topology
) -> AsyncIterator[ExternalSystem]:
    system = ExternalSystem(connection=connection, topology=topology)
    await system.start()
    try:
        yield system
    finally:
        await system.stop(grace=5.0)


async def _declared(
    connection: AbstractRobustConnection, topology: Topology, registry: WorkflowRegistry
) -> None:
    channel = await connection.channel()
    await topology.declare(channel, registry.task_names())
    await channel.close()


def request_for(workflow_id: str, *, reply_to: str = SIGNAL_KEY) -> ExternalRequest:
    return ExternalRequest(
        message_id=f"ext:{workflow_id}",
        workflow_id=workflow_id,
        correlation_id=f"{workflow_id}:awaitResponse",
        reply_to=reply_to,
        payload={"recordId": workflow_id, "name": "Ada"},
    )


async def send(publisher: Publisher, topology: Topology, body: bytes, message_id: str) -> None:
    await publisher.publish(
        OutgoingMessage(
            exchange=topology.exchange,
            routing_key=EXTERNAL_REQUEST_KEY,
            body=body,
            message_id=message_id,
            type="ExternalRequest",
        )
    )


async def test_replies_to_the_orchestrator_with_the_correlation_id(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    registry: WorkflowRegistry,
) -> None:
    """The seed workflow's awaitResponse resumes on this reply; a duplicate request yields the
    same reply message id and ticket, so the orchestrator's inbox drops the copy."""
    await _declared(amqp_connection, topology, registry)
    publisher = await Publisher.open(amqp_connection)
    channel = await amqp_connection.channel()
    wf = new_workflow_id()
    request = request_for(wf)
    async with running(amqp_connection, topology):
        await send(publisher, topology, encode(request), request.message_id)
        await send(publisher, topology, encode(request), request.message_id)
        messages = [m async for m in get_messages(channel, topology.orchestrator_queue, count=2)]
    replies = [decode(m.body) for m in messages]
    for message, reply in zip(messages, replies, strict=True):
        assert isinstance(reply, ExternalReply)
        assert message.message_id == reply.message_id == f"reply:{wf}:awaitResponse"
        assert message.correlation_id == reply.correlation_id == f"{wf}:awaitResponse"
        assert reply.workflow_id == wf
        assert reply.payload["ticketId"] == ticket_id_for(f"{wf}:awaitResponse")
        assert reply.payload["status"] == "accepted"
    await channel.close()
    await publisher.close()


async def test_garbage_and_unroutable_replies_are_dead_lettered(
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
    registry: WorkflowRegistry,
) -> None:
    """What the stand-in cannot answer is kept with its reason, and later requests still get
    answered."""
    await _declared(amqp_connection, topology, registry)
    publisher = await Publisher.open(amqp_connection)
    channel = await amqp_connection.channel()
    wf = new_workflow_id()
    wrong = StepCommand(
        message_id="cmd:x",
        workflow_id=wf,
        workflow_name="formSubmission",
        step_name="validate",
        attempt=1,
        input={},
    )
    nowhere = request_for(new_workflow_id(), reply_to="no.such.key")
    good = request_for(wf)
    async with running(amqp_connection, topology):
        await send(publisher, topology, b"\x00garbage", "garbage")
        await send(publisher, topology, encode(wrong), wrong.message_id)
        await send(publisher, topology, encode(nowhere), nowhere.message_id)
        await send(publisher, topology, encode(good), good.message_id)
        [answer] = [m async for m in get_messages(channel, topology.orchestrator_queue, count=1)]
        dead = [m async for m in get_messages(channel, topology.dead_letter_queue, count=3)]
    assert answer.correlation_id == good.correlation_id
    reasons = sorted(str((m.headers or {})[REASON_HEADER]) for m in dead)
    assert reasons[0].startswith("expected an ExternalRequest, got a StepCommand")
    assert reasons[1].startswith("not a valid message")
    assert reasons[2].startswith("replyTo must be 'workflow.signal'")
    await channel.close()
    await publisher.close()


async def test_service_replies_until_stopped(
    settings: Settings,
    amqp_connection: AbstractRobustConnection,
    topology: Topology,
) -> None:
    """The service's lifespan declares the topology itself, answers, and returns on stop."""
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            ExternalSettings(
                AMQP_URL=settings.amqp_url,
                DATABASE_URL=settings.database_url,
                namespace=settings.namespace,
            ),
            stop,
        )
    )
    channel: AbstractChannel = await amqp_connection.channel()
    publisher = await Publisher.open(amqp_connection)
    try:
        # A consumer comes after the queue's bindings: the queue existing alone would let the
        # request below find no route yet.
        async def consuming() -> bool:
            if task.done():
                task.result()
            with contextlib.suppress(Exception):
                probe = await amqp_connection.channel()
                queue = await probe.declare_queue(topology.external_queue, passive=True)
                await probe.close()
                return (queue.declaration_result.consumer_count or 0) > 0
            return False

        await wait_for(consuming)
        request = request_for(new_workflow_id())
        await send(publisher, topology, encode(request), request.message_id)
        [answer] = [m async for m in get_messages(channel, topology.orchestrator_queue, count=1)]
        assert answer.correlation_id == request.correlation_id
    finally:
        stop.set()
        await asyncio.wait_for(task, timeout=15)
        await publisher.close()
        await channel.close()
