"""Who sent a message, checked against the real broker: RabbitMQ refuses a forged `user_id`,
and with RELAYFLOW_BROKER_SENDERS set a consumer dead-letters a message its sender's role may
not send (a step command or a start from the wrong user) instead of applying it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aio_pika.abc import AbstractRobustConnection

from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.amqp.senders import Senders
from relayflow.amqp.settle import REASON_HEADER
from relayflow.contracts import (
    CancelWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    decode,
    new_message_id,
    new_workflow_id,
)
from relayflow.settings import Settings
from relayflow.steps import StepWorker
from relayflow.topology import CONTROL_KEY, START_KEY, Topology, step_key
from relayflow.workflow import WorkflowRegistry
from tests.integration import local_flows
from tests.integration.orchestrators import running_orchestrator
from tests.support import delete_topology, get_messages, wait_for

REGISTRY = WorkflowRegistry(local_flows.WORKFLOWS)


@pytest.fixture
async def declared(
    amqp_connection: AbstractRobustConnection, topology: Topology
) -> AsyncIterator[Topology]:
    channel = await amqp_connection.channel()
    await topology.declare(channel, REGISTRY.task_names())
    await channel.close()
    yield topology
    await delete_topology(amqp_connection, topology, REGISTRY.task_names())


@pytest.fixture
async def publisher(amqp_connection: AbstractRobustConnection) -> AsyncIterator[Publisher]:
    # Stamps the user it connected as: the tests' broker user, guest.
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()


def ship(workflow_id: str) -> StepCommand:
    return StepCommand(
        message_id=f"cmd:{workflow_id}:ship:0:1",
        workflow_id=workflow_id,
        workflow_name=local_flows.LOCAL_FLOW.name,
        step_name="ship",
        attempt=1,
        input={"item": "pen"},
    )


@contextlib.asynccontextmanager
async def worker(
    pool: asyncpg.Pool[Any], connection: AbstractRobustConnection, topology: Topology, roles: str
) -> AsyncIterator[StepWorker]:
    step_worker = StepWorker(
        steps=local_flows.steps.select(["ship"]),
        pool=pool,
        connection=connection,
        topology=topology,
        senders=Senders.parse(roles),
    )
    await step_worker.start()
    try:
        yield step_worker
    finally:
        await step_worker.stop(grace=5.0)


async def test_the_broker_refuses_a_message_that_claims_another_sender(
    amqp_connection: AbstractRobustConnection, declared: Topology
) -> None:
    channel = await amqp_connection.channel(publisher_confirms=True, on_return_raises=True)
    forger = Publisher(channel, user_id="rf-orchestrator")
    message = OutgoingMessage.of(
        ship(new_workflow_id()), exchange=declared.exchange, routing_key=step_key("ship")
    )
    with pytest.raises(Exception, match=r"(?i)user_id|PRECONDITION"):
        await forger.publish(message)


async def test_a_step_command_from_a_user_without_the_engine_role_is_dead_lettered(
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    refused, run = new_workflow_id(), new_workflow_id()
    channel = await amqp_connection.channel()
    async with worker(pool, amqp_connection, declared, "engine=rf-orchestrator;start=guest"):
        await publisher.publish(
            OutgoingMessage.of(
                ship(refused), exchange=declared.exchange, routing_key="step.run.ship"
            )
        )
        (dead,) = [m async for m in get_messages(channel, declared.dead_letter_queue, count=1)]
    reason = str((dead.headers or {})[REASON_HEADER])
    assert "broker user 'guest' (roles: start) may not send a StepCommand" in reason
    assert (
        await pool.fetchval("SELECT count(*) FROM step_invocations WHERE workflow_id = $1", refused)
        == 0
    )

    # The same user as an engine: the command runs, and its result goes to the orchestrator.
    async with worker(pool, amqp_connection, declared, "engine=guest"):
        await publisher.publish(
            OutgoingMessage.of(ship(run), exchange=declared.exchange, routing_key="step.run.ship")
        )
        (answer,) = [m async for m in get_messages(channel, declared.orchestrator_queue, count=1)]
    result = decode(answer.body)
    assert isinstance(result, StepResult)
    assert result.workflow_id == run
    assert answer.user_id == "guest"  # the worker's own publisher stamps its user
    await channel.close()


async def test_a_start_from_a_user_without_a_starting_role_is_dead_lettered(
    settings: Settings,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    workflow_id = new_workflow_id()
    start = StartWorkflow(
        message_id=new_message_id(),
        workflow_id=workflow_id,
        workflow_name="formSubmission",
        input={"name": "Ada", "email": "ada@example.com", "message": "hi"},
    )
    channel = await amqp_connection.channel()
    async with running_orchestrator(settings, broker_senders="engine=rf-orchestrator;step=guest"):
        await publisher.publish(
            OutgoingMessage.of(start, exchange=declared.exchange, routing_key=START_KEY)
        )
        (dead,) = [m async for m in get_messages(channel, declared.dead_letter_queue, count=1)]
    await channel.close()
    reason = str((dead.headers or {})[REASON_HEADER])
    assert "broker user 'guest' (roles: step) may not send a StartWorkflow" in reason
    assert await pool.fetchval("SELECT count(*) FROM workflows WHERE id = $1", workflow_id) == 0


async def test_a_user_restricted_to_tenants_starts_and_cancels_only_theirs(
    settings: Settings,
    pool: asyncpg.Pool[Any],
    amqp_connection: AbstractRobustConnection,
    declared: Topology,
    publisher: Publisher,
) -> None:
    form = {"name": "Ada", "email": "ada@example.com", "message": "hi"}
    ours, theirs, untenanted = new_workflow_id(), new_workflow_id(), new_workflow_id()

    def start(workflow_id: str, tenant: str | None) -> OutgoingMessage:
        message = StartWorkflow(
            message_id=new_message_id(),
            workflow_id=workflow_id,
            workflow_name="formSubmission",
            input=form,
            tenant=tenant,
        )
        return OutgoingMessage.of(message, exchange=declared.exchange, routing_key=START_KEY)

    def cancel(tenant: str | None) -> OutgoingMessage:
        message = CancelWorkflow(message_id=new_message_id(), workflow_id=ours, tenant=tenant)
        return OutgoingMessage.of(message, exchange=declared.exchange, routing_key=CONTROL_KEY)

    channel = await amqp_connection.channel()
    async with running_orchestrator(
        settings, broker_senders="engine=rf-orchestrator;start=guest", broker_tenants="guest=acme"
    ):
        for message in (start(theirs, "beta"), start(untenanted, None), start(ours, "acme")):
            await publisher.publish(message)
        dead = [m async for m in get_messages(channel, declared.dead_letter_queue, count=2)]

        async def started() -> bool:
            tenant = await pool.fetchval("SELECT tenant FROM workflows WHERE id = $1", ours)
            return bool(tenant == "acme")

        await wait_for(started)
        # A cancel must name one of its tenants; naming it, it applies.
        await publisher.publish(cancel(None))
        dead += [m async for m in get_messages(channel, declared.dead_letter_queue, count=1)]
        await publisher.publish(cancel("acme"))

        async def cancelled() -> bool:
            status = await pool.fetchval("SELECT status FROM workflows WHERE id = $1", ours)
            return bool(status == "cancelled")

        await wait_for(cancelled)
    await channel.close()
    reasons = sorted(str((m.headers or {})[REASON_HEADER]) for m in dead)
    assert reasons == [
        "broker user 'guest' acts only for tenants acme (RELAYFLOW_BROKER_TENANTS): its "
        "CancelWorkflow must name one in `tenant`",
        "broker user 'guest' may not act for tenant 'beta' (its tenants: acme; "
        "RELAYFLOW_BROKER_TENANTS)",
        "broker user 'guest' may not act for tenant 'default' (its tenants: acme; "
        "RELAYFLOW_BROKER_TENANTS)",
    ]
    found = await pool.fetchval(
        "SELECT count(*) FROM workflows WHERE id = ANY($1::text[])", [theirs, untenanted]
    )
    assert found == 0
