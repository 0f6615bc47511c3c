"""A workflow's timeline: one row per step, a bar per attempt on one time axis (the workflow's
start to its end, or now), rendered on the server as CSS bars (positions and widths in style
attributes, which the CSP allows; no script, no external asset).

The attempts come from the workflow's step-level events (`step.started` opens one, and
`step.retrying`, `step.completed` or `step.failed` ends it; the wait between a failed attempt and
the next is drawn as a back-off; an undo is a bar of its own), read in one query; a step whose
events are gone (or never had them) falls back to its state's startedAt/finishedAt. A map step
is one row — its attempt, with its items' progress as a fill — never a row per item. Rows are
fixed-height in a scrolling box with a sticky axis, so that 50 steps and more stay readable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from relayflow.model import StepStatus
from services.gateway.html import duration, esc
from services.gateway.models import MapProgressView, MapStepView, StepView
from services.gateway.models import WorkflowView as View
from services.gateway.store import TimelineEvent

# The events a timeline reads (the query keeps to those, and to step-level ones).
EVENTS = [
    "step.started",
    "step.retrying",
    "step.completed",
    "step.failed",
    "step.skipped",
    "step.compensating",
    "step.compensated",
    "step.compensation_failed",
]
# At most this many events are read: a step retried thousands of times shows its first ones.
MAX_EVENTS = 5000
TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)
OUTCOMES = {
    "running": "running",
    "completed": "completed",
    "failed": "failed for good",
    "retried": "failed, retried",
    "backoff": "waiting to retry",
    "undo": "undoing",
    "undone": "undone",
    "skipped": "skipped",
}


@dataclass(frozen=True, slots=True)
class Bar:
    start: datetime
    # None: still going (drawn to the axis's end).
    end: datetime | None
    outcome: str
    attempt: int | None = None


@dataclass(slots=True)
class Lane:
    step: str
    kind: str
    status: str
    took: str
    bars: list[Bar] = field(default_factory=list)
    progress: MapProgressView | None = None


@dataclass(slots=True)
class _Replay:
    """What the events leave open, per step, while they are read in order: an attempt, an
    undo, a wait for the next attempt (from when)."""

    attempts: dict[str, Bar] = field(default_factory=dict)
    undos: dict[str, Bar] = field(default_factory=dict)
    waits: dict[str, datetime] = field(default_factory=dict)

    def apply(self, lane: Lane, event: TimelineEvent) -> None:
        name, at = lane.step, event.at
        match event.event:
            case "step.started":
                if name in self.waits:
                    lane.bars.append(Bar(self.waits.pop(name), at, "backoff"))
                self.attempts[name] = Bar(at, None, "running", event.attempt)
            case "step.retrying":
                self.end(lane, self.attempts, at, "retried")
                self.waits[name] = at
            case "step.completed":
                self.end(lane, self.attempts, at, "completed")
            case "step.failed":
                self.end(lane, self.attempts, at, "failed")
            case "step.skipped":
                lane.bars.append(Bar(at, at, "skipped"))
            case "step.compensating":
                self.undos[name] = Bar(at, None, "undo", event.attempt)
            case "step.compensated":
                self.end(lane, self.undos, at, "undone")
            case "step.compensation_failed":
                self.end(lane, self.undos, at, "failed")

    @staticmethod
    def end(lane: Lane, opened: dict[str, Bar], at: datetime, outcome: str) -> None:
        bar = opened.pop(lane.step, None)
        if bar is None:  # its start is not among the events read: a mark where it ended
            lane.bars.append(Bar(at, at, outcome))
        else:
            lane.bars.append(Bar(bar.start, at, outcome, bar.attempt))

    def close(self, lane: Lane, step: StepView) -> None:
        """What is still open for `step` once every event is read."""
        for opened in (self.attempts, self.undos):
            if step.name in opened:
                lane.bars.append(opened.pop(step.name))
        if step.name in self.waits:
            lane.bars.append(Bar(self.waits.pop(step.name), step.next_attempt_at, "backoff"))


_FROM_STATE = {
    StepStatus.COMPLETED: "completed",
    StepStatus.FAILED: "failed",
    StepStatus.SKIPPED: "skipped",
}


def _lane(step: StepView, now: datetime) -> Lane:
    took = duration(step.started_at, step.finished_at, now)
    lane = Lane(step.name, step.kind, step.status, took)
    if isinstance(step, MapStepView) and step.progress is not None:
        lane.progress = step.progress
        ended = step.progress.completed + step.progress.failed
        lane.took = f"{ended:,}/{step.progress.total:,} · {took}"
    return lane


def lanes(view: View, events: Sequence[TimelineEvent], now: datetime) -> list[Lane]:
    """One lane per step of `view`, in its order, with the bars its events describe."""
    rows = [_lane(step, now) for step in view.steps]
    by_step = {lane.step: lane for lane in rows}
    replay = _Replay()
    for event in events:
        lane = by_step.get(event.step_name or "")
        if lane is not None:
            replay.apply(lane, event)
    for step, lane in zip(view.steps, rows, strict=True):
        replay.close(lane, step)
        if not lane.bars and step.started_at is not None:
            # No events for it (pruned, or from before they were kept): its state's times.
            outcome = _FROM_STATE.get(step.status, "running")
            lane.bars.append(Bar(step.started_at, step.finished_at, outcome, step.attempts or None))
    return rows


def _axis_end(view: View, rows: Sequence[Lane], now: datetime) -> datetime:
    end = view.finished_at or now
    for lane in rows:
        for bar in lane.bars:
            if bar.end is not None and bar.end > end:
                end = bar.end
    return end


def _offset(seconds: float) -> str:
    start = datetime(2000, 1, 1, tzinfo=UTC)
    return duration(start, start + timedelta(seconds=seconds))


def render(view: View, events: Sequence[TimelineEvent], now: datetime) -> str:
    """The timeline's section; nothing while no step has started."""
    rows = lanes(view, events, now)
    if not any(lane.bars for lane in rows):
        return ""
    start = view.created_at
    end = _axis_end(view, rows, now)
    span = max((end - start).total_seconds(), 0.001)

    def percent(moment: datetime) -> float:
        return min(100.0, max(0.0, 100 * (moment - start).total_seconds() / span))

    ticks = "".join(
        f'<span style="left:{100 * tick:.0f}%">+{esc(_offset(span * tick))}</span>'
        for tick in TICKS
    )
    lines = [
        '<div class="tl-row tl-axis" role="row"><span role="columnheader">Step</span>'
        f'<span class="tl-ticks" role="columnheader">{ticks}</span>'
        '<span class="tl-took" role="columnheader">Took</span></div>'
    ]
    for lane in rows:
        bars = []
        for bar in lane.bars:
            left = percent(bar.start)
            width = max(0.0, percent(bar.end or end) - left)
            what = [lane.step]
            if bar.attempt is not None:
                what.append(f"attempt {bar.attempt}")
            what.append(OUTCOMES[bar.outcome])
            what.append(duration(bar.start, bar.end or end))
            fill = ""
            if lane.progress is not None and bar.outcome in {"running", "completed", "failed"}:
                total = max(lane.progress.total, 1)
                done = 100 * (lane.progress.completed + lane.progress.failed) / total
                fill = f'<span class="tl-fill" style="width:{done:.1f}%"></span>'
            attempt = "" if bar.attempt is None else f' data-attempt="{bar.attempt}"'
            bars.append(
                f'<span class="tl-bar o-{bar.outcome}" data-outcome="{bar.outcome}"{attempt} '
                f'style="left:{left:.2f}%;width:{width:.2f}%" title="{esc(" · ".join(what))}">'
                f"{fill}</span>"
            )
        lines.append(
            f'<div class="tl-row" role="row" data-timeline-step="{esc(lane.step)}" '
            f'data-bars="{len(lane.bars)}">'
            f'<span class="tl-name" role="rowheader" title="{esc(lane.step)} ({esc(lane.kind)})">'
            f"{esc(lane.step)}</span>"
            f'<span class="tl-track" role="cell">{"".join(bars)}</span>'
            f'<span class="tl-took" role="cell">{esc(lane.took)}</span></div>'
        )
    legend = "".join(
        f'<span><span class="tl-bar o-{key}"></span>{esc(text)}</span>'
        for key, text in OUTCOMES.items()
    )
    return (
        '<section class="timeline" aria-labelledby="timeline-title">'
        '<h2 class="section" id="timeline-title">Timeline</h2>'
        f'<div class="tl" role="table" aria-label="Steps and their attempts over time">'
        f"{''.join(lines)}</div>"
        f'<p class="tl-legend small muted">{legend}</p></section>'
    )
