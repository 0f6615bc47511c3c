"""The workflow page's timeline (`services.gateway.timeline`), from a view and its step events:
a bar per attempt with the back-off between, an undo of its own, a map step as one row with its
progress, state times when events are gone, and rows that stay one per step at any size."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from relayflow.model import StepStatus, WorkflowStatus
from services.gateway import timeline
from services.gateway.models import MapProgressView, MapStepView, StepView, WorkflowView
from services.gateway.store import TimelineEvent

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def view(*steps: StepView, finished: float | None = 10) -> WorkflowView:
    return WorkflowView(
        workflow_id="wf_x",
        name="flow",
        status=WorkflowStatus.COMPLETED if finished is not None else WorkflowStatus.RUNNING,
        input={},
        created_at=T0,
        updated_at=T0,
        finished_at=None if finished is None else at(finished),
        steps=list(steps),
    )


def event(seq: int, name: str, step: str, seconds: float, attempt: int | None = 1) -> TimelineEvent:
    return TimelineEvent(seq=seq, event=name, step_name=step, attempt=attempt, at=at(seconds))


def test_a_retried_step_shows_each_attempt_and_the_wait_between() -> None:
    """Why the timeline reads the events: the step's state keeps only its last attempt."""
    step = StepView(
        name="charge",
        status=StepStatus.COMPLETED,
        attempts=2,
        started_at=at(4),
        finished_at=at(6),
    )
    events = [
        event(1, "step.started", "charge", 0),
        event(2, "step.retrying", "charge", 2),
        event(3, "step.started", "charge", 4, attempt=2),
        event(4, "step.completed", "charge", 6, attempt=2),
    ]
    (lane,) = timeline.lanes(view(step), events, at(10))
    assert [(bar.outcome, bar.attempt) for bar in lane.bars] == [
        ("retried", 1),
        ("backoff", None),
        ("completed", 2),
    ]
    html = timeline.render(view(step), events, at(10))
    assert html.count('class="tl-bar o-') == 3 + len(timeline.OUTCOMES)  # and the legend's
    assert 'style="left:40.00%;width:20.00%"' in html  # attempt 2: 4 s to 6 s of 10 s
    assert 'data-attempt="2"' in html


def test_an_undo_is_a_bar_of_its_own_and_an_open_attempt_runs_to_now() -> None:
    steps = (
        StepView(name="reserve", status=StepStatus.COMPLETED, started_at=at(0), finished_at=at(1)),
        StepView(name="ship", status=StepStatus.RUNNING, started_at=at(2)),
    )
    events = [
        event(1, "step.started", "reserve", 0),
        event(2, "step.completed", "reserve", 1),
        event(3, "step.compensating", "reserve", 3),
        event(4, "step.compensated", "reserve", 4),
        event(5, "step.started", "ship", 2),
    ]
    reserve, ship = timeline.lanes(view(*steps, finished=None), events, at(8))
    assert [bar.outcome for bar in reserve.bars] == ["completed", "undone"]
    assert [(bar.outcome, bar.end) for bar in ship.bars] == [("running", None)]
    html = timeline.render(view(*steps, finished=None), events, at(8))
    assert re.search(r'o-running"[^>]*style="left:25\.00%;width:75\.00%"', html)


def test_a_map_step_is_one_row_with_its_progress() -> None:
    """A map of thousands of items must not draw thousands of rows."""
    step = MapStepView(
        name="each",
        status=StepStatus.RUNNING,
        started_at=at(0),
        progress=MapProgressView(total=4000, completed=1000, failed=0, running=10),
    )
    events = [event(1, "step.started", "each", 0)]
    html = timeline.render(view(step, finished=None), events, at(5))
    assert html.count('data-timeline-step="each"') == 1
    assert 'class="tl-fill" style="width:25.0%"' in html
    assert "1,000/4,000" in html


def test_steps_without_events_use_their_state_and_fifty_steps_are_fifty_rows() -> None:
    steps = [
        StepView(
            name=f"step{n}",
            status=StepStatus.COMPLETED,
            attempts=1,
            started_at=at(n * 0.1),
            finished_at=at(n * 0.1 + 0.1),
        )
        for n in range(60)
    ]
    html = timeline.render(view(*steps), [], at(10))
    assert html.count('class="tl-row" role="row"') == 60
    assert html.count('data-outcome="completed"') == 60


def test_nothing_while_no_step_has_started() -> None:
    assert timeline.render(view(StepView(name="a", status=StepStatus.PENDING)), [], at(1)) == ""
