"""The Prometheus metrics of every service, in one place: their names, labels and the few helpers
that feed them (README, "Metrics").

The metrics live on prometheus-client's default registry, defined at import as that library
intends: a counter is process-wide by nature, and the hot path only increments it (no object per
message, no lock of ours). What needs a resource — the outbox and timer gauges read the
database — is refreshed by a task the service's lifespan owns (`refresh_backlog`), and the HTTP
endpoint is started by `relayflow.runtime.run` from `RELAYFLOW_METRICS_PORT` (the gateway
serves `/metrics` on its own port instead).

Labels stay bounded: workflow and step names come from the definitions, statuses and outcomes
from enums, and a dead letter's free-text reason is reduced to a short category
(`dead_letter_category`). Because they are bounded, each metric's labelled children are looked up
once per label values and kept (`Children`): prometheus-client's `.labels()` validates and locks
on every call, about three times the cost of the increment itself.

What they cost is measured (README, "Metrics"); `RELAYFLOW_METRICS_ENABLED=false` turns counting
off in a process (`switch`), which is also how that is measured.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from prometheus_client import Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics import MetricWrapperBase

from relayflow.contracts import EventType, WorkflowEvent
from relayflow.model import WorkflowState

log = logging.getLogger(__name__)

M = TypeVar("M", bound=MetricWrapperBase)


class _Switch:
    """Whether this process counts (`switch`): on unless its service was started with
    RELAYFLOW_METRICS_ENABLED=false. A class attribute, read on every count, so that off costs
    one attribute read."""

    on = True


def switch(*, on: bool) -> None:
    """Turn counting on or off in this process, before it serves (`relayflow.runtime.run`)."""
    _Switch.on = on


class Children(Generic[M]):
    """A labelled metric's children by label values, each looked up with `.labels()` once and
    then taken from a dict. Only for bounded label sets (every label here is one)."""

    __slots__ = ("_children", "_metric")

    def __init__(self, metric: M) -> None:
        self._metric = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


# Workflows last from milliseconds (a local task) to days (a wait for a person).
_WORKFLOW_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
_STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

WORKFLOWS_STARTED = Counter(
    "relayflow_workflows_started", "Workflows started (inserted), by workflow.", ["workflow"]
)
WORKFLOWS_FINISHED = Counter(
    "relayflow_workflows_finished",
    "Workflows that reached a final status (completed, failed, cancelled, compensated, "
    "compensation_failed).",
    ["workflow", "status"],
)
WORKFLOW_DURATION = Histogram(
    "relayflow_workflow_duration_seconds",
    "From a workflow's start to its final status.",
    ["workflow", "status"],
    buckets=_WORKFLOW_BUCKETS,
)
STEPS_FINISHED = Counter(
    "relayflow_steps_finished",
    "Steps that ended for good: completed, failed (no attempt left) or skipped.",
    ["step", "outcome"],
)
STEP_DURATION = Histogram(
    "relayflow_step_duration_seconds",
    "A completed or failed step's last attempt, from its start to its result being applied.",
    ["step"],
    buckets=_STEP_BUCKETS,
)
STEP_RETRIES = Counter(
    "relayflow_step_retries", "Failed attempts after which another is scheduled.", ["step"]
)
INBOX_DUPLICATES = Counter(
    "relayflow_inbox_duplicates",
    "Messages the inbox had seen before (redeliveries, repeated sends): not applied again.",
)
STEP_CACHE_HITS = Counter(
    "relayflow_step_cache_hits",
    "Step commands answered from their invocation's record of success, without running the body "
    "(a redelivery or a repeated command of a step that had already succeeded).",
    ["step"],
)
REDELIVERIES = Counter(
    "relayflow_redeliveries",
    "Messages the broker delivered again (redelivered=true): a consumer before this one died or "
    "handed them back. By queue.",
    ["queue"],
)
DEAD_LETTERS = Counter(
    "relayflow_dead_letters",
    "Messages moved to the dead-letter exchange, by the queue they came from and a short reason "
    "category.",
    ["queue", "reason"],
)
OUTBOX_PENDING = Gauge(
    "relayflow_outbox_pending", "Outbox rows not yet confirmed by the broker (at the last check)."
)
OUTBOX_OLDEST = Gauge(
    "relayflow_outbox_oldest_seconds",
    "Age of the oldest outbox row at the last check; 0 when the outbox is empty.",
)
TIMERS_DUE = Gauge(
    "relayflow_timers_due",
    "Durable timers past their due time and not yet fired (at the last check): above 0 for long "
    "means no orchestrator is firing them.",
)
SSE_CLIENTS = Gauge("relayflow_sse_clients", "Event streams (SSE) this gateway has open.")
HTTP_DURATION = Histogram(
    "relayflow_http_request_duration_seconds",
    "Gateway requests, by method, route template and status: from arrival until the response "
    "is made (a stream: its opening).",
    ["method", "route", "status"],
)

_FINAL = {
    EventType.WORKFLOW_COMPLETED: "completed",
    EventType.WORKFLOW_FAILED: "failed",
    EventType.WORKFLOW_CANCELLED: "cancelled",
    EventType.WORKFLOW_COMPENSATED: "compensated",
    EventType.WORKFLOW_COMPENSATION_FAILED: "compensation_failed",
}
_STEP_ENDS = {
    EventType.STEP_COMPLETED: "completed",
    EventType.STEP_FAILED: "failed",
    EventType.STEP_SKIPPED: "skipped",
}

_started = Children(WORKFLOWS_STARTED)
_finished = Children(WORKFLOWS_FINISHED)
_workflow_duration = Children(WORKFLOW_DURATION)
_steps_finished = Children(STEPS_FINISHED)
_step_duration = Children(STEP_DURATION)
_step_retries = Children(STEP_RETRIES)
_cache_hits = Children(STEP_CACHE_HITS)
_redeliveries = Children(REDELIVERIES)
_dead_letters = Children(DEAD_LETTERS)


def count_events(events: Iterable[WorkflowEvent], states: Mapping[str, WorkflowState]) -> None:
    """Count what a committed batch did, from the events it wrote; `states` holds the batch's
    workflows after it (for durations). Call only after the commit: a rolled-back batch is
    applied again and would count twice."""
    if not _Switch.on:
        return
    for event in events:
        kind = event.event
        if kind is EventType.WORKFLOW_STARTED:
            _started(event.workflow_name).inc()
        elif (status := _FINAL.get(kind)) is not None:
            _finished(event.workflow_name, status).inc()
            state = states.get(event.workflow_id)
            if state is not None:
                elapsed = (event.created_at - state.created_at).total_seconds()
                _workflow_duration(event.workflow_name, status).observe(max(elapsed, 0.0))
        elif event.step_key is not None or event.step_name is None:
            continue  # a map item's event, or a workflow event counted nowhere
        elif (outcome := _STEP_ENDS.get(kind)) is not None:
            _steps_finished(event.step_name, outcome).inc()
            if outcome != "skipped":
                _observe_step(event.step_name, event, states.get(event.workflow_id))
        elif kind is EventType.STEP_RETRYING:
            _step_retries(event.step_name).inc()


def _observe_step(name: str, event: WorkflowEvent, state: WorkflowState | None) -> None:
    step = state.steps.get(name) if state is not None else None
    if step is None or step.started_at is None:
        return
    ended = step.finished_at or event.created_at
    _step_duration(name).observe(max((ended - step.started_at).total_seconds(), 0.0))


def count_duplicates(fresh: Iterable[bool]) -> None:
    """Count the messages of a committed delivery the inbox had seen before."""
    if not _Switch.on:
        return
    repeated = sum(1 for is_fresh in fresh if not is_fresh)
    if repeated:
        INBOX_DUPLICATES.inc(repeated)


def count_cache_hit(step: str) -> None:
    """A step command answered from its invocation's record of success (its body not run)."""
    if _Switch.on:
        _cache_hits(step).inc()


def count_redeliveries(queue: str, redelivered: int) -> None:
    """`redelivered` messages of a batch from `queue` came with the broker's redelivered flag."""
    if redelivered and _Switch.on:
        _redeliveries(queue).inc(redelivered)


def sse_opened() -> None:
    if _Switch.on:
        SSE_CLIENTS.inc()


def sse_closed() -> None:
    if _Switch.on:
        SSE_CLIENTS.dec()


# The categories a dead letter's reason falls into, tried in order: the first whose words the
# reason contains (lowercased) names it. Anything else is "refused".
_CATEGORIES = (
    ("invalid", ("invalid", "not a valid", "expected an")),
    ("unstorable", ("cannot be stored",)),
    ("too_large", ("too large",)),
    ("sender", ("may not send",)),
    ("deferred", ("handed back",)),
    ("unroutable", ("could not be delivered", "unroutable")),
    ("unknown", ("unknown", "not served", "serves")),
)


def dead_letter_category(reason: str) -> str:
    """A short, bounded name for a dead letter's free-text reason (the reason itself stays in
    the message's headers)."""
    lowered = reason.lower()
    for category, words in _CATEGORIES:
        if any(word in lowered for word in words):
            return category
    return "refused"


def count_dead_letter(queue: str, reason: str) -> None:
    if _Switch.on:
        _dead_letters(queue, dead_letter_category(reason)).inc()


@dataclass(frozen=True, slots=True)
class Backlog:
    """What the orchestrator's gauges show, read from the database in one query."""

    outbox_pending: int
    outbox_oldest: float  # seconds; 0 when the outbox is empty
    timers_due: int


def set_backlog(backlog: Backlog) -> None:
    OUTBOX_PENDING.set(backlog.outbox_pending)
    OUTBOX_OLDEST.set(backlog.outbox_oldest)
    TIMERS_DUE.set(backlog.timers_due)


async def refresh_backlog(read: Callable[[], Awaitable[Backlog]], interval: float) -> None:
    """Set the backlog gauges (outbox, timers due) from `read()` every `interval` seconds, until
    cancelled: a periodic query, never one per batch. A failed read is logged and tried again;
    the gauges keep their last values meanwhile."""
    while True:
        try:
            set_backlog(await read())
        except Exception:
            log.warning("reading the outbox and timers for their gauges failed", exc_info=True)
        await asyncio.sleep(interval)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose the default registry on http://host:port/metrics (a daemon thread of
    prometheus-client's); port 0 means off."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
