"""The operator's pages (dead letters, the overview), rendered like the rest of the dashboard
(`services.gateway.html`): plain functions over plain data, every value escaped. Their one
script, `operator.js`, posts the re-drives; nothing here runs inline."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

from services.gateway.html import Chrome, duration, esc, page, pill, pretty_json, when
from services.gateway.models import DeadLetterDetail, DeadLetterPage, DeadLetterView
from services.gateway.store import FinishedStats

if TYPE_CHECKING:  # overview.py renders with this module: imported for the types only
    from services.gateway.overview import Overview, QueueDepth

MAX_BODY_CHARS = 100_000


def age(seconds: float | None) -> str:
    """`42 s`, `7 min`, `3 h 05 min`, `2 d 4 h`; `?` when not known."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def dead_letter_href(message_id: str) -> str:
    return f"/ui/dead-letters/{quote(message_id, safe='')}"


def _where(letter: DeadLetterView) -> str:
    queue = esc(letter.queue or "-")
    route = f"{letter.exchange or '-'} / {letter.routing_key or '-'}"
    return f'<span class="mono">{queue}</span><div class="small muted mono">{esc(route)}</div>'


def _redrive_button(letter: DeadLetterView) -> str:
    if not letter.exchange:
        return '<span class="small muted" title="it names no exchange to go back to">—</span>'
    return (
        f'<button type="button" class="btn" data-redrive="{esc(letter.message_id)}">'
        "Redrive</button>"
    )


def dead_letter_rows(items: Sequence[DeadLetterView], *, may_redrive: bool) -> str:
    if not items:
        return '<tr class="empty"><td colspan="6">No dead letters.</td></tr>'
    rows = []
    for letter in items:
        action = f"<td>{_redrive_button(letter)}</td>" if may_redrive else ""
        rows.append(
            f'<tr data-message-id="{esc(letter.message_id)}">'
            f'<td><a class="mono" href="{esc(dead_letter_href(letter.message_id))}">'
            f"{esc(letter.message_id or '(no id)')}</a>"
            f'<div class="small muted">{esc(letter.type or "-")}</div></td>'
            f'<td class="reason">{esc(letter.reason)}</td>'
            f"<td>{_where(letter)}</td>"
            f'<td class="when" data-age="{esc(letter.age_seconds or "")}">'
            f"{esc(age(letter.age_seconds))}"
            f'<div class="small muted">{when(letter.dead_lettered_at)}</div></td>'
            f"{action}</tr>"
        )
    return "".join(rows)


def _pager(listed: DeadLetterPage) -> str:
    links = []
    if listed.offset > 0:
        back = max(0, listed.offset - listed.limit)
        query = urlencode({"offset": back, "limit": listed.limit})
        links.append(f'<a class="btn ghost" href="/ui/dead-letters?{esc(query)}">← Earlier</a>')
    if listed.next is not None:
        query = urlencode({"offset": listed.next, "limit": listed.limit})
        links.append(
            f'<a class="btn ghost" rel="next" href="/ui/dead-letters?{esc(query)}">Later →</a>'
        )
    return f'<nav class="pager" aria-label="Pages">{"".join(links)}</nav>'


def _read_only_note(may_redrive: bool) -> str:
    if may_redrive:
        return ""
    return (
        '<p class="small muted" data-read-only>Your role may look at dead letters; re-driving '
        "them takes the <code>operator</code> role.</p>"
    )


def dead_letters_page(
    listed: DeadLetterPage, now: datetime, *, may_redrive: bool, chrome: Chrome | None = None
) -> str:
    first = listed.offset + 1 if listed.items else listed.offset
    last = listed.offset + len(listed.items)
    partial = " (the first 10,000: the queue holds more)" if listed.seen >= 10_000 else ""
    all_button = ""
    if may_redrive and listed.seen:
        all_button = (
            '<details class="confirm" id="redrive-all-box"><summary class="btn">Redrive all…'
            '</summary><p class="small">Send every dead letter back to where it came from '
            "(fix the cause first, or they come back here).</p>"
            '<button type="button" class="btn primary" data-redrive-all>'
            f"Redrive all {listed.seen:,}</button></details>"
        )
    action_head = "<th></th>" if may_redrive else ""
    body = f"""<p class="toast" id="toast" role="status" hidden></p>
<section class="card" id="dead-letters" aria-labelledby="dl-title">
  <div class="card-head">
    <h1 id="dl-title">Dead letters</h1>{all_button}
  </div>
  <p class="muted" data-seen="{listed.seen}">{listed.seen:,} in
    <code>{esc(listed.queue)}</code>{partial}
    {f"· showing {first:,} to {last:,}" if listed.items else ""}. Looking consumes nothing: the
    gateway takes them unacknowledged and hands every one back, in order.</p>
  {_read_only_note(may_redrive)}
  <div class="table-wrap"><table class="list dead-letters">
    <thead><tr><th>Message</th><th>Reason</th><th>From</th><th>Age</th>{action_head}</tr></thead>
    <tbody id="rows">{dead_letter_rows(listed.items, may_redrive=may_redrive)}</tbody>
  </table></div>
  {_pager(listed)}
</section>"""
    return page("Dead letters", body, scripts=("live.js", "operator.js"), chrome=chrome)


def _body_text(detail: DeadLetterDetail) -> str:
    if isinstance(detail.body, str):
        text = detail.body
        if len(text) > MAX_BODY_CHARS:
            text = text[:MAX_BODY_CHARS] + "\n… (truncated)"
        return text
    return pretty_json(detail.body)


def dead_letter_page(
    detail: DeadLetterDetail, now: datetime, *, may_redrive: bool, chrome: Chrome | None = None
) -> str:
    facts = [
        ("Message id", f'<span class="mono">{esc(detail.message_id)}</span>'),
        ("Type", esc(detail.type or "-")),
        ("Queue", f'<span class="mono">{esc(detail.queue or "-")}</span>'),
        (
            "From",
            f'<span class="mono">{esc(detail.exchange or "-")} / '
            f"{esc(detail.routing_key or '-')}</span>",
        ),
        ("Dead-lettered", f"{when(detail.dead_lettered_at)} ({esc(age(detail.age_seconds))} ago)"),
        ("Content type", esc(detail.content_type or "-")),
        ("Correlation id", f'<span class="mono">{esc(detail.correlation_id or "-")}</span>'),
    ]
    shown = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in facts)
    button = (
        _redrive_button(detail).replace('class="btn"', 'class="btn primary"') if may_redrive else ""
    )
    kind = "text" if isinstance(detail.body, str) else "JSON"
    body = f"""<nav class="crumbs"><a href="/ui/dead-letters">← All dead letters</a></nav>
<p class="toast" id="toast" role="status" hidden></p>
<section class="card" id="dead-letter" data-message-id="{esc(detail.message_id)}">
  <div class="wf-head"><div class="wf-title"><h1>Dead letter</h1></div>
    <div class="actions">{button}</div></div>
  <div class="error"><strong>Reason</strong><div data-reason>{esc(detail.reason)}</div></div>
  <dl class="facts">{shown}</dl>
  {_read_only_note(may_redrive)}
  <h2 class="section">Headers</h2>
  <pre id="dl-headers">{esc(pretty_json(detail.headers))}</pre>
  <h2 class="section">Body <span class="small muted">({kind})</span></h2>
  <pre id="dl-body">{esc(_body_text(detail))}</pre>
</section>"""
    return page(
        f"Dead letter {detail.message_id}",
        body,
        scripts=("live.js", "operator.js"),
        chrome=chrome,
    )


def missing_dead_letter_page(message_id: str, *, chrome: Chrome | None = None) -> str:
    body = f"""<nav class="crumbs"><a href="/ui/dead-letters">← All dead letters</a></nav>
<section class="card"><h1>No such dead letter</h1>
<p>No dead letter has message id <code>{esc(message_id)}</code>: it may have been re-driven
already.</p></section>"""
    return page("Dead letter", body, chrome=chrome)


def refused_page(message: str, *, chrome: Chrome | None = None) -> str:
    """A page that cannot show what it is for, and why (the broker refused, not this tenant's)."""
    body = f"""<section class="card"><h1>Not available</h1>
<p class="form-error" data-refused>{esc(message)}</p></section>"""
    return page("Not available", body, chrome=chrome)


# ---- the overview ---------------------------------------------------------------------------


def seconds_text(seconds: float | None) -> str:
    """A duration in seconds as the dashboard writes durations (`412 ms`, `3.2 s`, `4 min 05 s`)."""
    if seconds is None:
        return "-"
    start = datetime(2000, 1, 1, tzinfo=UTC)
    return duration(start, start + timedelta(seconds=max(0.0, seconds)))


def _status_counts(overview: Overview) -> str:
    cells = "".join(
        f'<div class="stat" data-status-count="{esc(status)}">{pill(status)}'
        f'<span class="count">{count:,}</span></div>'
        for status, count in overview.statuses.items()
    )
    return f'<div class="stats">{cells}</div>'


def _per_minute(counts: Sequence[int]) -> str:
    """Runs finished per minute as CSS bars, oldest left (heights in style attributes: the CSP
    allows those, no script)."""
    top = max(counts, default=0) or 1
    bars = "".join(
        f'<span style="height:{100 * count / top:.1f}%" '
        f'title="{count} finished {len(counts) - index - 1} min ago"></span>'
        for index, count in enumerate(counts)
    )
    return (
        f'<div class="spark" role="img" aria-label="runs finished per minute, the last '
        f'{len(counts)} minutes">{bars}</div>'
    )


def _finished_rows(finished: Sequence[FinishedStats]) -> str:
    if not finished:
        return '<tr class="empty"><td colspan="5">No run finished in the last hour.</td></tr>'
    return "".join(
        f'<tr data-workflow-name="{esc(stats.name)}"><td>{esc(stats.name)}</td>'
        f'<td class="num">{stats.finished:,}</td>'
        f'<td class="num">{stats.failed:,}</td>'
        f'<td class="num" data-p50>{esc(seconds_text(stats.p50))}</td>'
        f'<td class="num" data-p99>{esc(seconds_text(stats.p99))}</td></tr>'
        for stats in finished
    )


def _queue_rows(queues: Sequence[QueueDepth]) -> str:
    rows = []
    for queue in queues:
        if queue.messages is None:
            cells = '<td class="num" colspan="2"><span class="muted">not declared</span></td>'
        else:
            idle = " idle" if queue.consumers == 0 and queue.messages else ""
            cells = (
                f'<td class="num" data-messages>{queue.messages:,}</td>'
                f'<td class="num{idle}" data-consumers>{queue.consumers:,}</td>'
            )
        rows.append(
            f'<tr data-queue="{esc(queue.name)}">'
            f'<td class="mono">{esc(queue.name)}</td>{cells}</tr>'
        )
    return "".join(rows)


def _broker_section(overview: Overview) -> str:
    if overview.queues is None or overview.outbox is None:
        return (
            '<section class="card" id="broker"><h2>Queues and outbox</h2><p class="muted">'
            "The broker's queues and the outbox belong to the whole namespace: a key of the "
            "default tenant sees them.</p></section>"
        )
    lag = overview.outbox
    return f"""<section class="card" id="broker" aria-labelledby="queues-title">
  <h2 id="queues-title">Queues</h2>
  <p class="small muted">Messages ready and consumers, as the broker declares each queue of the
    topology now (messages delivered and not yet acknowledged are not counted).</p>
  <div class="table-wrap"><table class="list queues">
    <thead><tr><th>Queue</th><th class="num">Messages</th><th class="num">Consumers</th></tr>
    </thead>
    <tbody>{_queue_rows(overview.queues)}</tbody>
  </table></div>
  <h2>Outbox</h2>
  <p id="outbox" data-pending="{lag.pending}"><strong>{lag.pending:,}</strong> message(s) not yet
    confirmed by the broker; the oldest waits
    <strong>{esc(seconds_text(lag.oldest_seconds))}</strong>.</p>
</section>"""


def overview_page(overview: Overview, now: datetime, *, chrome: Chrome | None = None) -> str:
    rate = overview.failure_rate
    rate_text = "-" if rate is None else f"{100 * rate:.1f}%"
    body = f"""<section class="card" id="overview" aria-labelledby="overview-title">
  <div class="card-head"><h1 id="overview-title">Overview</h1>
    <span class="small muted">the last hour, as of {when(now)}</span></div>
  <h2>Runs started, by status now</h2>
  {_status_counts(overview)}
  <div class="figures">
    <div><dt>Throughput</dt><dd id="throughput">{overview.throughput:.2f} / min</dd>
      <p class="small muted">{overview.finished_total:,} finished</p></div>
    <div><dt>Failure rate</dt><dd id="failure-rate">{rate_text}</dd>
      <p class="small muted">failed, compensated or compensation_failed, of those finished
        (cancelled not counted)</p></div>
  </div>
  {_per_minute(overview.per_minute)}
  <h2>Durations of finished runs</h2>
  <div class="table-wrap"><table class="list durations">
    <thead><tr><th>Workflow</th><th class="num">Finished</th><th class="num">Failed</th>
      <th class="num">p50</th><th class="num">p99</th></tr></thead>
    <tbody>{_finished_rows(overview.finished)}</tbody>
  </table></div>
</section>
{_broker_section(overview)}"""
    return page("Overview", body, scripts=("live.js",), chrome=chrome)
