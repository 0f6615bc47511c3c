"""Least-privilege broker users (`relayflow broker setup`) on the private RabbitMQ node:
the whole system runs with one user per service and the senders checked, and a user holding
only a program's rights cannot read any queue or forge events."""

from __future__ import annotations

import json
import urllib.parse
import uuid
from pathlib import Path

import aio_pika
import aiormq
import httpx
import pytest

from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.amqp.definitions import BrokerUser, broker_users, definitions, senders_setting
from relayflow.contracts import StartWorkflow, new_message_id, new_workflow_id
from relayflow.steps import StepRegistry
from relayflow.topology import START_KEY, Topology
from relayflow.workflow import WorkflowRegistry
from tests.tools.cluster import SERVICES, STEP_MODULES, WORKFLOW_MODULES, running_cluster
from tests.tools.private_services import PrivatePostgres, PrivateRabbit

FORM = {"name": "Ada Lovelace", "email": "ada@example.com", "message": "Hello"}


def url_of(rabbit: PrivateRabbit, user: BrokerUser, vhost: str) -> str:
    host, port = rabbit.address
    return f"amqp://{user.name}:{user.password}@{host}:{port}/{urllib.parse.quote(vhost, safe='')}"


async def test_one_user_per_service_runs_the_system_and_a_program_can_only_start(
    private_rabbit: PrivateRabbit,
    private_postgres: PrivatePostgres,
    tmp_path: Path,
    client: httpx.AsyncClient,
) -> None:
    namespace, vhost = f"f{uuid.uuid4().hex[:10]}", f"v{uuid.uuid4().hex[:8]}"
    users = broker_users(namespace)
    path = tmp_path / "definitions.json"
    steps = {
        *WorkflowRegistry.from_modules(list(WORKFLOW_MODULES)).task_names(),
        *StepRegistry.from_modules(list(STEP_MODULES)).names(),
    }
    path.write_text(json.dumps(definitions(users, vhost, Topology(namespace), steps)))
    await private_rabbit.ctl("import_definitions", str(path))
    # The harness watches the queues as guest.
    await private_rabbit.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    by_service = {user.service: user for user in users}
    (tmp_path / "logs").mkdir()
    async with running_cluster(
        private_rabbit,
        private_postgres,
        tmp_path / "logs",
        namespace=namespace,
        vhost=vhost,
        credentials={s: f"{by_service[s].name}:{by_service[s].password}" for s in SERVICES},
        extra_env={"RELAYFLOW_BROKER_SENDERS": senders_setting(users)},
    ) as cluster:
        # A ledger workflow and a formSubmission (its publishToMQ asks the external system).
        ids = await cluster.submit_many(client, 3, "least")
        answer = await client.post(f"{cluster.base_url}/submit", json=FORM)
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["workflowId"])
        statuses = await cluster.wait_terminal(ids)
        assert set(statuses.values()) == {"completed"}, statuses

        topology = Topology(namespace)
        app = await aio_pika.connect_robust(url_of(private_rabbit, by_service["app"], vhost))
        try:
            # A program may publish starts ...
            publisher = await Publisher.open(app)
            start = StartWorkflow(
                message_id=new_message_id(),
                workflow_id=new_workflow_id(),
                workflow_name="formSubmission",
                input=FORM,
            )
            await publisher.publish(
                OutgoingMessage.of(start, exchange=topology.exchange, routing_key=START_KEY)
            )
            # ... but read no queue, and publish no event.
            channel = await app.channel()
            queue = await channel.get_queue(topology.orchestrator_queue, ensure=False)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await queue.get(fail=False)
            channel = await app.channel(publisher_confirms=True)
            events = await channel.get_exchange(topology.events_exchange, ensure=False)
            with pytest.raises(aiormq.exceptions.ChannelAccessRefused):
                await events.publish(aio_pika.Message(b"{}"), routing_key="")
        finally:
            await app.close()
        assert (await cluster.wait_terminal([start.workflow_id]))[start.workflow_id] == "completed"
