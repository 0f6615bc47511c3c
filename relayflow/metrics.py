"""The Prometheus metrics of every service, in one place: their names, labels and the few helpers
that feed them (README, "Metrics").

The metrics live on prometheus-client's default registry, defined at import as that library
intends: a counter is process-wide by nature, and the hot path only increments it (no object per
message, no lock of ours). What needs a resource — the outbox gauges read the database — is
refreshed by a task the service's lifespan owns (`refresh_outbox`), and the HTTP endpoint is
started by `relayflow.runtime.run` from `RELAYFLOW_METRICS_PORT` (the gateway serves `/metrics`
on its own port instead).

Labels stay bounded: workflow and step names come from the definitions, statuses and outcomes
from enums, and a dead letter's free-text reason is reduced to a short category
(`dead_letter_category`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from relayflow.contracts import EventType, WorkflowEvent
from relayflow.model import WorkflowState

log = logging.getLogger(__name__)

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
HTTP_DURATION = Histogram(
    "relayflow_http_request_duration_seconds",
    "Gateway requests, by method, route template and status (streams: until their headers).",
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


def count_events(events: Iterable[WorkflowEvent], states: Mapping[str, WorkflowState]) -> None:
    """Count what a committed batch did, from the events it wrote; `states` holds the batch's
    workflows after it (for durations). Call only after the commit: a rolled-back batch is
    applied again and would count twice."""
    for event in events:
        kind = event.event
        if kind is EventType.WORKFLOW_STARTED:
            WORKFLOWS_STARTED.labels(event.workflow_name).inc()
        elif (status := _FINAL.get(kind)) is not None:
            WORKFLOWS_FINISHED.labels(event.workflow_name, status).inc()
            state = states.get(event.workflow_id)
            if state is not None:
                elapsed = (event.created_at - state.created_at).total_seconds()
                WORKFLOW_DURATION.labels(event.workflow_name, status).observe(max(elapsed, 0.0))
        elif event.step_key is not None or event.step_name is None:
            continue  # a map item's event, or a workflow event counted nowhere
        elif (outcome := _STEP_ENDS.get(kind)) is not None:
            STEPS_FINISHED.labels(event.step_name, outcome).inc()
            if outcome != "skipped":
                _observe_step(event, states.get(event.workflow_id))
        elif kind is EventType.STEP_RETRYING:
            STEP_RETRIES.labels(event.step_name).inc()


def _observe_step(event: WorkflowEvent, state: WorkflowState | None) -> None:
    step = state.steps.get(event.step_name or "") if state is not None else None
    if step is None or step.started_at is None:
        return
    ended = step.finished_at or event.created_at
    STEP_DURATION.labels(event.step_name).observe(
        max((ended - step.started_at).total_seconds(), 0.0)
    )


def count_duplicates(fresh: Iterable[bool]) -> None:
    """Count the messages of a committed delivery the inbox had seen before."""
    repeated = sum(1 for is_fresh in fresh if not is_fresh)
    if repeated:
        INBOX_DUPLICATES.inc(repeated)


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
    DEAD_LETTERS.labels(queue, dead_letter_category(reason)).inc()


def set_outbox(pending: int, oldest: float) -> None:
    OUTBOX_PENDING.set(pending)
    OUTBOX_OLDEST.set(oldest)


async def refresh_outbox(read: Callable[[], Awaitable[tuple[int, float]]], interval: float) -> None:
    """Set the outbox gauges from `read()` (pending rows, oldest age) every `interval` seconds,
    until cancelled. A failed read is logged and tried again; the gauges keep their last
    values meanwhile."""
    while True:
        try:
            set_outbox(*await read())
        except Exception:
            log.warning("reading the outbox for its gauges failed", exc_info=True)
        await asyncio.sleep(interval)


def serve_metrics(port: int, host: str = "127.0.0.1") -> None:
    """Expose the default registry on http://host:port/metrics (a daemon thread of
    prometheus-client's); port 0 means off."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
