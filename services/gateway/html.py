"""The dashboard's HTML, rendered on the server from plain data (no template engine: small
functions, every value escaped with `esc`). The pages' scripts only swap in fragments rendered
here and append event rows, so what a page shows is decided in one place."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

import orjson
from pydantic import MISSING

from relayflow.contracts import DEFAULT_TENANT
from relayflow.model import CANCELLABLE, RETRYABLE, StepStatus, WorkflowStatus
from relayflow.workflow import WorkflowDefinition
from services.gateway.dag import columns
from services.gateway.forms import signal_section
from services.gateway.models import (
    WORKFLOW_STATUSES,
    ErrorView,
    ItemView,
    MapProgressView,
    MapStepView,
    StepView,
    UndoView,
    WorkflowSummary,
)
from services.gateway.models import WorkflowView as View
from services.gateway.workflows import items_url

MAX_JSON_CHARS = 20_000
# A map step's card lists this many of its first items; the rest are a link away.
SHOWN_ITEMS = 20
ITEM_OUTPUT_CHARS = 120


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def pretty_json(value: Any) -> str:
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    if len(text) > MAX_JSON_CHARS:
        text = text[:MAX_JSON_CHARS] + "\n… (truncated)"
    return text


def duration(start: datetime | None, end: datetime | None, now: datetime | None = None) -> str:
    """`412 ms`, `3.2 s`, `4 min 05 s`; empty without a start."""
    if start is None:
        return ""
    seconds = max(0.0, ((end or now or datetime.now(UTC)) - start).total_seconds())
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def when(moment: datetime | None) -> str:
    """A <time> the page's script shows in the reader's time zone; UTC until it does."""
    if moment is None:
        return ""
    iso = moment.astimezone(UTC).isoformat()
    return f'<time datetime="{esc(iso)}">{esc(moment.astimezone(UTC).strftime("%H:%M:%S"))}</time>'


def pill(status: str, **attrs: str) -> str:
    extra = "".join(
        f' {esc(name.replace("_", "-"))}="{esc(value)}"' for name, value in attrs.items()
    )
    return f'<span class="pill s-{esc(status)}"{extra}>{esc(status)}</span>'


@dataclass(frozen=True, slots=True)
class Chrome:
    """What every page says around its content: `warning` at the top (the gateway runs without
    authentication), or, signed in, the key's id, a sign-out button and the session's CSRF
    token, which the pages' scripts send with every POST (services.gateway.sessions)."""

    warning: str | None = None
    # Who is signed in (a key's id, or `oidc:<sub>`), and how the top bar names them.
    signed_in: str | None = None
    account: str | None = None
    csrf: str | None = None


def page(
    title: str,
    body: str,
    *,
    scripts: Sequence[str] = (),
    data: Mapping[str, str] = {},
    chrome: Chrome | None = None,
) -> str:
    chrome = chrome or Chrome()
    alert = (
        f'\n  <p class="notice open-access" role="alert" data-auth="open">{esc(chrome.warning)}</p>'
        if chrome.warning
        else ""
    )
    meta = f'\n  <meta name="relayflow-csrf" content="{esc(chrome.csrf)}">' if chrome.csrf else ""
    account = (
        f'<span class="small muted" data-signed-in="{esc(chrome.signed_in)}">'
        f'{esc(chrome.account or chrome.signed_in)}</span><button type="button" '
        'class="btn ghost" data-sign-out>Sign out</button>'
        if chrome.signed_in
        else ""
    )
    attrs = "".join(f' data-{esc(key)}="{esc(value)}"' for key, value in data.items())
    tags = "".join(f'\n  <script src="/static/{esc(src)}" defer></script>' for src in scripts)
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="color-scheme" content="light">{meta}
  <title>{esc(title)} · relayflow</title>
  <link rel="icon" href="data:,">
  <link rel="stylesheet" href="/static/style.css">{tags}
</head>
<body{attrs}>
  <header class="topbar">
    <a class="brand" href="/"><span class="logo" aria-hidden="true"></span>relayflow</a>
    <nav><a href="/">Dashboard</a><a href="/ui/overview">Overview</a>
      <a href="/ui/dead-letters">Dead letters</a><a href="/openapi.json">API</a>{account}</nav>
  </header>{alert}
  <main>
{body}
  </main>
</body>
</html>
"""


# ---------------------------------------------------------------------------------------------
# The home page: the form and the list


def contact_form() -> str:
    return """<section class="card" id="new" aria-labelledby="new-title">
  <h2 id="new-title">New submission</h2>
  <p class="muted">Your message starts a durable workflow; watch it run step by step.</p>
  <form id="contact" novalidate>
    <label for="name">Name</label>
    <input id="name" name="name" autocomplete="name" required maxlength="200">
    <p class="field-error" data-for="name"></p>
    <label for="email">Email</label>
    <input id="email" name="email" type="email" autocomplete="email" required>
    <p class="field-error" data-for="email"></p>
    <label for="message">Message</label>
    <textarea id="message" name="message" rows="4" required maxlength="10000"></textarea>
    <p class="field-error" data-for="message"></p>
    <p class="form-error" id="form-error" role="alert"></p>
    <button type="submit" class="btn primary" id="send">Send</button>
  </form>
  <div id="progress" hidden aria-live="polite">
    <div id="progress-panel"></div>
    <div class="row-actions">
      <a class="btn" id="open-workflow" href="#">Open workflow</a>
      <button type="button" class="btn ghost" id="again">Send another</button>
    </div>
  </div>
</section>"""


def no_contact_form(names: Iterable[str], reason: str) -> str:
    """In the form's place when `/submit` is off (the form posts there): why, and how to start
    a workflow instead."""
    routes = "".join(f"<li><code>POST /workflows/{esc(name)}</code></li>" for name in names)
    return f"""<section class="card" id="start" aria-labelledby="start-title">
  <h2 id="start-title">Start a workflow</h2>
  <p class="muted">The contact form is off here: {esc(reason)}.</p>
  <p>Start a workflow with <code>POST /workflows/{{name}}</code> and its input as the JSON body
    (<code>Content-Type: application/json</code>); each input is described in
    <a href="/openapi.json">/openapi.json</a>. This gateway serves:</p>
  <ul>{routes}</ul>
</section>"""


def list_query(params: Mapping[str, str | None]) -> str:
    kept = {key: value for key, value in params.items() if value}
    return urlencode(kept)


def filters(params: Mapping[str, str], names: Iterable[str]) -> str:
    status = params.get("status", "")
    workflow = params.get("workflow", "")
    status_options = "".join(
        f'<option value="{esc(s)}"{" selected" if s == status else ""}>{esc(s)}</option>'
        for s in WORKFLOW_STATUSES
    )
    name_options = "".join(
        f'<option value="{esc(n)}"{" selected" if n == workflow else ""}>{esc(n)}</option>'
        for n in names
    )
    return f"""<form class="filters" id="filters" method="get" action="/" role="search">
    <input type="search" name="id" placeholder="Find by id…" aria-label="Find by workflow id"
           value="{esc(params.get("id", ""))}" autocomplete="off" spellcheck="false">
    <select name="status" aria-label="Status">
      <option value="">Any status</option>{status_options}</select>
    <select name="workflow" aria-label="Workflow">
      <option value="">Any workflow</option>{name_options}</select>
    <input type="search" name="version" placeholder="Version" aria-label="Definition version"
           value="{esc(params.get("version", ""))}" autocomplete="off" spellcheck="false"
           class="version-filter">
    <button type="submit" class="btn">Filter</button>
  </form>"""


def version_badge(version: str | None, loaded: bool | None = None) -> str:
    """The definition version a run is pinned to (nothing for a run from before versions) and,
    when no live orchestrator loads it (`versionLoaded` false), a warning beside it."""
    badge = ""
    if version is not None:
        badge = (
            f' <span class="badge version" data-version="{esc(version)}" '
            f'title="definition version {esc(version)}">{esc(version)}</span>'
        )
    if loaded is False:
        badge += (
            ' <span class="badge unloaded" data-version-loaded="false" '
            f'title="{esc(UNLOADED_ADVICE)}">not loaded</span>'
        )
    return badge


# What to do about a run whose version no live orchestrator loads.
UNLOADED_ADVICE = (
    "No running orchestrator loads this version, so the run cannot move on: its inputs are "
    "dead-lettered. Deploy that version beside the new one (both in WORKFLOWS), then redrive "
    "the dead-lettered inputs (relayflow dead-letters redrive)."
)


def unloaded_note(view: View) -> str:
    """The detail page's sentence for a run no live orchestrator can apply; else nothing."""
    if view.version_loaded is not False:
        return ""
    which = (
        f"version <code>{esc(view.version)}</code> of {esc(view.name)}"
        if view.version is not None
        else f"any version of {esc(view.name)}"
    )
    return (
        '<p class="notice unloaded" role="alert" data-version-loaded="false">'
        f"No running orchestrator loads {which}, so this run cannot move on: its inputs are "
        "dead-lettered. Deploy that version beside the new one (both in <code>WORKFLOWS</code>), "
        "then redrive the dead-lettered inputs "
        "(<code>relayflow dead-letters redrive</code>).</p>"
    )


def progress_cell(item: WorkflowSummary) -> str:
    total = max(item.steps_total, 1)
    percent = round(100 * item.steps_completed / total)
    active = ", ".join(item.active_steps)
    note = esc(active) if active else (esc(item.error.message) if item.error else "")
    return (
        f'<div class="bar" role="img" aria-label="{item.steps_completed} of '
        f'{item.steps_total} steps completed"><span style="width:{percent}%"></span></div>'
        f'<span class="small muted">{item.steps_completed}/{item.steps_total}'
        f"{' · ' + note if note else ''}</span>"
    )


def list_rows(items: Sequence[WorkflowSummary], now: datetime) -> str:
    if not items:
        return '<tr class="empty"><td colspan="4">No workflows match.</td></tr>'
    rows = []
    for item in items:
        href = f"/ui/workflows/{quote(item.workflow_id)}"
        rows.append(
            f'<tr data-workflow-id="{esc(item.workflow_id)}" data-status="{esc(item.status)}">'
            f'<td><a class="mono" href="{esc(href)}">{esc(item.workflow_id)}</a>'
            f'<div class="small muted">{esc(item.name)}'
            f"{version_badge(item.version, item.version_loaded)}</div></td>"
            f"<td>{pill(item.status)}</td>"
            f'<td class="progress">{progress_cell(item)}</td>'
            f'<td class="when">{when(item.created_at)}'
            f'<div class="small muted">{esc(duration(item.created_at, item.finished_at, now))}'
            "</div></td></tr>"
        )
    return "".join(rows)


def workflow_list(
    items: Sequence[WorkflowSummary],
    next_cursor: str | None,
    params: Mapping[str, str],
    now: datetime,
) -> str:
    """The list's table and pager: what `/ui/list` returns and the home page embeds."""
    base = {key: params.get(key) for key in ("id", "status", "workflow", "version")}
    newer = ""
    if params.get("before"):
        newer = f'<a class="btn ghost" href="/?{esc(list_query(base))}">← Newest</a>'
    older = ""
    if next_cursor:
        older = (
            f'<a class="btn ghost" rel="next" href="/?'
            f'{esc(list_query({**base, "before": next_cursor}))}">Older →</a>'
        )
    return f"""<div class="table-wrap"><table class="list">
    <thead><tr><th>Workflow</th><th>Status</th><th>Progress</th><th>Created</th></tr></thead>
    <tbody id="rows">{list_rows(items, now)}</tbody>
  </table></div>
  <nav class="pager" aria-label="Pages">{newer}{older}</nav>"""


def home(  # noqa: PLR0917 - one page's data, each piece named at the one call site
    items: Sequence[WorkflowSummary],
    next_cursor: str | None,
    params: Mapping[str, str],
    names: Iterable[str],
    now: datetime,
    problem: str | None = None,
    *,
    submit_off: str | None = None,
    chrome: Chrome | None = None,
) -> str:
    """`submit_off` says why `/submit` is off, in which case the page shows how to start a
    workflow instead of the contact form."""
    names = list(names)
    feed = list_query({"workflow": params.get("workflow"), "status": params.get("status")})
    start = contact_form() if submit_off is None else no_contact_form(names, submit_off)
    body = f"""<div class="home">
{start}
<section class="card" id="workflows" aria-labelledby="list-title"
         data-list-query="{esc(list_query(params))}" data-feed-query="{esc(feed)}">
  <div class="card-head">
    <h2 id="list-title">Workflows</h2>
    <span class="live" id="list-live" data-state="connecting">connecting…</span>
  </div>
  {filters(params, names)}
  {f'<p class="form-error">{esc(problem)}</p>' if problem else ""}
  <div id="list">{workflow_list(items, next_cursor, params, now)}</div>
</section>
</div>"""
    return page("Dashboard", body, scripts=("live.js", "home.js"), chrome=chrome)


# ---------------------------------------------------------------------------------------------
# A workflow's page


def _json_block(summary: str, value: Any, key: str, *, open_: bool = False) -> str:
    return (
        f'<details data-key="{esc(key)}"{" open" if open_ else ""}><summary>{esc(summary)}'
        f"</summary><pre>{esc(pretty_json(value))}</pre></details>"
    )


def _error_block(error: ErrorView, key: str) -> str:
    retry = "retryable" if error.retryable else "not retryable"
    return (
        f'<div class="error" data-key="{esc(key)}"><strong>{esc(error.type)}</strong> '
        f'<span class="small">({retry})</span><div>{esc(error.message)}</div></div>'
    )


def step_input(view: View, definition: WorkflowDefinition | None, name: str) -> Any:
    """What a step was given: the workflow's input, and its dependencies' outputs by name."""
    after = definition.steps[name].after if definition and name in definition.steps else ()
    outputs = {step.name: step.output for step in view.steps}
    if not after:
        return view.input
    return {"input": view.input, "dependencies": {dep: outputs.get(dep) for dep in after}}


def workflow_link(workflow_id: str) -> str:
    """A link to another workflow's page (a parent or a child)."""
    return (
        f'<a class="mono" data-workflow-link href="/ui/workflows/{quote(workflow_id)}">'
        f"{esc(workflow_id)}</a>"
    )


def map_progress(step: str, progress: MapProgressView | None) -> str:
    """A map step's progress bar: completed, failed and running parts of the total. The page's
    script updates it in place from `step.progress` events (`data-map-step`, `data-count`)."""
    counts = progress or MapProgressView(total=0, completed=0, failed=0, running=0)
    total = max(counts.total, 1)
    parts = "".join(
        f'<span class="{part}" data-part="{part}" style="width:{100 * value / total:.2f}%"></span>'
        for part, value in (
            ("completed", counts.completed),
            ("failed", counts.failed),
            ("running", counts.running),
        )
    )
    ended = counts.completed + counts.failed
    text = " · ".join(
        f'<span data-count="{part}">{value}</span> {part}'
        for part, value in (
            ("completed", counts.completed),
            ("failed", counts.failed),
            ("running", counts.running),
        )
    )
    return (
        f'<div class="map" data-map-step="{esc(step)}">'
        f'<div class="bar map-bar" role="progressbar" aria-label="{esc(step)} items" '
        f'aria-valuemin="0" aria-valuemax="{counts.total}" aria-valuenow="{ended}">{parts}</div>'
        f'<p class="small muted map-counts">{text} of <span data-count="total">{counts.total}'
        "</span> items</p></div>"
    )


def _item_detail(item: ItemView) -> str:
    if isinstance(item.error, ErrorView):
        return f"{item.error.type}: {item.error.message}"
    if item.output is not MISSING:
        text = orjson.dumps(item.output).decode()
        cut = len(text) > ITEM_OUTPUT_CHARS
        return text[:ITEM_OUTPUT_CHARS] + ("…" if cut else "")
    return ""


def item_rows(items: Sequence[ItemView], now: datetime) -> str:
    return "".join(
        f'<tr data-item-key="{esc(item.key)}" data-status="{esc(item.status)}">'
        f'<td class="num">{item.index}</td><td class="mono">{esc(item.key)}</td>'
        f"<td>{pill(item.status)}</td>"
        f'<td class="num">{item.attempts}</td>'
        f"<td>{esc(duration(item.started_at, item.finished_at, now))}</td>"
        f'<td class="details">{esc(_item_detail(item))}</td></tr>'
        for item in items
    )


def map_items(step: MapStepView, workflow_id: str, now: datetime) -> str:
    """The first of a map step's items, and links to all of them as JSON pages. Never every
    item: a map can have 10,000."""
    total = step.progress.total if step.progress is not None else len(step.items)
    shown = step.items[:SHOWN_ITEMS]
    link = (
        f'<a data-items-link href="{esc(items_url(workflow_id, step.name))}">All items</a> '
        '<span class="muted">(JSON, in pages)</span>'
    )
    if not shown:
        return f'<p class="small">{link}</p>' if total else ""
    return (
        f'<details data-key="{esc(step.name)}:items"><summary>Items (first {len(shown)} of '
        f"{total:,})</summary>"
        '<div class="table-wrap"><table class="items"><thead><tr><th>#</th><th>Key</th>'
        "<th>Status</th><th>Attempts</th><th>Took</th><th>Details</th></tr></thead>"
        f"<tbody>{item_rows(shown, now)}</tbody></table></div>"
        f'<p class="small">{link}</p></details>'
    )


def undo_section(step: StepView, now: datetime) -> str:
    """A completed step the workflow undoes: where its undo stands, its attempts and time, and
    the error of an undo that failed (or of the attempt that will be retried)."""
    undo: UndoView | None = step.undo
    if undo is None or step.compensation is None:
        return ""
    phase = step.compensation
    meta = [f"undo {undo.status}"]
    if undo.attempts:
        meta.append(f"attempt {undo.attempts}")
    took = duration(undo.started_at, undo.finished_at, now)
    if took:
        meta.append(took)
    if undo.status is StepStatus.RETRYING and undo.next_attempt_at is not None:
        meta.append(f"next at {undo.next_attempt_at.astimezone(UTC):%H:%M:%S}")
    error = _error_block(undo.error, f"{step.name}:undo-err") if undo.error is not None else ""
    return (
        f'<div class="undo s-{esc(phase)}" data-undo="{esc(step.name)}" '
        f'data-compensation="{esc(phase)}">'
        f'<p class="small"><strong>Undo</strong> {pill(phase, data_undo_status=step.name)} '
        f'<span class="muted">{esc(" · ".join(meta))}</span></p>{error}</div>'
    )


def step_card(
    step: StepView, view: View, definition: WorkflowDefinition | None, now: datetime
) -> str:
    spec = definition.steps.get(step.name) if definition else None
    meta: list[str] = [step.kind]
    if step.attempts:
        meta.append(f"attempt {step.attempts}")
    took = duration(step.started_at, step.finished_at, now)
    if took:
        meta.append(took)
    if step.status is StepStatus.RETRYING and step.next_attempt_at is not None:
        meta.append(f"next at {step.next_attempt_at.astimezone(UTC):%H:%M:%S}")
    after = ", ".join(spec.after) if spec and spec.after else ""
    undoing = f" undo-{step.compensation}" if step.compensation is not None else ""
    parts = [
        f'<article class="step s-{esc(step.status)}{esc(undoing)}" data-step="{esc(step.name)}" '
        f'data-status="{esc(step.status)}">',
        f"<header><h3>{esc(step.name)}</h3>{pill(step.status, data_step_status=step.name)}"
        "</header>",
        f'<p class="small muted">{esc(" · ".join(meta))}</p>',
    ]
    if after:
        parts.append(f'<p class="small muted">after {esc(after)}</p>')
    if step.child_workflow_id:
        parts.append(f'<p class="small">child {workflow_link(step.child_workflow_id)}</p>')
    if isinstance(step, MapStepView):
        parts.append(map_progress(step.name, step.progress))
        parts.append(map_items(step, view.workflow_id, now))
    if step.status is not StepStatus.PENDING:
        parts.append(
            _json_block("Input", step_input(view, definition, step.name), f"{step.name}:in")
        )
    if step.output is not None:
        parts.append(_json_block("Output", step.output, f"{step.name}:out"))
    if step.error is not None:
        parts.append(_error_block(step.error, f"{step.name}:err"))
    parts.append(undo_section(step, now))
    parts.append("</article>")
    return "".join(parts)


def steps_lines(view: View, now: datetime) -> str:
    """The compact form: one line per step, in order."""
    lines = []
    for step in view.steps:
        took = duration(step.started_at, step.finished_at, now)
        if isinstance(step, MapStepView) and step.progress is not None:
            counts = step.progress
            took = f"{counts.completed + counts.failed}/{counts.total} items · {took}"
        lines.append(
            f'<li class="step-line s-{esc(step.status)}" data-step="{esc(step.name)}">'
            f'<span class="name">{esc(step.name)}</span>'
            f'<span class="small muted">{esc(took)}</span>'
            f"{pill(step.status, data_step_status=step.name)}"
            + (
                ""
                if step.compensation is None
                else pill(step.compensation, data_undo_status=step.name)
            )
            + "</li>"
        )
    return f'<ol class="step-lines">{"".join(lines)}</ol>'


def steps_graph(view: View, definition: WorkflowDefinition | None, now: datetime) -> str:
    by_name = {step.name: step for step in view.steps}
    order = [step.name for step in view.steps]
    after = {name: spec.after for name, spec in (definition.steps.items() if definition else ())}
    cols = columns(order, after)
    rendered = "".join(
        '<li class="col">'
        + "".join(step_card(by_name[name], view, definition, now) for name in col)
        + "</li>"
        for col in cols
    )
    return f'<ol class="dag" aria-label="Steps, in dependency order">{rendered}</ol>'


def action_buttons(view: View) -> str:
    """What the status allows (`relayflow.model.CANCELLABLE`, `RETRYABLE`)."""
    if view.status in CANCELLABLE:
        return '<button type="button" class="btn danger" data-action="cancel">Cancel</button>'
    if view.status in RETRYABLE:
        what = "undos" if view.status is WorkflowStatus.COMPENSATION_FAILED else "steps"
        return (
            '<button type="button" class="btn primary" data-action="retry">'
            f"Retry failed {what}</button>"
        )
    return ""


def panel(
    view: View,
    definition: WorkflowDefinition | None,
    now: datetime,
    *,
    last_seq: int,
    compact: bool = False,
    timeline: str = "",
) -> str:
    """A workflow's state: what the workflow page shows above its events, and (compact) what the
    home page shows under the form while a submission runs. `timeline`: its steps over time
    (`services.gateway.timeline`), under the steps of the full view."""
    badges = version_badge(view.version, view.version_loaded)
    facts = [f"<div><dt>Workflow</dt><dd>{esc(view.name)}{badges}</dd></div>"]
    if view.parent_workflow_id:
        facts.append(f"<div><dt>Parent</dt><dd>{workflow_link(view.parent_workflow_id)}</dd></div>")
    facts.append(f"<div><dt>Created</dt><dd>{when(view.created_at)}</dd></div>")
    if view.finished_at:
        facts.append(f"<div><dt>Finished</dt><dd>{when(view.finished_at)}</dd></div>")
    took = duration(view.created_at, view.finished_at, now)
    facts.append(f"<div><dt>Duration</dt><dd>{esc(took)}</dd></div>")
    if view.tenant != DEFAULT_TENANT:
        facts.append(f"<div><dt>Tenant</dt><dd>{esc(view.tenant)}</dd></div>")
    if view.trace_id is not None:
        facts.append(
            f'<div><dt>Trace</dt><dd class="mono" data-trace-id="{esc(view.trace_id)}">'
            f"{esc(view.trace_id)}</dd></div>"
        )
    error = _error_block(view.error, "wf:err") if view.error is not None else ""
    head = (
        f'<div class="wf-head"><div class="wf-title"><h1 class="mono">{esc(view.workflow_id)}</h1>'
        f"{pill(view.status, data_workflow_status='')}</div>"
        f'<div class="actions">{"" if compact else action_buttons(view)}</div></div>'
        f'<dl class="facts">{"".join(facts)}</dl>{unloaded_note(view)}{error}'
    )
    steps = steps_lines(view, now) if compact else steps_graph(view, definition, now)
    io = ""
    if not compact:
        io = '<div class="io">' + _json_block("Workflow input", view.input, "wf:in", open_=True)
        if view.output is not None:
            io += _json_block("Workflow output", view.output, "wf:out", open_=True)
        io += "</div>"
    return (
        f'<div class="panel{" compact" if compact else ""}" data-status="{esc(view.status)}" '
        f'data-last-seq="{last_seq}">'
        f'{head}<h2 class="section">Steps</h2>{steps}{"" if compact else timeline}{io}</div>'
    )


def workflow_page(
    view: View,
    definition: WorkflowDefinition | None,
    now: datetime,
    last_seq: int,
    signals: WorkflowDefinition | None = None,
    *,
    chrome: Chrome | None = None,
    timeline: str = "",
) -> str:
    """`signals`: the definition whose signals the page offers to send (the run's own)."""
    return _live_workflow_page(
        view.workflow_id,
        panel(view, definition, now, last_seq=last_seq, timeline=timeline),
        signal_section(view.status, signals),
        chrome=chrome,
    )


def pending_workflow_page(workflow_id: str, *, chrome: Chrome | None = None) -> str:
    """The page of a workflow the orchestrator has not started yet — a link followed right after
    the submit. It follows the stream like any workflow page, which waits for the workflow to
    appear (and says so if it never does)."""
    return _live_workflow_page(workflow_id, pending_panel(workflow_id), chrome=chrome)


def _live_workflow_page(
    workflow_id: str, state: str, signals: str = "", *, chrome: Chrome | None = None
) -> str:
    body = f"""<nav class="crumbs"><a href="/">← All workflows</a></nav>
<section class="card" id="panel" aria-live="polite">{state}</section>
<p class="toast" id="toast" role="status" hidden></p>
{signals}
<section class="card" aria-labelledby="events-title">
  <div class="card-head">
    <h2 id="events-title">Events</h2>
    <span class="live" id="live" data-state="connecting">connecting…</span>
  </div>
  <div class="table-wrap"><table class="events">
    <thead><tr><th>#</th><th>Time</th><th>Event</th><th>Step</th><th>Details</th></tr></thead>
    <tbody id="events"></tbody>
  </table></div>
</section>"""
    return page(
        workflow_id,
        body,
        scripts=("live.js", "workflow.js"),
        data={"workflow-id": workflow_id},
        chrome=chrome,
    )


def bad_request_page(message: str, *, chrome: Chrome | None = None) -> str:
    """A page for a link that can never work (a workflow id no workflow can have)."""
    body = f"""<nav class="crumbs"><a href="/">← All workflows</a></nav>
<section class="card"><h1>Not a workflow</h1><p class="form-error">{esc(message)}</p></section>"""
    return page("Bad request", body, chrome=chrome)


def sign_in_page(next_path: str, *, oidc: tuple[str, str] | None = None) -> str:
    """The sign-in form (services.gateway.sessions); its script posts the key as JSON and goes
    on to `next_path`, a path on this site. With `oidc` (the issuer, and the path that starts
    signing in there: services.gateway.oidc_signin), also a link to sign in with it."""
    link = (
        f'\n  <p><a class="btn" id="signin-oidc" href="{esc(oidc[1])}?'
        f'{esc(urlencode({"next": next_path}))}">Sign in with {esc(oidc[0])}</a></p>'
        if oidc
        else ""
    )
    body = f"""<section class="card signin" aria-labelledby="signin-title">
  <h1 id="signin-title">Sign in</h1>{link}
  <p class="muted">Paste an API key whose role may read (<code>read</code>, <code>operator</code>
    or <code>admin</code>; <code>relayflow keys create</code> makes one). The gateway keeps
    a signed cookie that names the key, never the key itself.</p>
  <form id="signin" novalidate>
    <label for="key">API key</label>
    <input id="key" name="key" type="password" autocomplete="off" spellcheck="false" required
           placeholder="rf_…">
    <p class="form-error" id="signin-error" role="alert"></p>
    <button type="submit" class="btn primary" id="signin-send">Sign in</button>
  </form>
</section>"""
    return page("Sign in", body, scripts=("signin.js",), data={"next": next_path})


def pending_panel(workflow_id: str) -> str:
    """A submission the orchestrator has not started yet (its start is still in flight)."""
    return (
        f'<div class="panel" data-status="accepted" data-last-seq="0"><div class="wf-head">'
        f'<div class="wf-title"><h1 class="mono">{esc(workflow_id)}</h1>'
        f"{pill('accepted', data_workflow_status='')}</div></div>"
        '<p class="muted">Starting…</p></div>'
    )
