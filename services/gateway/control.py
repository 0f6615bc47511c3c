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

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from relayflow.amqp import OutgoingMessage
from relayflow.contracts import CancelWorkflow, RetryWorkflow, new_message_id
from relayflow.model import CANCELLABLE, RETRYABLE
from relayflow.topology import CONTROL_KEY
from services.gateway import checks
from services.gateway.checks import InputError
from services.gateway.intake import field_errors, parse_body
from services.gateway.limits import read_body
from services.gateway.models import ActionAccepted, ActionOptions, FieldError
from services.gateway.responses import error_response, model_response
from services.gateway.state import gateway_state, tenant_of

log = logging.getLogger(__name__)

Action = Literal["cancel", "retry"]
# The statuses each action applies to.
APPLIES_TO: dict[Action, frozenset[str]] = {
    "cancel": CANCELLABLE,
    "retry": RETRYABLE,
}
# An empty JSON object is all an action's body holds; anything much longer is not one.
MAX_OPTIONS_BYTES = 1024


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


def parse_options(body: bytes) -> ActionOptions:
    data = parse_body(body, expected="{}")
    if not isinstance(data, dict):
        raise InputError(
            422,
            "the body of an action must be a JSON object ({})",
            [FieldError(loc=[], message="Input should be a JSON object", type="dict_type")],
        )
    try:
        return ActionOptions.model_validate(data)
    except ValidationError as exc:
        raise InputError(
            422,
            "the body of an action takes no members; send {} (a reason goes in the `reason` "
            "query parameter)",
            field_errors(exc),
        ) from exc


async def cancel_workflow(request: Request) -> Response:
    return await _act(request, "cancel")


async def retry_workflow(request: Request) -> Response:
    return await _act(request, "retry")


async def _act(request: Request, action: Action) -> Response:
    """Bad requests raise `checks.InputError`, which the app answers."""
    state = gateway_state(request)
    checks.require_json(request)
    workflow_id = checks.workflow_id(request.path_params["workflow_id"])
    key = checks.idempotency_key(request)
    reason = checks.action_reason(request)
    parse_options(await read_body(request, MAX_OPTIONS_BYTES, source="an action's body is {}"))
    tenant = tenant_of(request)
    progress = await state.store.workflow_progress(workflow_id, tenant)
    if progress is None:
        return error_response(404, f"no workflow with id {workflow_id!r}")
    why_not = refusal(action, progress.status)
    if why_not is not None:
        return error_response(409, why_not)
    message_id = action_message_id(action, workflow_id, key)
    message: CancelWorkflow | RetryWorkflow = (
        CancelWorkflow(
            message_id=message_id,
            workflow_id=workflow_id,
            idempotency_key=key,
            reason=reason,
            tenant=tenant,
        )
        if action == "cancel"
        else RetryWorkflow(
            message_id=message_id,
            workflow_id=workflow_id,
            idempotency_key=key,
            reason=reason,
            tenant=tenant,
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
