"""Reading workflows: `GET /workflows` (the list), `GET /workflows/{id}` (state),
`GET /workflows/{id}/events` (one workflow's events over SSE) and `GET /events` (the feed of every
workflow's events, for the dashboard)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from relayflow.model import ACTIVE_STEPS, StepState, StepStatus
from relayflow.workflow import StepSpec, TaskSpec, WorkflowDefinition
from services.gateway import checks
from services.gateway.checks import InputError
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

# Browsers reconnect a broken event stream after this many milliseconds (sent as `retry:`).
RECONNECT_MS = 500
DEFAULT_PAGE = 50
MAX_PAGE = 200
_ID_PREFIX = re.compile(checks.WORKFLOW_ID_PATTERN)
# What `encode_cursor` writes: unpadded base64url.
CURSOR_PATTERN = "^[A-Za-z0-9_-]+$"
_CURSOR = re.compile(CURSOR_PATTERN)
_LIMIT = re.compile(r"[0-9]{1,3}")


class QueryError(InputError):
    """A query parameter that cannot be used; the message says which and why (HTTP 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def list_filter(params: Mapping[str, str]) -> tuple[ListFilter, int]:
    """The list's query parameters (`status`, `workflow`, `id`, `before`, `limit`), checked: each
    one given must be usable, even empty (the dashboard drops its form's empty fields first)."""
    status, name = status_filter(params), name_filter(params)
    id_prefix = params.get("id")
    if id_prefix is not None and not _ID_PREFIX.fullmatch(id_prefix):
        raise QueryError(f"id must be (the start of) a workflow id, got {checks.shown(id_prefix)}")
    cursor = params.get("before")
    before = None if cursor is None else decode_cursor(cursor)
    raw_limit = params.get("limit", str(DEFAULT_PAGE))
    if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_PAGE:
        raise QueryError(
            f"limit must be an integer from 1 to {MAX_PAGE}, got {checks.shown(raw_limit)}"
        )
    return ListFilter(status, name, id_prefix, before), int(raw_limit)


def status_filter(params: Mapping[str, str]) -> str | None:
    status = params.get("status")
    if status is not None and status not in WORKFLOW_STATUSES:
        raise QueryError(
            f"status must be one of {', '.join(WORKFLOW_STATUSES)}, got {checks.shown(status)}"
        )
    return status


def name_filter(params: Mapping[str, str]) -> str | None:
    name = params.get("workflow")
    if name is not None and not checks.is_workflow_name(name):
        raise QueryError(
            "workflow must be a workflow name (a letter, then up to 63 letters, digits, '_' or "
            f"'-'), got {checks.shown(name)}"
        )
    return name


def encode_cursor(created_at: datetime, workflow_id: str) -> str:
    raw = f"{created_at.isoformat()}|{workflow_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    problem = QueryError(
        f"before must be a cursor from a previous page, got {checks.shown(cursor)}"
    )
    if not _CURSOR.fullmatch(cursor):
        raise problem
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, workflow_id = raw.partition("|")
        created_at = datetime.fromisoformat(at)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise problem from None
    # The id goes to PostgreSQL: one that cannot be valid (a NUL, say) is no cursor of ours.
    if not _ID_PREFIX.fullmatch(workflow_id) or created_at.tzinfo is None:
        raise problem
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
        steps_completed=sum(1 for status in statuses.values() if status == StepStatus.COMPLETED),
        active_steps=[name for name, status in statuses.items() if status in ACTIVE_STEPS],
        error=_error(row.error),
    )


async def list_workflows(request: Request) -> Response:
    """Bad parameters raise `QueryError`, which the app answers."""
    state = gateway_state(request)
    where, limit = list_filter(request.query_params)
    page = await list_page(state.store, where, limit)
    return model_response(page)


async def all_events(request: Request) -> Response:
    """The feed (`services.gateway.feed`): every workflow's events, filtered by `workflow` name
    and `status`."""
    state = gateway_state(request)
    params = request.query_params
    status, name = status_filter(params), name_filter(params)
    hub = state.hub
    # Any id the feed cannot resume from means a `reset`, so this one is not refused.
    last = parse_last_id(
        request.headers.get(checks.LAST_EVENT_ID_HEADER) or params.get(checks.LAST_EVENT_ID_QUERY)
    )
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


async def get_workflow(request: Request, raw_id: str) -> Response:
    state = gateway_state(request)
    workflow_id = checks.workflow_id(raw_id)
    row = await state.store.get_workflow(workflow_id)
    if row is None:
        return error_response(404, f"no workflow with id {workflow_id!r}")
    return model_response(workflow_view(row, state.registry.get(row.name)))


async def workflow_events(request: Request) -> Response:
    """Bad requests raise `checks.InputError`, which the app answers: before the stream opens,
    never in it."""
    state = gateway_state(request)
    workflow_id = checks.workflow_id(request.path_params["workflow_id"])
    last_event_id = checks.last_event_seq(request)
    if last_event_id is not None:
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
            last_event_id=last_event_id or 0,
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
        parent_workflow_id=row.parent_workflow_id,
        steps=[
            _step(name, row.steps.get(name), definition.steps.get(name) if definition else None)
            for name in order
        ],
    )


def _step(name: str, stored: Any, spec: StepSpec | None) -> StepView:
    kind = spec.kind if spec is not None else TaskSpec.kind
    if not isinstance(stored, dict):
        return StepView(name=name, kind=kind, status=StepStatus.PENDING)
    step = StepState.from_json(stored)
    return StepView(
        name=name,
        kind=kind,
        status=step.status,
        attempts=step.attempts,
        output=step.output,
        error=_error(step.error),
        started_at=step.started_at,
        finished_at=step.finished_at,
        next_attempt_at=step.next_attempt_at,
        child_workflow_id=step.child_workflow_id,
    )


def _error(stored: Any) -> ErrorView | None:
    if stored is None:
        return None
    try:
        return ErrorView.model_validate(stored)
    except ValidationError:
        return ErrorView(type="UnknownError", message=str(stored), retryable=False)
