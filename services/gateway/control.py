"""Acting on a workflow: `POST /workflows/{id}/cancel` and `POST /workflows/{id}/retry`.

The gateway checks that the action makes sense for the workflow's current status (404 for an
unknown workflow, 409 otherwise), then publishes a `CancelWorkflow` or `RetryWorkflow` to the
main exchange with routing key `workflow.control`, confirmed and mandatory, and answers 202 once
the broker has it. The orchestrator applies it in its own transaction, deduplicated by message
id; an `Idempotency-Key` makes the message id a function of the key, so a retried request is the
same message. The check here is a courtesy to the user: the orchestrator decides again (a workflow
may finish between the check and the message), and ignores an action that no longer applies.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response

from relayflow.amqp import OutgoingMessage
from relayflow.contracts import CancelWorkflow, RetryWorkflow, new_message_id
from relayflow.topology import CONTROL_KEY
from services.gateway.intake import InputError, check_idempotency_key
from services.gateway.models import ActionAccepted
from services.gateway.responses import error_response, model_response
from services.gateway.state import gateway_state
from services.gateway.submit import IDEMPOTENCY_HEADER

log = logging.getLogger(__name__)

Action = Literal["cancel", "retry"]
# The statuses each action applies to.
APPLIES_TO: dict[Action, frozenset[str]] = {
    "cancel": frozenset({"running"}),
    "retry": frozenset({"failed", "cancelled"}),
}
MAX_REASON = 1000


def action_message_id(action: Action, workflow_id: str, key: str | None) -> str:
    """Random without a key; with one, the same key names the same message (deduplicated by the
    orchestrator's inbox)."""
    if key is None:
        return new_message_id()
    digest = hashlib.sha256(f"{action}\x00{workflow_id}\x00{key}".encode()).hexdigest()
    return f"{action}_{digest[:32]}"


def refusal(action: Action, status: str) -> str | None:
    """Why `action` makes no sense for a workflow that is `status`, or None if it does."""
    if status in APPLIES_TO[action]:
        return None
    if action == "cancel":
        return f"the workflow is {status}; only a running workflow can be cancelled"
    return f"the workflow is {status}; only a failed or cancelled workflow can be retried"


async def cancel_workflow(request: Request) -> Response:
    return await _act(request, "cancel")


async def retry_workflow(request: Request) -> Response:
    return await _act(request, "retry")


async def _act(request: Request, action: Action) -> Response:
    state = gateway_state(request)
    workflow_id: str = request.path_params["workflow_id"]
    try:
        key = check_idempotency_key(request.headers.get(IDEMPOTENCY_HEADER))
    except InputError as exc:
        return error_response(exc.status, exc.message)
    reason = (request.query_params.get("reason") or "")[:MAX_REASON]
    progress = await state.store.workflow_progress(workflow_id)
    if progress is None:
        return error_response(404, f"no workflow with id {workflow_id!r}")
    why_not = refusal(action, progress.status)
    if why_not is not None:
        return error_response(409, why_not)
    message_id = action_message_id(action, workflow_id, key)
    message: CancelWorkflow | RetryWorkflow = (
        CancelWorkflow(
            message_id=message_id, workflow_id=workflow_id, idempotency_key=key, reason=reason
        )
        if action == "cancel"
        else RetryWorkflow(
            message_id=message_id, workflow_id=workflow_id, idempotency_key=key, reason=reason
        )
    )
    outgoing = OutgoingMessage.of(
        message, exchange=state.topology.exchange, routing_key=CONTROL_KEY
    )
    try:
        async with asyncio.timeout(state.settings.gateway_publish_timeout):
            await state.publisher.publish(outgoing)
    except Exception as exc:
        log.warning(
            "could not confirm %s of %s: %s", action, workflow_id, exc or type(exc).__name__
        )
        return error_response(
            503,
            f"the message broker did not confirm the {action}; retry the request"
            + (" with the same Idempotency-Key" if key is not None else ""),
            headers={"Retry-After": "1"},
        )
    return model_response(
        ActionAccepted(workflow_id=workflow_id, action=action, message_id=message_id),
        status_code=202,
    )
