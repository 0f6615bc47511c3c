"""Signalling a workflow: `POST /workflows/{id}/signals/{name}`, the body being the payload.

In order, before anything is published: the route's common checks (415 for anything but JSON,
400 for an id or a name that cannot be, a bad `Idempotency-Key` or `X-Relayflow-Sender`, a body
that is not JSON), 404 for an unknown workflow or a signal its definition does not declare
(the answer names those it does), 422 for a payload the signal's model refuses (naming the
fields, like a start's input), 409 for a finished workflow. Then a `SignalWorkflow` goes to the
main exchange with routing key `workflow.signal`, confirmed and mandatory, and the answer is 202
only once the broker has it (503 otherwise, never a false accept).

The payload sent is the one the model validated (normalised, by alias). `sentBy` is what the
`X-Relayflow-Sender` header says, or null: the gateway does not authenticate its callers yet, so
it is shown as the sender's claim.

A workflow accepted moments ago may not have started yet (the 202 of a start comes before the
orchestrator applies it): for an id that can be such a one — a time-ordered id made within
`RELAYFLOW_GATEWAY_UNKNOWN_WORKFLOW_WAIT`, or one an Idempotency-Key named that recently — the
request waits up to `START_WAIT` seconds for the workflow to appear — woken by its first event
on the gateway's event hub, with a look at PostgreSQL at least every `_START_LOOK` seconds should
no event come — and is answered 503 with Retry-After if it has not (its start is still on its
way: a 404 would be false).

Idempotency: with an `Idempotency-Key` the signal id is the one the key names, and its first
use is recorded with the request's hash (`relayflow.signal_keys`, shared with `relayflow
workflows signal --broker`): a resend is the same message, which the orchestrator's inbox counts
once; the same key with another request is a 409, as for starts. The checks here are a courtesy: the
orchestrator checks the signal again when it applies it (a workflow may finish in between, and
then ignores it).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from relayflow.amqp import OutgoingMessage
from relayflow.contracts import SignalWorkflow, minted_at
from relayflow.signal_keys import SignalKeyConflict, SignalTarget
from relayflow.topology import SIGNAL_KEY
from services.gateway import checks
from services.gateway.checks import InputError
from services.gateway.intake import validate_payload
from services.gateway.models import FINISHED_STATUSES, SignalAccepted
from services.gateway.responses import error_response, model_response
from services.gateway.state import GatewayState, gateway_state, tenant_of

log = logging.getLogger(__name__)


def declared(names: list[str]) -> str:
    return f"it declares {', '.join(names)}" if names else "it declares no signals"


async def signal_workflow(request: Request) -> Response:
    """Bad requests raise `checks.InputError`, which the app answers."""
    state = gateway_state(request)
    checks.require_json(request)
    workflow_id = checks.workflow_id(request.path_params["workflow_id"])
    signal_name = checks.signal_name(request.path_params["signal_name"])
    key = checks.idempotency_key(request)
    sent_by = checks.sender(request)
    limit = state.settings.max_input_bytes
    data = await state.limits.read_json(request, expected="the signal's payload")
    target = await _target(state, workflow_id, tenant_of(request), signal_name)
    if target is None:
        return error_response(
            503,
            f"workflow {workflow_id!r} was accepted moments ago and has not started yet; retry "
            "the signal",
            headers={"Retry-After": "1"},
        )
    payload = validate_payload(target.name, signal_name, target.model, data, max_bytes=limit)
    if target.status in FINISHED_STATUSES:
        raise InputError(
            409, f"the workflow is {target.status}; a finished workflow takes no signals"
        )
    try:
        signal_id = await state.store.signal_message_id(
            workflow_id, signal_name, key, payload=payload, sent_by=sent_by
        )
    except SignalKeyConflict as exc:
        raise InputError(409, str(exc)) from None
    message = SignalWorkflow(
        message_id=signal_id,
        workflow_id=workflow_id,
        idempotency_key=key,
        signal_name=signal_name,
        payload=payload,
        sent_by=sent_by,
        tenant=tenant_of(request),
    )
    try:
        await _publish(state, message)
    except Exception as exc:
        log.warning(
            "could not confirm signal %s of %s: %s",
            signal_name,
            workflow_id,
            exc or type(exc).__name__,
        )
        return error_response(
            503,
            f"the message broker did not confirm the signal {signal_name!r}; retry the request"
            + (" with the same Idempotency-Key" if key is not None else ""),
            headers={"Retry-After": "1"},
        )
    return model_response(
        SignalAccepted(workflow_id=workflow_id, signal=signal_name, signal_id=signal_id),
        status_code=202,
    )


# How long a signal waits for a workflow that may be starting; and the longest pause between two
# looks at PostgreSQL meanwhile (the workflow's first event ends a pause at once; this bounds
# the wait when events do not come, their channel being down).
START_WAIT = 5.0
_START_LOOK = 0.5
# How far ahead of this gateway's clock another replica's may be when it makes an id.
_CLOCK_SKEW = 5.0


async def _may_be_starting(state: GatewayState, workflow_id: str, tenant: str | None) -> bool:
    """Whether the id may be that of a workflow accepted moments ago (another tenant's that
    exists is a 404 at once)."""
    if tenant is not None and await state.store.signal_target(workflow_id, None) is not None:
        return False
    window = state.settings.gateway_unknown_workflow_wait
    minted = minted_at(workflow_id)
    if minted is not None and time.time() - window <= minted <= time.time() + _CLOCK_SKEW:
        return True
    return await state.store.recently_keyed(workflow_id, tenant, window)


async def _started(
    state: GatewayState, workflow_id: str, tenant: str | None
) -> SignalTarget | None:
    """The workflow once it has started, waiting up to `START_WAIT` for its first event (the
    orchestrator publishes `workflow.started` once the row is committed); None if it has not."""
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + START_WAIT
    # Subscribed before looking: an event that comes in between is not missed.
    with state.hub.subscribe(workflow_id, tenant) as events:
        while (found := await state.store.signal_target(workflow_id, tenant)) is None:
            left = give_up_at - loop.time()
            if left <= 0:
                return None
            await events.get(min(left, _START_LOOK))
    return found


@dataclass(frozen=True, slots=True)
class _Target:
    name: str
    status: str
    model: type[BaseModel]


async def _target(
    state: GatewayState, workflow_id: str, tenant: str | None, signal_name: str
) -> _Target | None:
    """The workflow's definition name, status and the model of this signal, or a 404 (also
    for another tenant's); None for a workflow that may be starting but has not yet."""
    found = await state.store.signal_target(workflow_id, tenant)
    if found is None and await _may_be_starting(state, workflow_id, tenant):
        found = await _started(state, workflow_id, tenant)
        if found is None:
            return None
    if found is None:
        raise InputError(404, f"no workflow with id {workflow_id!r}")
    # The version the run is pinned to: the orchestrator applies the signal with that one.
    definition = state.registry.get(found.name, found.version)
    if definition is None:
        # Without the definition nothing says which signals it takes, or what they hold.
        what = found.name if found.version is None else f"{found.name} version {found.version}"
        raise InputError(
            404,
            f"workflow {workflow_id!r} runs {what!r}, which this gateway does not serve; it "
            "cannot check a signal for it",
        )
    model = definition.signals.get(signal_name)
    if model is None:
        raise InputError(
            404,
            f"workflow {workflow_id!r} ({definition.name}) declares no signal {signal_name!r}; "
            f"{declared(sorted(definition.signals))}",
        )
    return _Target(definition.name, found.status, model)


async def _publish(state: GatewayState, message: SignalWorkflow) -> None:
    outgoing = OutgoingMessage.of(message, exchange=state.topology.exchange, routing_key=SIGNAL_KEY)
    # The Publisher's own timeout covers the confirm; this one also bounds the wait for a
    # channel that is reopening after a broker outage.
    async with asyncio.timeout(state.settings.gateway_publish_timeout):
        await state.publisher.publish(outgoing)
