"""The metrics' helpers (relayflow.metrics): what a committed batch counts, how a dead letter's
reason is reduced to a bounded category, and how the outbox gauges are kept fresh."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY

from relayflow import metrics
from relayflow.contracts import EventType, WorkflowEvent, new_message_id
from relayflow.model import StepState, StepStatus, WorkflowState, WorkflowStatus
from tests.support import wait_for

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def event(
    kind: EventType, workflow: str, *, step: str | None = None, at: float = 0
) -> WorkflowEvent:
    return WorkflowEvent(
        message_id=new_message_id(),
        workflow_id="wf_metrics",
        seq=1,
        event=kind,
        workflow_name=workflow,
        step_name=step,
        created_at=T0 + timedelta(seconds=at),
    )


def state(step: str) -> WorkflowState:
    return WorkflowState(
        id="wf_metrics",
        name="unused",
        status=WorkflowStatus.COMPLETED,
        input={},
        input_hash="",
        steps={
            step: StepState(
                status=StepStatus.COMPLETED,
                attempts=2,
                started_at=T0 + timedelta(seconds=1),
                finished_at=T0 + timedelta(seconds=1.5),
            )
        },
        created_at=T0,
        updated_at=T0,
    )


def test_a_batch_counts_workflows_and_steps_from_its_events() -> None:
    """Counting from the events the batch wrote keeps the hot path to a loop over a list the
    processor has anyway; durations come from the states it already holds."""
    workflow, step = f"w{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"
    events = [
        event(EventType.WORKFLOW_STARTED, workflow),
        event(EventType.STEP_RETRYING, workflow, step=step),
        event(EventType.STEP_COMPLETED, workflow, step=step),
        event(EventType.STEP_SKIPPED, workflow, step="other"),
        event(EventType.WORKFLOW_COMPLETED, workflow, at=2.5),
    ]
    metrics.count_events(events, {"wf_metrics": state(step)})
    assert sample("relayflow_workflows_started_total", workflow=workflow) == 1
    assert sample("relayflow_workflows_finished_total", workflow=workflow, status="completed") == 1
    assert (
        sample("relayflow_workflow_duration_seconds_sum", workflow=workflow, status="completed")
        == 2.5
    )
    assert sample("relayflow_steps_finished_total", step=step, outcome="completed") == 1
    assert sample("relayflow_steps_finished_total", step="other", outcome="skipped") >= 1
    assert sample("relayflow_step_duration_seconds_sum", step=step) == 0.5
    assert sample("relayflow_step_retries_total", step=step) == 1


def test_every_final_status_is_its_own_label() -> None:
    """Failed, cancelled and compensated runs are what an alert watches; each is a status."""
    workflow = f"w{uuid.uuid4().hex[:8]}"
    finals = {
        EventType.WORKFLOW_FAILED: "failed",
        EventType.WORKFLOW_CANCELLED: "cancelled",
        EventType.WORKFLOW_COMPENSATED: "compensated",
        EventType.WORKFLOW_COMPENSATION_FAILED: "compensation_failed",
    }
    # Without the workflow's state the count still happens; only the duration is skipped.
    metrics.count_events([event(kind, workflow) for kind in finals], {})
    for status in finals.values():
        assert sample("relayflow_workflows_finished_total", workflow=workflow, status=status) == 1
        assert (
            sample("relayflow_workflow_duration_seconds_count", workflow=workflow, status=status)
            == 0
        )


def test_duplicates_are_the_messages_not_fresh() -> None:
    """`Delivered.fresh` is False for a copy the inbox had seen: that is the duplicate count."""
    before = sample("relayflow_inbox_duplicates_total")
    metrics.count_duplicates([True, False, True, False])
    metrics.count_duplicates([True])
    assert sample("relayflow_inbox_duplicates_total") == before + 2


def test_switched_off_nothing_is_counted() -> None:
    """RELAYFLOW_METRICS_ENABLED=false is how the cost of the metrics is measured (the same code
    without them): off must mean that no counter, gauge or histogram moves."""
    workflow, step = f"w{uuid.uuid4().hex[:8]}", f"s{uuid.uuid4().hex[:8]}"
    duplicates, streams = (
        sample("relayflow_inbox_duplicates_total"),
        sample("relayflow_sse_clients"),
    )
    metrics.switch(on=False)
    try:
        metrics.count_events(
            [
                event(EventType.WORKFLOW_STARTED, workflow),
                event(EventType.STEP_COMPLETED, workflow, step=step),
            ],
            {"wf_metrics": state(step)},
        )
        metrics.count_duplicates([False])
        metrics.count_cache_hit(step)
        metrics.count_redeliveries(step, 3)
        metrics.count_dead_letter(step, "invalid")
        metrics.sse_opened()
    finally:
        metrics.switch(on=True)
    assert sample("relayflow_workflows_started_total", workflow=workflow) == 0
    assert sample("relayflow_steps_finished_total", step=step, outcome="completed") == 0
    assert sample("relayflow_step_cache_hits_total", step=step) == 0
    assert sample("relayflow_redeliveries_total", queue=step) == 0
    assert sample("relayflow_dead_letters_total", queue=step, reason="invalid") == 0
    assert sample("relayflow_inbox_duplicates_total") == duplicates
    assert sample("relayflow_sse_clients") == streams


def test_a_labelled_child_is_looked_up_once() -> None:
    """The cache is what makes a count one dict lookup and one increment: the same child each
    time, the one `.labels()` gives."""
    children = metrics.Children(metrics.STEP_RETRIES)
    step = f"s{uuid.uuid4().hex[:8]}"
    assert children(step) is children(step)
    children(step).inc(2)
    assert sample("relayflow_step_retries_total", step=step) == 2


@pytest.mark.parametrize(
    ("reason", "category"),
    [
        ("invalid message: input.email: value is not an email", "invalid"),
        ("not a valid message: bad JSON", "invalid"),
        ("invalid workflow event: seq", "invalid"),
        ("expected an ExternalRequest, got a StartWorkflow", "invalid"),
        ("cannot be stored: input.name holds NUL", "unstorable"),
        ("input too large: 2000000 bytes of JSON, the limit is 1048576", "too_large"),
        ("broker user 'x' (roles: step) may not send a StartWorkflow (engine may)", "sender"),
        ("workflow wf_1 not started yet (handed back 6 times over 61s)", "deferred"),
        ("reply to 'q' could not be delivered: PublishError()", "unroutable"),
        ("unknown workflow 'nope'", "unknown"),
        ("conflicting duplicate start", "refused"),
    ],
)
def test_dead_letter_reasons_fall_into_few_categories(reason: str, category: str) -> None:
    """The reason's text holds ids and values: as a label it would grow without bound."""
    assert metrics.dead_letter_category(reason) == category


def test_a_dead_letter_is_counted_by_queue_and_category() -> None:
    queue = f"q{uuid.uuid4().hex[:8]}"
    metrics.count_dead_letter(queue, "invalid message: x")
    assert sample("relayflow_dead_letters_total", queue=queue, reason="invalid") == 1


async def test_the_backlog_gauges_survive_a_failed_read() -> None:
    """A database hiccup must not end the refresh: the gauges keep their last value and the
    next read sets them."""
    reads = 0

    async def read() -> metrics.Backlog:
        nonlocal reads
        reads += 1
        if reads == 1:
            raise ConnectionError("database away")
        return metrics.Backlog(outbox_pending=7, outbox_oldest=3.5, timers_due=2)

    task = asyncio.create_task(metrics.refresh_backlog(read, 0.01))
    try:
        await wait_for(
            lambda: _async(sample("relayflow_outbox_pending") == 7), timeout=5, interval=0.01
        )
        assert sample("relayflow_outbox_oldest_seconds") == 3.5
        assert sample("relayflow_timers_due") == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    metrics.set_backlog(metrics.Backlog(0, 0.0, 0))


async def _async(value: bool) -> bool:
    return value
