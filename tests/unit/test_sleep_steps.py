"""Durable sleeps through the pure machine."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from relayflow import machine
from relayflow.contracts import EventType, StartWorkflow
from relayflow.errors import DefinitionError
from relayflow.machine import Ignored, TimerFired, TimerKind, Transition
from relayflow.model import StepStatus, WorkflowStatus
from relayflow.workflow import WorkflowDefinition, define_workflow, sleep, task

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Anything(BaseModel):
    at: str | None = None


def begin(definition: WorkflowDefinition, payload: dict[str, Any]) -> Transition:
    start = StartWorkflow(
        message_id="m", workflow_id="wf_1", workflow_name=definition.name, input=payload
    )
    outcome = machine.start(definition, start, NOW)
    assert isinstance(outcome, Transition)
    return outcome


def test_a_sleep_sets_a_durable_timer_and_completes_when_it_fires_once() -> None:
    flow = define_workflow(
        "napping", input_model=Anything, steps=[sleep("nap", duration=timedelta(seconds=2))]
    )
    started = begin(flow, {})
    [timer] = started.timers
    assert (timer.kind, timer.step_name, timer.fire_at) == (
        TimerKind.SLEEP,
        "nap",
        NOW + timedelta(seconds=2),
    )
    [sleeping] = [e for e in started.events if e.event is EventType.STEP_SLEEPING]
    assert sleeping.data["wakeAt"] == (NOW + timedelta(seconds=2)).isoformat()
    assert started.state.steps["nap"].status is StepStatus.WAITING
    fired = TimerFired("wf_1", TimerKind.SLEEP, 1, step_name="nap")
    woke = machine.on_timer(flow, started.state, fired, NOW + timedelta(seconds=2))
    assert isinstance(woke, Transition)
    assert woke.state.status is WorkflowStatus.COMPLETED
    assert woke.state.steps["nap"].output["wakeAt"] == (NOW + timedelta(seconds=2)).isoformat()
    assert isinstance(machine.on_timer(flow, woke.state, fired, NOW), Ignored)


def test_a_sleep_until_a_time_from_the_input_or_an_ancestor() -> None:
    flow = define_workflow(
        "until",
        input_model=Anything,
        steps=[sleep("wait", until="input.at"), task("after", after=["wait"])],
    )
    later = (NOW + timedelta(hours=1)).isoformat()
    [timer] = begin(flow, {"at": later}).timers
    assert timer.fire_at == NOW + timedelta(hours=1)
    # A time already past completes the sleep at once.
    past = begin(flow, {"at": (NOW - timedelta(hours=1)).isoformat()})
    assert past.state.steps["wait"].status is StepStatus.COMPLETED
    assert [c.step_name for c in past.commands] == ["after"]


@pytest.mark.parametrize(
    ("value", "message"),
    [("tomorrow", "not an ISO 8601 time"), ("2026-01-02T00:00:00", "without a zone"), (None, "")],
)
def test_a_wake_up_time_that_is_not_one_fails_the_step_for_good(
    value: str | None, message: str
) -> None:
    flow = define_workflow("until", input_model=Anything, steps=[sleep("wait", until="input.at")])
    ended = begin(flow, {"at": value})
    assert ended.state.status is WorkflowStatus.FAILED
    assert ended.state.error is not None
    assert ended.state.error["type"] == "SleepError"
    assert message in ended.state.error["message"]


def test_sleeps_of_no_or_absurd_length_fail_at_definition() -> None:
    with pytest.raises(DefinitionError, match="positive"):
        sleep("nap", duration=timedelta(0))
    with pytest.raises(DefinitionError, match="at most 366 days"):
        sleep("nap", duration=timedelta(days=3650))
    with pytest.raises(DefinitionError, match="either duration= or until="):
        sleep("nap")
    with pytest.raises(DefinitionError, match="a step it comes after"):
        define_workflow("w", input_model=Anything, steps=[sleep("nap", until="later.at")])
