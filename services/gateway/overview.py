"""`GET /ui/overview`: how the namespace is doing. Workflows of the last hour (the caller's
tenant's: runs per status, throughput, failure rate, p50/p99 duration per workflow name) from
three queries; and, for a caller who sees the whole namespace (`state.sees_namespace`), the
broker's queues (messages ready and consumers, each from a passive declaration: no management
API needed, and no right) and the outbox's lag. A handful of round trips per load, none per row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from starlette.requests import Request
from starlette.responses import Response

from services.gateway import operator_html
from services.gateway.models import WORKFLOW_STATUSES
from services.gateway.responses import html_response
from services.gateway.sessions import page_chrome
from services.gateway.state import gateway_state, sees_namespace, tenant_of
from services.gateway.store import FinishedStats, OutboxLag

log = logging.getLogger(__name__)

WINDOW_SECONDS = 3600
MINUTES = WINDOW_SECONDS // 60


@dataclass(frozen=True, slots=True)
class QueueDepth:
    """One queue as the broker declares it: `messages` ready (not those delivered and not yet
    acked), `consumers`; both None when the queue does not exist."""

    name: str
    messages: int | None
    consumers: int | None


@dataclass(frozen=True, slots=True)
class Overview:
    statuses: dict[str, int]
    finished: list[FinishedStats]
    # Runs finished in each minute of the window, oldest first.
    per_minute: list[int]
    # None: not shown to this caller (another tenant's: they are the namespace's).
    queues: list[QueueDepth] | None
    outbox: OutboxLag | None

    @property
    def finished_total(self) -> int:
        return sum(stats.finished for stats in self.finished)

    @property
    def throughput(self) -> float:
        """Runs finished per minute, over the window."""
        return self.finished_total / MINUTES

    @property
    def failure_rate(self) -> float | None:
        """The share of finished runs that ended in failure (cancelled ones not counted); None
        when none finished."""
        ended = sum(stats.finished - stats.cancelled for stats in self.finished)
        failed = sum(stats.failed for stats in self.finished)
        return failed / ended if ended else None


async def queue_depths(connection: AbstractConnection, names: Iterable[str]) -> list[QueueDepth]:
    """Each queue's depth and consumers from a passive declaration (which takes no right); a
    queue that does not exist closes the channel it was asked on, so the next gets a new one."""
    depths: list[QueueDepth] = []
    channel: AbstractChannel | None = None
    try:
        for name in names:
            if channel is None:
                channel = await connection.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                depths.append(QueueDepth(name, None, None))
                channel = None
                continue
            declared = queue.declaration_result
            depths.append(QueueDepth(name, declared.message_count, declared.consumer_count))
    finally:
        if channel is not None:
            await channel.close()
    return depths


async def overview_page(request: Request) -> Response:
    state = gateway_state(request)
    rows = await state.store.overview(WINDOW_SECONDS, tenant_of(request))
    queues = outbox = None
    if sees_namespace(request):
        names = [
            *state.topology.queue_bindings(state.registry.task_names()),
            state.topology.dead_letter_queue,
        ]
        queues = await queue_depths(state.connection, names)
        outbox = await state.store.outbox_lag()
    overview = Overview(
        statuses={status: rows.statuses.get(status, 0) for status in WORKFLOW_STATUSES},
        finished=rows.finished,
        per_minute=[rows.per_minute.get(ago, 0) for ago in reversed(range(MINUTES))],
        queues=queues,
        outbox=outbox,
    )
    content = operator_html.overview_page(overview, datetime.now(UTC), chrome=page_chrome(request))
    return html_response(content)
