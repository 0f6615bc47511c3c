"""`relayflow workflows cancel|retry|signal --broker`: control messages and signals published
straight to the broker, confirmed and mandatory, for when the gateway is not the way (it is
down, or the operator is on the broker's side of a firewall).

A signal is checked first as the gateway's `POST /workflows/{id}/signals/{name}` checks it:
when the workflow is in the database and its definition is loaded here (`RELAYFLOW_WORKFLOWS`),
the signal must be one it declares and the payload must fit that signal's model (the error names
the field; nothing is sent), and a finished workflow is refused; when it is not, the signal is
sent unchecked, with a warning, and the orchestrator decides (it dead-letters what it cannot
take). An idempotency key names the signal id and is recorded with the request as the gateway
records it (`relayflow.signal_keys`), so a resend counts once and the same key with another
payload or sender is refused (the key needs the database: without it nothing is sent).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import asyncpg
from aio_pika.abc import AbstractConnection
from pydantic import ValidationError

from relayflow.amqp.publisher import broker_user
from relayflow.cli.errors import CliError
from relayflow.contracts import (
    CancelWorkflow,
    RetryWorkflow,
    SignalWorkflow,
    describe_path,
    encode,
    new_message_id,
    unstorable,
)
from relayflow.db.hosts import connect
from relayflow.model import FINISHED
from relayflow.settings import Settings
from relayflow.signal_keys import SignalKeyConflict, signal_message_id, signal_target
from relayflow.topology import CONTROL_KEY, SIGNAL_KEY, Topology
from relayflow.workflow import WorkflowDefinition, WorkflowRegistry


@dataclass(frozen=True, slots=True)
class SignalRequest:
    """What `workflows signal --broker` was asked to send."""

    workflow_id: str
    signal_name: str
    data: dict[str, Any]
    sent_by: str | None = None
    key: str | None = None


async def control(
    connection: AbstractConnection, topology: Topology, message: CancelWorkflow | RetryWorkflow
) -> None:
    """Publish a control message to the orchestrator, confirmed and mandatory."""
    await _publish(connection, topology, message, CONTROL_KEY)


async def send_signal(
    connection: AbstractConnection, topology: Topology, message: SignalWorkflow
) -> None:
    """Publish a signal to the orchestrator, confirmed and mandatory."""
    await _publish(connection, topology, message, SIGNAL_KEY)


async def _publish(
    connection: AbstractConnection,
    topology: Topology,
    message: CancelWorkflow | RetryWorkflow | SignalWorkflow,
    routing_key: str,
) -> None:
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                encode(message),
                message_id=message.message_id,
                type=message.type,
                content_type="application/json",
                headers={"x-schema-version": message.schema_version},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                user_id=broker_user(connection),
            ),
            routing_key=routing_key,
            mandatory=True,
            timeout=10,
        )
    finally:
        await channel.close()


def checked_payload(
    definition: WorkflowDefinition, workflow_id: str, signal_name: str, data: Any
) -> dict[str, Any]:
    """The payload as the workflow's model for the signal normalises it (by alias), or
    `CliError` naming the undeclared signal or the fields at fault."""
    model = definition.signals.get(signal_name)
    if model is None:
        declared = ", ".join(sorted(definition.signals)) or "no signals"
        raise CliError(
            f"workflow {workflow_id} ({definition.name}) declares no signal {signal_name!r}; "
            f"it declares {declared}"
        )
    what = f"signal {signal_name!r} of workflow {definition.name!r}"
    if not isinstance(data, dict):
        raise CliError(f"the payload of {what} must be a JSON object")
    try:
        validated = model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{describe_path(tuple(error['loc']))}: {error['msg']}"
            for error in exc.errors(include_url=False)[:10]
        )
        raise CliError(f"invalid payload for {what}: {problems}") from exc
    payload: dict[str, Any] = validated.model_dump(mode="json", by_alias=True)
    found = unstorable(payload)
    if found is not None:
        raise CliError(f"invalid payload for {what}: {describe_path(found[0])} {found[1]}")
    return payload


async def prepare_signal(
    request: SignalRequest, database_url: str, settings: Settings, warn: Callable[[str], None]
) -> SignalWorkflow:
    """The SignalWorkflow to send: checked against the workflow's definition when the database
    knows the workflow and the definition is loaded here; `warn` says otherwise. With a key,
    its id is the one the key names, the key recorded as the gateway records it: the same key
    with another payload or sender is refused, whichever of the two sent it first."""
    try:
        conn = await connect(database_url, timeout=10)
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        if request.key is not None:
            raise CliError(
                f"cannot read PostgreSQL ({exc}), where --idempotency-key is recorded; send the "
                "signal once the database answers, or without the key"
            ) from exc
        warn(f"cannot read the workflow from PostgreSQL ({exc}); sending the signal unchecked")
        return _signal(request, new_message_id(), request.data)
    try:
        payload = await _checked(conn, request, settings, warn)
        try:
            message_id = await signal_message_id(
                conn,
                request.workflow_id,
                request.signal_name,
                request.key,
                payload=payload,
                sent_by=request.sent_by,
            )
        except SignalKeyConflict as exc:
            raise CliError(str(exc)) from None
    finally:
        await conn.close()
    return _signal(request, message_id, payload)


async def _checked(
    conn: asyncpg.Connection[Any],
    request: SignalRequest,
    settings: Settings,
    warn: Callable[[str], None],
) -> dict[str, Any]:
    """The payload as the run's definition validates it, or the data unchecked (with a
    warning) when the database does not know the workflow or its definition is not loaded."""
    workflow_id = request.workflow_id
    target = await signal_target(conn, workflow_id)
    if target is None:
        warn(f"no workflow {workflow_id} in the database; sending the signal unchecked")
        return request.data
    if target.status in FINISHED:
        raise CliError(
            f"workflow {workflow_id} is {target.status}; a finished workflow ignores signals"
        )
    registry = WorkflowRegistry.from_modules(settings.workflows)
    definition = registry.get(target.name, target.version)
    if definition is None:
        warn(
            f"workflow {workflow_id} runs {target.name!r} "
            f"{'version ' + target.version if target.version else ''}, which is not loaded "
            "here (RELAYFLOW_WORKFLOWS); sending the signal unchecked"
        )
        return request.data
    return checked_payload(definition, workflow_id, request.signal_name, request.data)


def _signal(request: SignalRequest, message_id: str, payload: dict[str, Any]) -> SignalWorkflow:
    try:
        return SignalWorkflow(
            message_id=message_id,
            workflow_id=request.workflow_id,
            idempotency_key=request.key,
            signal_name=request.signal_name,
            payload=payload,
            sent_by=request.sent_by,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"{describe_path(tuple(error['loc']))}: {error['msg']}"
            for error in exc.errors(include_url=False)
        )
        raise CliError(f"cannot send this signal: {problems}") from exc
