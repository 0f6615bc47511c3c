"""Starting workflows: `POST /workflows/{name}`, and `POST /submit`, the contact form's alias of
it for the workflow `RELAYFLOW_GATEWAY_SUBMIT_WORKFLOW` names (`GatewaySettings`: none when it
is empty, `formSubmission` when it is unset and that workflow is served).

The answer is 202 only once the broker has confirmed the StartWorkflow (publisher confirms,
mandatory routing); any doubt is a 503 and never a false accept. A retry with the same
Idempotency-Key publishes again with the same workflow id: the orchestrator starts a workflow id
once, so this also heals a first attempt that got a 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace

from starlette.requests import Request
from starlette.responses import Response

from relayflow import tracing
from relayflow.amqp import OutgoingMessage
from relayflow.topology import START_KEY
from services.gateway import checks
from services.gateway.intake import StartRequest, request_hash, validate_input
from services.gateway.models import Accepted
from services.gateway.responses import error_response, model_response
from services.gateway.settings import submit_off_reason
from services.gateway.state import GatewayState, gateway_state, starting_tenant

log = logging.getLogger(__name__)


async def submit_form(request: Request) -> Response:
    state = gateway_state(request)
    if state.submit_workflow is None:
        reason = submit_off_reason(state.settings.gateway_submit_workflow)
        return error_response(
            404,
            f"POST /submit is turned off here ({reason}); start a workflow with "
            "POST /workflows/{name}",
        )
    return await start_workflow(request, state.submit_workflow)


async def start_workflow(request: Request, workflow_name: str) -> Response:
    """Start `workflow_name` with the request's body as input. Bad requests raise
    `checks.InputError`, which the app answers."""
    state = gateway_state(request)
    received = state.hops.now()
    checks.require_json(request)
    definition = state.registry.get(workflow_name)
    if definition is None:
        return error_response(
            404,
            f"no workflow named {checks.shown(workflow_name)}; "
            f"known: {', '.join(state.registry.names())}",
        )
    key = checks.idempotency_key(request)
    data = await state.limits.read_json(request, expected="the workflow input")
    validated = validate_input(definition, data, max_bytes=state.settings.max_input_bytes)
    start = StartRequest.create(workflow_name, validated, key, starting_tenant(request))
    if key is not None:
        record = await state.store.claim_idempotency_key(
            start.tenant, workflow_name, key, start.workflow_id, request_hash(validated)
        )
        if record.request_hash != request_hash(validated):
            return error_response(
                409,
                f"Idempotency-Key {key!r} was already used for workflow {record.workflow_id} "
                "with a different request body; use a new key for a different request",
            )
    state.hops.record("gw.received", None, start.workflow_id, at=received)
    try:
        await _publish(state, start, request)
    except Exception as exc:
        log.warning(
            "could not confirm StartWorkflow %s (%s): %s",
            start.workflow_id,
            workflow_name,
            exc or type(exc).__name__,
        )
        return error_response(
            503,
            "the message broker did not confirm the start of the workflow; it may not run. "
            "Retry the request"
            + (" with the same Idempotency-Key" if key is not None else "")
            + ".",
            headers={"Retry-After": "1"},
        )
    return model_response(Accepted(workflow_id=start.workflow_id), status_code=202)


async def _publish(state: GatewayState, start: StartRequest, request: Request) -> None:
    message = OutgoingMessage.of(
        start.message(), exchange=state.topology.exchange, routing_key=START_KEY
    )
    state.hops.record("gw.publish", message.message_id, start.workflow_id)
    with traced_send(request, message, start.workflow_id) as message:
        # The Publisher's own timeout covers the confirm; this one also bounds the wait for a
        # channel that is reopening after a broker outage.
        async with asyncio.timeout(state.settings.gateway_publish_timeout):
            await state.publisher.publish(message)
    state.hops.record("gw.confirmed", message.message_id)


@contextlib.contextmanager
def traced_send(
    request: Request, message: OutgoingMessage, workflow_id: str
) -> Iterator[OutgoingMessage]:
    """`message`, and while tracing, within the request's SERVER span (continuing a client's
    `traceparent`) and a `send` span whose context it carries: a workflow's trace starts here."""
    if not tracing.on:
        yield message
        return
    route = request.scope.get("route")
    server = tracing.server(
        f"{request.method} {getattr(route, 'path', request.url.path)}",
        request.headers.get(tracing.TRACEPARENT),
        **{"http.request.method": request.method, "url.path": request.url.path},
    )
    send = tracing.sending(
        server, message.exchange, message.routing_key, message.message_id, workflow_id
    )
    try:
        yield replace(message, traceparent=tracing.traceparent_of(send))
    finally:
        send.end()
        server.end()
