"""Reading workflows: `GET /workflows` (the list), `GET /workflows/{id}` (state),
`GET /workflows/{id}/steps/{step}/items` (a map step's items, page by page),
`GET /workflows/{id}/events` (one workflow's events over SSE) and `GET /events` (the feed of every
workflow's events, for the dashboard)."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from pydantic import MISSING, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from relayflow import tracing
from relayflow.model import (
    ACTIVE_STEPS,
    FINISHED,
    ItemState,
    StepState,
    StepStatus,
    WorkflowStatus,
)
from relayflow.workflow import MapSpec, TaskSpec, WorkflowDefinition, WorkflowRegistry
from services.gateway import checks
from services.gateway.checks import InputError
from services.gateway.feed import event_filter, follow_feed, parse_last_id
from services.gateway.models import (
    FINISHED_STATUSES,
    WORKFLOW_STATUSES,
    CompensationPhase,
    ErrorView,
    ItemPage,
    ItemView,
    MapProgressView,
    MapStepView,
    StepView,
    UndoView,
    WorkflowPage,
    WorkflowSummary,
    WorkflowView,
)
from services.gateway.responses import error_response, model_response
from services.gateway.sse import EventStream
from services.gateway.state import gateway_state, tenant_of
from services.gateway.store import (
    GatewayStore,
    ListFilter,
    LoadedVersions,
    SummaryRow,
    WorkflowRow,
)
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
# A map step's items: GET /workflows/{id} shows the first FIRST_ITEMS; the items route pages.
FIRST_ITEMS = 100
DEFAULT_ITEMS = 100
MAX_ITEMS = 500
# `step_items.item_index` is an integer column.
MAX_ITEM_INDEX = checks.MAX_SEQ
ITEM_STATUSES: tuple[str, ...] = tuple(status.value for status in StepStatus)
_INDEX = re.compile(r"[0-9]{1,10}")


class QueryError(InputError):
    """A query parameter that cannot be used; the message says which and why (HTTP 400)."""

    def __init__(self, message: str) -> None:
        super().__init__(400, message)


def list_filter(params: Mapping[str, str]) -> tuple[ListFilter, int]:
    """The list's query parameters (`status`, `workflow`, `version`, `id`, `before`, `limit`),
    checked: each one given must be usable, even empty (the dashboard drops its form's empty
    fields first)."""
    status, name, version = status_filter(params), name_filter(params), version_filter(params)
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
    return ListFilter(status, name, id_prefix, before, version), int(raw_limit)


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


def version_filter(params: Mapping[str, str]) -> str | None:
    version = params.get("version")
    if version is not None and not checks.is_version(version):
        raise QueryError(
            "version must be a definition version (1 to 64 of A-Z a-z 0-9 . _ -), got "
            f"{checks.shown(version)}"
        )
    return version


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


async def list_page(
    store: GatewayStore, where: ListFilter, limit: int, *, stale_after: float
) -> WorkflowPage:
    """One page of the list; a row more than asked says whether an older page exists. What
    live orchestrators load is one query for the page, not one per row."""
    rows = await store.list_workflows(where, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    loaded = await store.loaded_versions(stale_after) if rows else None
    return WorkflowPage(
        items=[summary(row, loaded) for row in rows],
        next=encode_cursor(rows[-1].created_at, rows[-1].id) if more and rows else None,
    )


def version_loaded(
    name: str, version: str | None, status: WorkflowStatus, loaded: LoadedVersions
) -> bool | None:
    """Whether a live orchestrator replica can apply the run's inputs (`versionLoaded`): None
    when that is not known (no replica announces) or does not matter (the run has finished).
    A run from before versions takes the newest version loaded: any version of its name."""
    if loaded is None or status in FINISHED:
        return None
    if version is None:
        return any(loaded_name == name for loaded_name, _ in loaded)
    return (name, version) in loaded


def summary(row: SummaryRow, loaded: LoadedVersions = None) -> WorkflowSummary:
    statuses = row.step_statuses
    return WorkflowSummary(
        workflow_id=row.id,
        name=row.name,
        version=row.version,
        tenant=row.tenant,
        status=row.status,
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        last_seq=row.last_seq,
        steps_total=len(statuses),
        steps_completed=sum(1 for status in statuses.values() if status == StepStatus.COMPLETED),
        active_steps=[name for name, status in statuses.items() if status in ACTIVE_STEPS],
        error=_error(row.error),
        version_loaded=version_loaded(row.name, row.version, row.status, loaded),
    )


async def list_workflows(request: Request) -> Response:
    """Bad parameters raise `QueryError`, which the app answers."""
    state = gateway_state(request)
    where, limit = list_filter(request.query_params)
    where = replace(where, tenant=tenant_of(request))
    page = await list_page(
        state.reads.store, where, limit, stale_after=state.settings.announce_stale_after
    )
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
    subscription = hub.subscribe_all(event_filter(name, status, tenant_of(request)))
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
    row = await state.reads.get_workflow(workflow_id, tenant_of(request))
    if row is None:
        return error_response(404, f"no workflow with id {workflow_id!r}")
    view = await load_view(
        state.reads.store,
        row,
        definition_of(state.registry, row),
        stale_after=state.settings.announce_stale_after,
    )
    return model_response(view)


def definition_of(registry: WorkflowRegistry, row: WorkflowRow) -> WorkflowDefinition | None:
    """The definition to show a run with: the version it is pinned to, or the newest loaded
    when that one is not (its steps and kinds then come from its stored state where they
    differ)."""
    return registry.get(row.name, row.version) or registry.get(row.name)


def takes_signals(row: WorkflowRow, definition: WorkflowDefinition | None) -> list[str]:
    """The signals a run takes: its pinned definition's (none when that version is not loaded
    here, since the signal route could not check them)."""
    if definition is None or (row.version is not None and definition.version != row.version):
        return []
    return sorted(definition.signals)


def item_query(params: Mapping[str, str]) -> tuple[int, StepStatus | None, int]:
    """The items route's `after`, `status` and `limit`, checked like the list's: each one
    given must be usable."""
    raw_after = params.get("after")
    after = -1
    if raw_after is not None:
        if not _INDEX.fullmatch(raw_after) or int(raw_after) > MAX_ITEM_INDEX:
            raise QueryError(
                f"after must be an item index, an integer from 0 to {MAX_ITEM_INDEX}, got "
                f"{checks.shown(raw_after)}"
            )
        after = int(raw_after)
    raw_status = params.get("status")
    if raw_status is not None and raw_status not in ITEM_STATUSES:
        raise QueryError(
            f"status must be one of {', '.join(ITEM_STATUSES)}, got {checks.shown(raw_status)}"
        )
    raw_limit = params.get("limit", str(DEFAULT_ITEMS))
    if not _LIMIT.fullmatch(raw_limit) or not 1 <= int(raw_limit) <= MAX_ITEMS:
        raise QueryError(
            f"limit must be an integer from 1 to {MAX_ITEMS}, got {checks.shown(raw_limit)}"
        )
    status = None if raw_status is None else StepStatus(raw_status)
    return after, status, int(raw_limit)


def items_url(
    workflow_id: str,
    step_name: str,
    after: int | None = None,
    *,
    status: StepStatus | None = None,
    limit: int = DEFAULT_ITEMS,
) -> str:
    """The items route's URL (path and query) for the page after index `after` (None: the
    first page)."""
    query: dict[str, str] = {} if after is None else {"after": str(after)}
    if status is not None:
        query["status"] = status.value
    if limit != DEFAULT_ITEMS:
        query["limit"] = str(limit)
    path = f"/workflows/{quote(workflow_id, safe='')}/steps/{quote(step_name, safe='')}/items"
    return f"{path}?{urlencode(query)}" if query else path


async def step_items(request: Request) -> Response:
    """A page of a map step's items, keyset-paginated by item index. Bad ids and parameters
    raise `checks.InputError`, which the app answers (400); an unknown workflow, a step it does
    not have and a step that is not a map (and so has no items) are 404s."""
    state = gateway_state(request)
    workflow_id = checks.workflow_id(request.path_params["workflow_id"])
    step_name = checks.step_name(request.path_params["step_name"])
    after, status, limit = item_query(request.query_params)
    row = await state.reads.get_workflow(workflow_id, tenant_of(request))
    if row is None:
        return error_response(404, f"no workflow with id {workflow_id!r}")
    definition = definition_of(state.registry, row)
    kinds = step_kinds(row, definition)
    kind = kinds.get(step_name)
    if kind is None:
        return error_response(404, f"workflow {workflow_id!r} has no step {step_name!r}")
    if kind != MapSpec.kind:
        return error_response(
            404, f"step {step_name!r} is a {kind} step, not a {MapSpec.kind}: it has no items"
        )
    found = await state.reads.store.items_after(
        workflow_id, step_name, after=after, status=status, limit=limit + 1
    )
    shown = found[:limit]
    more = len(found) > limit
    return model_response(
        ItemPage(
            items=[item_view(item) for item in shown],
            next=items_url(workflow_id, step_name, shown[-1].index, status=status, limit=limit)
            if more
            else None,
        )
    )


async def workflow_events(request: Request) -> Response:
    """Bad requests raise `checks.InputError`, which the app answers: before the stream opens,
    never in it."""
    state = gateway_state(request)
    workflow_id = checks.workflow_id(request.path_params["workflow_id"])
    last_event_id = checks.last_event_seq(request)
    tenant = tenant_of(request)
    if last_event_id is not None:
        # On the primary: a replica behind a retry would end the stream before its events.
        progress = await state.store.workflow_progress(workflow_id, tenant)
        if (
            progress is not None
            and progress.status in FINISHED_STATUSES
            and last_event_id >= progress.last_seq
        ):
            # The client has seen the end: 204 is the one answer that makes EventSource stop.
            return Response(status_code=204)
    # Subscribe before reading PostgreSQL, so that an event published in between is not lost.
    subscription = state.hub.subscribe(workflow_id, tenant)
    settings = state.settings
    return EventStream(
        follow(
            state.reads,
            subscription,
            last_event_id=last_event_id or 0,
            unknown_wait=settings.gateway_unknown_workflow_wait,
            catch_up_interval=settings.gateway_catch_up_interval,
            hops=state.hops,
        ),
        ping=settings.gateway_ping_interval,
        retry_ms=RECONNECT_MS,
        # Also if the stream never starts iterating (the client left at once).
        on_close=subscription.close,
        direct=subscription.attach,
    )


def step_kinds(row: WorkflowRow, definition: WorkflowDefinition | None) -> dict[str, str]:
    """Each step's kind, in the view's order: the definition's steps, then those only the row
    has (an older version's), whose kind is what their state shows."""
    kinds = {name: spec.kind for name, spec in (definition.steps.items() if definition else ())}
    order = list(definition.order) if definition is not None else []
    order.extend(name for name in row.steps if name not in order)
    return {name: kinds.get(name) or _stored_kind(row.steps.get(name)) for name in order}


def _stored_kind(stored: Any) -> str:
    # Only a map step's state holds `progress`.
    if isinstance(stored, dict) and stored.get("progress"):
        return MapSpec.kind
    return TaskSpec.kind


async def load_view(
    store: GatewayStore,
    row: WorkflowRow,
    definition: WorkflowDefinition | None,
    *,
    stale_after: float,
) -> WorkflowView:
    """The workflow's view with the first items of its map steps: one query for the workflow,
    one (whatever the number of map steps) for their items, and, while it has not finished,
    one for what live orchestrators load."""
    maps = [name for name, kind in step_kinds(row, definition).items() if kind == MapSpec.kind]
    items = await store.first_items(row.id, maps, limit=FIRST_ITEMS + 1)
    loaded = None if row.status in FINISHED else await store.loaded_versions(stale_after)
    return workflow_view(row, definition, items, loaded)


def workflow_view(
    row: WorkflowRow,
    definition: WorkflowDefinition | None,
    items: Mapping[str, list[ItemState]] | None = None,
    loaded: LoadedVersions = None,
) -> WorkflowView:
    """Steps in the definition's order; a step the orchestrator has not touched is pending.
    Steps the definition does not know (an older version's) follow in stored order. Map steps
    show the first of `items` (their first items, read by `load_view`). `signals` are the
    names the definition declares, `mailbox` how many of each are kept for a later wait;
    `loaded`, what live orchestrators load (`version_loaded`)."""
    items = items or {}
    return WorkflowView(
        workflow_id=row.id,
        name=row.name,
        version=row.version,
        tenant=row.tenant,
        trace_id=tracing.trace_id(row.trace_parent),
        status=row.status,
        input=row.input,
        output=row.output,
        error=_error(row.error),
        created_at=row.created_at,
        updated_at=row.updated_at,
        finished_at=row.finished_at,
        parent_workflow_id=row.parent_workflow_id,
        steps=[
            _step(row.id, name, kind, row.steps.get(name), items.get(name, []))
            for name, kind in step_kinds(row, definition).items()
        ],
        signals=takes_signals(row, definition),
        mailbox={name: count for name, count in sorted(row.mailbox.items()) if count},
        version_loaded=version_loaded(row.name, row.version, row.status, loaded),
    )


def _step(workflow_id: str, name: str, kind: str, stored: Any, items: list[ItemState]) -> StepView:
    # A step the orchestrator has not touched is pending.
    step = StepState.from_json(stored) if isinstance(stored, dict) else StepState()
    if kind == MapSpec.kind:
        shown = items[:FIRST_ITEMS]
        progress = step.progress
        return MapStepView(
            **_step_fields(name, step),
            progress=None if progress is None else MapProgressView(**progress.to_json()),
            items=[item_view(item) for item in shown],
            items_next=items_url(workflow_id, name, shown[-1].index)
            if len(items) > FIRST_ITEMS
            else None,
        )
    return StepView(kind=kind, **_step_fields(name, step))


def compensation_phase(undo: StepState) -> CompensationPhase:
    """Where an undo stands, in the workflow statuses' words."""
    if undo.status is StepStatus.COMPLETED:
        return WorkflowStatus.COMPENSATED
    if undo.status is StepStatus.FAILED:
        return WorkflowStatus.COMPENSATION_FAILED
    return WorkflowStatus.COMPENSATING


def undo_view(undo: StepState) -> UndoView:
    return UndoView(
        status=undo.status,
        attempts=undo.attempts,
        error=_error(undo.error),
        started_at=undo.started_at,
        finished_at=undo.finished_at,
        next_attempt_at=undo.next_attempt_at,
    )


def _step_fields(name: str, step: StepState) -> dict[str, Any]:
    undo = step.undo
    return {
        "compensation": None if undo is None else compensation_phase(undo),
        "undo": None if undo is None else undo_view(undo),
        "name": name,
        "status": step.status,
        "attempts": step.attempts,
        "output": step.output,
        "error": _error(step.error),
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "next_attempt_at": step.next_attempt_at,
        "child_workflow_id": step.child_workflow_id,
    }


def item_view(item: ItemState) -> ItemView:
    """The item as `ItemState.to_json` shapes it (output only once completed, error only when
    set), its error read like a step's."""
    shown = item.to_json()
    error = _error(shown.get("error"))
    return ItemView(
        key=item.key,
        index=item.index,
        status=item.status,
        attempts=item.attempts,
        started_at=item.started_at,
        finished_at=item.finished_at,
        output=shown.get("output", MISSING),
        error=MISSING if error is None else error,
    )


def _error(stored: Any) -> ErrorView | None:
    if stored is None:
        return None
    try:
        return ErrorView.model_validate(stored)
    except ValidationError:
        return ErrorView(type="UnknownError", message=str(stored), retryable=False)
