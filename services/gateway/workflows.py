"""Reading workflows: `GET /workflows/{id}` (state) and `GET /workflows/{id}/events` (SSE)."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response

from relayflow.workflow import WorkflowDefinition
from services.gateway.models import ErrorView, StepView, WorkflowView
from services.gateway.responses import error_response, model_response
from services.gateway.state import gateway_state
from services.gateway.store import WorkflowRow
from services.gateway.stream import follow

LAST_EVENT_ID_HEADER = "Last-Event-ID"


async def get_workflow(request: Request) -> Response:
    state = gateway_state(request)
    workflow_id: str = request.path_params["workflow_id"]
    row = await state.store.get_workflow(workflow_id)
    if row is None:
        return error_response(404, f"no workflow with id {workflow_id!r}")
    return model_response(workflow_view(row, state.registry.get(row.name)))


async def workflow_events(request: Request) -> Response:
    state = gateway_state(request)
    workflow_id: str = request.path_params["workflow_id"]
    raw_last = request.headers.get(LAST_EVENT_ID_HEADER) or request.query_params.get("lastEventId")
    last_event_id = 0
    if raw_last:
        if not raw_last.isdigit():
            return error_response(
                400, f"Last-Event-ID must be an event seq (an integer), got {raw_last!r}"
            )
        last_event_id = int(raw_last)
    # Subscribe before reading PostgreSQL, so that an event published in between is not lost.
    subscription = state.hub.subscribe(workflow_id)
    settings = state.settings
    return EventSourceResponse(
        follow(
            state.store,
            subscription,
            last_event_id=last_event_id,
            unknown_wait=settings.gateway_unknown_workflow_wait,
            catch_up_interval=settings.gateway_catch_up_interval,
        ),
        ping=settings.gateway_ping_interval,
        # Also if the stream never starts iterating (the client left at once).
        background=BackgroundTask(subscription.close),
    )


def workflow_view(row: WorkflowRow, definition: WorkflowDefinition | None) -> WorkflowView:
    """Steps in the definition's order; a step the orchestrator has not touched is pending.
    Steps the definition does not know (an older version's) follow in stored order."""
    order = list(definition.order) if definition is not None else []
    order.extend(name for name in row.steps if name not in order)
    return WorkflowView(
        workflow_id=row.id,
        name=row.name,
        status=row.status,
        input=row.input,
        output=row.output,
        error=_error(row.error),
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        steps=[_step(name, row.steps.get(name)) for name in order],
    )


def _step(name: str, stored: Any) -> StepView:
    if not isinstance(stored, dict):
        return StepView(name=name, status="pending")
    return StepView(
        name=name,
        status=stored.get("status", "pending"),
        attempts=stored.get("attempts") or 0,
        output=stored.get("output"),
        error=_error(stored.get("error")),
        started_at=stored.get("startedAt"),
        finished_at=stored.get("finishedAt"),
    )


def _error(stored: Any) -> ErrorView | None:
    if stored is None:
        return None
    try:
        return ErrorView.model_validate(stored)
    except ValidationError:
        return ErrorView(type="UnknownError", message=str(stored), retryable=False)
