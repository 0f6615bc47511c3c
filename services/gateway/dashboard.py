"""The dashboard's pages and the fragments their scripts swap in.

GET /                              the form (or, with /submit off, how to start a workflow) and
                                   the workflow list (filters, pages)
GET /ui/list?…                     the list's table and pager, for live refresh
GET /ui/workflows/{id}             a workflow: state, steps as a DAG and a timeline, events
                                   (live)
GET /ui/workflows/{id}/panel       its state and steps, for live refresh (?compact=1: the
                                   home page's view of a submission)
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from services.gateway import checks, html, timeline
from services.gateway.checks import InputError
from services.gateway.models import WorkflowPage, WorkflowView
from services.gateway.responses import html_response
from services.gateway.sessions import page_chrome
from services.gateway.settings import submit_off_reason
from services.gateway.state import gateway_state, tenant_of
from services.gateway.store import GatewayStore
from services.gateway.workflows import (
    QueryError,
    definition_of,
    list_filter,
    list_page,
    load_view,
    takes_signals,
)


def _page(content: str, status_code: int = 200) -> HTMLResponse:
    return html_response(content, status_code)


def _params(request: Request) -> dict[str, str]:
    """The list's parameters as the page's filter form sends them: every field, empty ones
    meaning "no filter", and the id as typed (spaces around it are no part of it)."""
    keys = ("id", "status", "workflow", "version", "before", "limit")
    given = {key: request.query_params.get(key, "").strip() for key in keys}
    return {key: value for key, value in given.items() if value}


def _refused_page(exc: InputError, chrome: html.Chrome) -> HTMLResponse:
    return _page(html.bad_request_page(exc.message, chrome=chrome), exc.status)


def _refused_fragment(exc: InputError) -> HTMLResponse:
    return _page(f'<p class="form-error">{html.esc(exc.message)}</p>', exc.status)


async def _list(request: Request, params: dict[str, str]) -> WorkflowPage:
    state = gateway_state(request)
    where, limit = list_filter(params)  # QueryError if a parameter is unusable
    where = replace(where, tenant=tenant_of(request))
    return await list_page(
        state.reads.store, where, limit, stale_after=state.settings.announce_stale_after
    )


async def home(request: Request) -> Response:
    state = gateway_state(request)
    params = _params(request)
    problem = None
    try:
        listed = await _list(request, params)
    except QueryError as exc:
        # A hand-edited URL: show the problem and the unfiltered list rather than an error page.
        problem, params = str(exc), {}
        listed = await _list(request, params)
    submit_off = (
        submit_off_reason(state.settings.gateway_submit_workflow)
        if state.submit_workflow is None
        else None
    )
    content = html.home(
        listed.items,
        listed.next,
        params,
        state.registry.names(),
        datetime.now(UTC),
        problem,
        submit_off=submit_off,
        chrome=page_chrome(request),
    )
    return _page(content)


async def list_fragment(request: Request) -> Response:
    params = _params(request)
    try:
        listed = await _list(request, params)
    except QueryError as exc:
        return _refused_fragment(exc)
    return _page(html.workflow_list(listed.items, listed.next, params, datetime.now(UTC)))


async def workflow_page(request: Request) -> Response:
    state = gateway_state(request)
    chrome = page_chrome(request)
    try:
        workflow_id = checks.workflow_id(request.path_params["workflow_id"])
    except InputError as exc:
        return _refused_page(exc, chrome)
    row = await state.reads.get_workflow(workflow_id, tenant_of(request))
    if row is None:
        # 404 (nothing to show yet), but a live page: the start may still be on its way.
        return _page(html.pending_workflow_page(workflow_id, chrome=chrome), 404)
    definition = definition_of(state.registry, row)
    view = await load_view(
        state.reads.store, row, definition, stale_after=state.settings.announce_stale_after
    )
    signals = definition if takes_signals(row, definition) else None
    now = datetime.now(UTC)
    page = html.workflow_page(
        view,
        definition,
        now,
        row.last_seq,
        signals,
        chrome=chrome,
        timeline=await _timeline(state.reads.store, view, now),
    )
    return _page(page)


async def _timeline(store: GatewayStore, view: WorkflowView, now: datetime) -> str:
    """The timeline of a workflow's steps: one query for their events."""
    events = await store.step_timeline(view.workflow_id, timeline.EVENTS, limit=timeline.MAX_EVENTS)
    return timeline.render(view, events, now)


async def panel_fragment(request: Request) -> Response:
    state = gateway_state(request)
    try:
        workflow_id = checks.workflow_id(request.path_params["workflow_id"])
    except InputError as exc:
        return _refused_fragment(exc)
    row = await state.reads.get_workflow(workflow_id, tenant_of(request))
    if row is None:
        return _page(html.pending_panel(workflow_id), 404)
    definition = definition_of(state.registry, row)
    compact = request.query_params.get("compact") == "1"
    view = await load_view(
        state.reads.store, row, definition, stale_after=state.settings.announce_stale_after
    )
    now = datetime.now(UTC)
    content = html.panel(
        view,
        definition,
        now,
        last_seq=row.last_seq,
        compact=compact,
        timeline="" if compact else await _timeline(state.reads.store, view, now),
    )
    return _page(content)
