"""Reading workflows: `GET /workflows` (the list), `GET /workflows/{id}` (state),
`GET /workflows/{id}/events` (one workflow's events over SSE) and `GET /events` (the feed of every
workflow's events, for the dashboard)."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from relayflow.workflow import WorkflowDefinition
from services.gateway.feed import event_filter, follow_feed, parse_last_id
from services.gateway.models import (
    FINISHED_STATUSES,
    WORKFLOW_STATUSES,
    ErrorView,
    StepView,
    WorkflowPage,
    WorkflowSummary,
    WorkflowView,
)
from services.gateway.responses import error_response, model_response
from services.gateway.sse import EventStream
from services.gateway.state import gateway_state
from services.gateway.store import GatewayStore, ListFilter, SummaryRow, WorkflowRow
from services.gateway.stream import follow

LAST_EVENT_ID_HEADER = "Last-Event-ID"
# Browsers reconnect a broken event stream after this many milliseconds (sent as `retry:`).
RECONNECT_MS = 500
DEFAULT_PAGE = 50
MAX_PAGE = 200
_ID_PREFIX = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")


class QueryError(ValueError):
    """A query parameter that cannot be used; the message says which and why (HTTP 400)."""


def list_filter(params: dict[str, str]) -> tuple[ListFilter, int]:
    """The list's query parameters (`status`, `workflow`, `id`, `before`, `limit`), checked.
    Empty values mean no filter, so that a plain HTML form can submit them."""
    status = params.get("status") or None
    if status is not None and status not in WORKFLOW_STATUSES:
        raise QueryError(f"status must be one of {', '.join(WORKFLOW_STATUSES)}, got {status!r}")
    name = params.get("workflow") or None
    if name is not None and not _NAME.match(name):
        raise QueryError(f"workflow must be a workflow name, got {name!r}")
    id_prefix = (params.get("id") or "").strip() or None
    if id_prefix is not None and not _ID_PREFIX.match(id_prefix):
        raise QueryError(f"id must be (the start of) a workflow id, got {id_prefix!r}")
    before = decode_cursor(params["before"]) if params.get("before") else None
    raw_limit = params.get("limit") or str(DEFAULT_PAGE)
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise QueryError(f"limit must be an integer from 1 to {MAX_PAGE}, got {raw_limit!r}")
    return ListFilter(status, name, id_prefix, before), int(raw_limit)


def encode_cursor(created_at: datetime, workflow_id: str) -> str:
    raw = f"{created_at.isoformat()}|{workflow_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, workflow_id = raw.partition("|")
        created_at = datetime.fromisoformat(at)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise QueryError(f"before must be a cursor from a previous page, got {cursor!r}") from None
    if not workflow_id or created_at.tzinfo is None:
        raise QueryError(f"before must be a cursor from a previous page, got {cursor!r}")
    return created_at, workflow_id


async def list_page(store: GatewayStore, where: ListFilter, limit: int) -> WorkflowPage:
    """One page of the list; a row more than asked says whether an older page exists."""
    rows = await store.list_workflows(where, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return WorkflowPage(
        items=[summary(row) for row in rows],
        next=encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None,
    )


def summary(row: SummaryRow) -> WorkflowSummary:
    statuses = row.step_statuses
    return WorkflowSummary(
        workflow_id=row.id,
        name=row.name,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        last_seq=row.last_seq,
        steps_total=len(statuses),
        steps_completed=sum(1 for status in statuses.values() if status == "completed"),
        active_steps=[
            name
            for name, status in statuses.items()
            if status in ("running", "waiting", "retrying")
        ],
        error=_error(row.error),
    )


async def list_workflows(request: Request) -> Response:
    state = gateway_state(request)
    try:
        where, limit = list_filter(dict(request.query_params))
    except QueryError as exc:
        return error_response(400, str(exc))
    page = await list_page(state.store, where, limit)
    return model_response(page)


async def all_events(request: Request) -> Response:
    """The feed (`services.gateway.feed`): every workflow's events, filtered by `workflow` name
    and `status`."""
    state = gateway_state(request)
    params = request.query_params
    status = params.get("status") or None
    if status is not None and status not in WORKFLOW_STATUSES:
        return error_response(
            400, f"status must be one of {', '.join(WORKFLOW_STATUSES)}, got {status!r}"
        )
    name = params.get("workflow") or None
    if name is not None and not _NAME.match(name):
        return error_response(400, f"workflow must be a workflow name, got {name!r}")
    hub = state.hub
    last = parse_last_id(request.headers.get(LAST_EVENT_ID_HEADER) or params.get("lastEventId"))
    # Subscribe and read the ring in one step (no await in between): nothing falls in a gap.
    subscription = hub.subscribe_all(event_filter(name, status))
    start = hub.position
    missed = hub.recent_after(last[1]) if last is not None and last[0] == hub.epoch else None
    settings = state.settings
    return EventStream(
        follow_feed(hub, subscription, start=start, missed=missed),
        ping=settings.gateway_ping_interval,
        retry_ms=RECONNECT_MS,
        on_close=subscription.close,
    )


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
        progress = await state.store.workflow_progress(workflow_id)
        if (
            progress is not None
            and progress.status in FINISHED_STATUSES
            and last_event_id >= progress.last_seq
        ):
            # The client has seen the end: 204 is the one answer that makes EventSource stop.
            return Response(status_code=204)
    # Subscribe before reading PostgreSQL, so that an event published in between is not lost.
    subscription = state.hub.subscribe(workflow_id)
    settings = state.settings
    return EventStream(
        follow(
            state.store,
            subscription,
            last_event_id=last_event_id,
            unknown_wait=settings.gateway_unknown_workflow_wait,
            catch_up_interval=settings.gateway_catch_up_interval,
        ),
        ping=settings.gateway_ping_interval,
        retry_ms=RECONNECT_MS,
        # Also if the stream never starts iterating (the client left at once).
        on_close=subscription.close,
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
        next_attempt_at=stored.get("nextAttemptAt"),
    )


def _error(stored: Any) -> ErrorView | None:
    if stored is None:
        return None
    try:
        return ErrorView.model_validate(stored)
    except ValidationError:
        return ErrorView(type="UnknownError", message=str(stored), retryable=False)
