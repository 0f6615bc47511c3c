"""The pure workflow state machine, without broker or database."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from apps.form_submission.workflows import FORM_SUBMISSION
from relayflow import machine
from relayflow.contracts import (
    CancelWorkflow,
    ErrorInfo,
    EventType,
    ExternalReply,
    RetryWorkflow,
    StartWorkflow,
    StepResult,
    StepResultStatus,
)
from relayflow.machine import (
    Ignored,
    Rejected,
    StepStatus,
    TimerFired,
    TimerKind,
    Transition,
    WorkflowState,
    WorkflowStatus,
)
from relayflow.workflow import (
    Condition,
    Given,
    RetryPolicy,
    StepSpec,
    TaskSpec,
    WaitSpec,
    WorkflowDefinition,
    define_workflow,
    task,
    wait,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Teleport(StepSpec):
    """A step kind no orchestrator knows."""

    kind: ClassVar[str] = "teleport"


FORM = {"name": "Ada", "email": "ada@example.com", "message": "hello"}


class Anything(BaseModel):
    pass


def start(definition: WorkflowDefinition, payload: dict[str, Any] | None = None) -> Transition:
    message = StartWorkflow(
        message_id="m1",
        workflow_id="wf_1",
        workflow_name=definition.name,
        input=payload if payload is not None else FORM,
    )
    outcome = machine.start(definition, message, NOW)
    assert isinstance(outcome, Transition), outcome
    return outcome


def result(
    state: WorkflowState, step: str, output: Any = None, *, error: ErrorInfo | None = None
) -> StepResult:
    return StepResult(
        message_id=f"r-{step}-{state.steps[step].attempts}",
        workflow_id=state.id,
        step_name=step,
        attempt=state.steps[step].attempts,
        status=StepResultStatus.FAILED if error else StepResultStatus.SUCCEEDED,
        output=output,
        error=error,
    )


def applied(outcome: machine.Outcome) -> Transition:
    assert isinstance(outcome, Transition), outcome
    return outcome


def reply(correlation_id: str, payload: dict[str, Any] | None = None) -> ExternalReply:
    return ExternalReply(
        message_id=f"reply:{correlation_id}",
        workflow_id="wf_1",
        correlation_id=correlation_id,
        payload=payload or {"ticketId": "T-1"},
    )


def test_start_dispatches_only_the_roots() -> None:
    """A new workflow sends the first step's command and numbers its events from 1."""
    t = start(FORM_SUBMISSION)
    assert [c.step_name for c in t.commands] == ["validate"]
    assert t.commands[0].attempt == 1
    assert t.commands[0].input == FORM
    assert [(e.seq, e.event) for e in t.events] == [
        (1, EventType.WORKFLOW_STARTED),
        (2, EventType.STEP_STARTED),
    ]
    assert t.state.steps["validate"].status is StepStatus.RUNNING
    assert t.state.steps["persist"].status is StepStatus.PENDING


def test_seed_workflow_runs_to_completion() -> None:
    """The seed's five steps, including the durable wait for the external reply, complete in order
    and the workflow's output is finalize's."""
    state = start(FORM_SUBMISSION).state
    state = applied(
        machine.on_step_result(FORM_SUBMISSION, state, result(state, "validate", {"ok": 1}), NOW)
    ).state
    t = applied(
        machine.on_step_result(
            FORM_SUBMISSION, state, result(state, "persist", {"recordId": "r"}), NOW
        )
    )
    assert [c.step_name for c in t.commands] == ["publishToMQ"]
    t = applied(
        machine.on_step_result(
            FORM_SUBMISSION, t.state, result(t.state, "publishToMQ", {"correlationId": "c1"}), NOW
        )
    )
    assert t.commands == []
    assert t.state.steps["awaitResponse"].status is StepStatus.WAITING
    assert t.state.steps["awaitResponse"].correlation_id == "c1"
    assert [timer.fire_at for timer in t.timers] == [NOW + timedelta(seconds=60)]
    t = applied(machine.on_reply(FORM_SUBMISSION, t.state, reply("c1"), NOW))
    assert [c.step_name for c in t.commands] == ["finalize"]
    # Every ancestor's output, not only the direct dependencies'.
    assert t.commands[0].dependencies == {
        "awaitResponse": {"ticketId": "T-1"},
        "persist": {"recordId": "r"},
        "publishToMQ": {"correlationId": "c1"},
        "validate": {"ok": 1},
    }
    t = applied(
        machine.on_step_result(
            FORM_SUBMISSION, t.state, result(t.state, "finalize", {"done": True}), NOW
        )
    )
    assert t.state.status is WorkflowStatus.COMPLETED
    assert t.state.output == {"done": True}
    assert t.events[-1].event is EventType.WORKFLOW_COMPLETED
    assert t.events[-1].terminal


def test_reply_before_wait_is_kept_until_the_wait_starts() -> None:
    """The external system may answer before publishToMQ's result reaches us; the reply must not
    be lost, and the wait completes the moment it starts."""
    state = start(FORM_SUBMISSION).state
    for step, output in [("validate", {}), ("persist", {"recordId": "r"})]:
        state = applied(
            machine.on_step_result(FORM_SUBMISSION, state, result(state, step, output), NOW)
        ).state
    state = applied(machine.on_reply(FORM_SUBMISSION, state, reply("c1"), NOW)).state
    assert state.signals == {"c1": {"ticketId": "T-1"}}
    assert isinstance(machine.on_reply(FORM_SUBMISSION, state, reply("c1"), NOW), Ignored)
    t = applied(
        machine.on_step_result(
            FORM_SUBMISSION, state, result(state, "publishToMQ", {"correlationId": "c1"}), NOW
        )
    )
    assert t.state.steps["awaitResponse"].status is StepStatus.COMPLETED
    assert t.state.signals == {}
    # No wait timeout was set: only finalize's own start-to-close timer.
    assert [(timer.kind, timer.step_name) for timer in t.timers] == [
        (TimerKind.STEP_TIMEOUT, "finalize")
    ]
    assert [c.step_name for c in t.commands] == ["finalize"]


def test_step_failure_fails_the_workflow_with_the_error() -> None:
    """A non-retryable failure ends the workflow `failed` with the step's error."""
    state = start(FORM_SUBMISSION).state
    error = ErrorInfo(type="ValueError", message="bad", retryable=False)
    t = applied(
        machine.on_step_result(FORM_SUBMISSION, state, result(state, "validate", error=error), NOW)
    )
    assert t.state.status is WorkflowStatus.FAILED
    assert t.state.error == {
        "type": "ValueError",
        "message": "bad",
        "retryable": False,
        "step": "validate",
    }
    assert [e.event for e in t.events] == [EventType.STEP_FAILED, EventType.WORKFLOW_FAILED]
    assert t.commands == []


def test_stale_and_late_results_are_ignored() -> None:
    """A duplicate or out-of-date result must not move a workflow twice."""
    state = start(FORM_SUBMISSION).state
    first = result(state, "validate", {})
    state = applied(machine.on_step_result(FORM_SUBMISSION, state, first, NOW)).state
    assert isinstance(machine.on_step_result(FORM_SUBMISSION, state, first, NOW), Ignored)
    wrong_attempt = result(state, "persist").model_copy(update={"attempt": 7})
    assert isinstance(machine.on_step_result(FORM_SUBMISSION, state, wrong_attempt, NOW), Ignored)


def test_unknown_step_and_wait_results_are_rejected() -> None:
    """Input that can never apply is rejected (dead-lettered), not silently acknowledged."""
    state = start(FORM_SUBMISSION).state
    bogus = result(state, "validate").model_copy(update={"step_name": "nope"})
    assert isinstance(machine.on_step_result(FORM_SUBMISSION, state, bogus, NOW), Rejected)
    on_wait = result(state, "validate").model_copy(update={"step_name": "awaitResponse"})
    assert isinstance(machine.on_step_result(FORM_SUBMISSION, state, on_wait, NOW), Rejected)


def test_wait_timeout_fails_and_late_reply_does_not_resurrect() -> None:
    """A wait that times out fails the workflow; a reply arriving afterwards changes nothing now,
    but is kept, so that retrying the workflow completes the wait with it."""
    state = start(FORM_SUBMISSION).state
    for step, output in [
        ("validate", {}),
        ("persist", {}),
        ("publishToMQ", {"correlationId": "c1"}),
    ]:
        state = applied(
            machine.on_step_result(FORM_SUBMISSION, state, result(state, step, output), NOW)
        ).state
    stale = TimerFired("wf_1", TimerKind.WAIT_TIMEOUT, 9, step_name="awaitResponse")
    assert isinstance(machine.on_timer(FORM_SUBMISSION, state, stale, NOW), Ignored)
    timeout = TimerFired("wf_1", TimerKind.WAIT_TIMEOUT, 1, "awaitResponse")
    t = applied(machine.on_timer(FORM_SUBMISSION, state, timeout, NOW))
    assert t.state.status is WorkflowStatus.FAILED
    assert t.state.error is not None
    assert t.state.error["type"] == "WaitTimeout"
    late = applied(machine.on_reply(FORM_SUBMISSION, t.state, reply("c1"), NOW))
    assert (late.events, late.commands, late.state.status) == ([], [], WorkflowStatus.FAILED)
    assert isinstance(machine.on_timer(FORM_SUBMISSION, late.state, timeout, NOW), Ignored)
    again = applied(machine.on_retry(FORM_SUBMISSION, late.state, retry_message(), NOW))
    assert again.state.steps["awaitResponse"].status is StepStatus.COMPLETED
    assert again.state.steps["awaitResponse"].attempts == 2
    assert [c.step_name for c in again.commands] == ["finalize"]


def test_missing_correlation_id_fails_the_wait() -> None:
    """A wait whose correlation id is missing from its source step's output can never complete."""
    state = start(FORM_SUBMISSION).state
    for step in ["validate", "persist"]:
        state = applied(
            machine.on_step_result(FORM_SUBMISSION, state, result(state, step, {}), NOW)
        ).state
    t = applied(
        machine.on_step_result(FORM_SUBMISSION, state, result(state, "publishToMQ", {}), NOW)
    )
    assert t.state.status is WorkflowStatus.FAILED
    assert t.state.steps["awaitResponse"].error == {
        "type": "MissingCorrelationId",
        "message": "publishToMQ.correlationId is missing or not a string",
        "retryable": False,
    }


def test_duplicate_start_same_input_is_ignored_other_input_rejected() -> None:
    """Starting an existing workflow again is a no-op, but reusing its id for another request is
    an error that must surface."""
    state = start(FORM_SUBMISSION).state
    same = StartWorkflow(
        message_id="m2", workflow_id="wf_1", workflow_name="formSubmission", input=dict(FORM)
    )
    other = same.model_copy(update={"input": {**FORM, "message": "different"}})
    assert isinstance(machine.duplicate_start(state, same), Ignored)
    assert isinstance(machine.duplicate_start(state, other), Rejected)


DIAMOND = define_workflow(
    "diamond",
    input_model=Anything,
    steps=[task("a"), task("b", after=["a"]), task("c", after=["a"]), task("d", after=["b", "c"])],
)


def test_parallel_branches_dispatch_together_and_join() -> None:
    """Steps whose dependencies are met together are dispatched together; a join waits for all."""
    state = start(DIAMOND, {}).state
    t = applied(machine.on_step_result(DIAMOND, state, result(state, "a", 1), NOW))
    assert sorted(c.step_name for c in t.commands) == ["b", "c"]
    t = applied(machine.on_step_result(DIAMOND, t.state, result(t.state, "c", 3), NOW))
    assert t.commands == []
    t = applied(machine.on_step_result(DIAMOND, t.state, result(t.state, "b", 2), NOW))
    assert [c.step_name for c in t.commands] == ["d"]
    assert t.commands[0].dependencies == {"a": 1, "b": 2, "c": 3}
    t = applied(machine.on_step_result(DIAMOND, t.state, result(t.state, "d", 4), NOW))
    assert t.state.status is WorkflowStatus.COMPLETED
    assert t.state.output == {"d": 4}


@st.composite
def dags(draw: st.DrawFn) -> WorkflowDefinition:
    size = draw(st.integers(min_value=1, max_value=8))
    steps = []
    for index in range(size):
        deps = (
            draw(st.sets(st.integers(min_value=0, max_value=index - 1), max_size=3))
            if index
            else set()
        )
        # Some steps carry a condition; its answer is drawn once, so it is deterministic.
        answer = draw(st.sampled_from([None, True, False]))
        when = None if answer is None else _constant(answer)
        steps.append(task(f"s{index}", after=[f"s{dep}" for dep in sorted(deps)], when=when))
    return define_workflow("random", input_model=Anything, steps=steps)


def _constant(answer: bool) -> Condition:
    return lambda _given: answer


def expected_skips(definition: WorkflowDefinition) -> set[str]:
    """The branch rule, stated independently of the machine: a step is skipped when its
    condition is false or every step it comes after was skipped."""
    skipped: set[str] = set()
    for name in definition.order:
        spec = definition.steps[name]
        given = Given(input={}, outputs={})
        if (spec.after and set(spec.after) <= skipped) or (
            spec.when is not None and not spec.when(given)
        ):
            skipped.add(name)
    return skipped


@settings(max_examples=150, deadline=None)
@given(definition=dags(), data=st.data())
def test_any_dag_completes_once_in_dependency_order(
    definition: WorkflowDefinition, data: st.DataObject
) -> None:
    """Whatever the DAG, its conditions and the order results arrive in (duplicates included),
    every step that is not skipped is dispatched exactly once, never before its dependencies
    have ended well, exactly the steps the branch rule names are skipped, and the event numbers
    run 1, 2, 3, … without gaps."""
    t = start(definition, {})
    if not t.commands and t.state.status is WorkflowStatus.COMPLETED:
        # Every step was skipped at the start.
        assert expected_skips(definition) == set(definition.order)
        return
    state = t.state
    events = list(t.events)
    in_flight = [c.step_name for c in t.commands]
    dispatched = list(in_flight)
    delivered: list[StepResult] = []
    while in_flight:
        step = in_flight.pop(data.draw(st.integers(min_value=0, max_value=len(in_flight) - 1)))
        message = result(state, step, {"from": step})
        delivered.append(message)
        outcome = applied(machine.on_step_result(definition, state, message, NOW))
        for command in outcome.commands:
            assert all(
                outcome.state.steps[dep].status in (StepStatus.COMPLETED, StepStatus.SKIPPED)
                for dep in definition.steps[command.step_name].after
            )
        state = outcome.state
        events.extend(outcome.events)
        in_flight.extend(c.step_name for c in outcome.commands)
        dispatched.extend(c.step_name for c in outcome.commands)
        replay: bool = data.draw(st.booleans())
        if replay:
            again = data.draw(st.sampled_from(delivered))
            assert isinstance(machine.on_step_result(definition, state, again, NOW), Ignored)
    skipped = expected_skips(definition)
    assert sorted(dispatched) == sorted(set(definition.order) - skipped)
    assert {n for n, s in state.steps.items() if s.status is StepStatus.SKIPPED} == skipped
    assert state.status is WorkflowStatus.COMPLETED
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert state.last_seq == len(events)


def test_definition_rejects_cycles_and_unknown_dependencies() -> None:
    """A broken DAG fails when it is defined, not in the middle of a run."""
    from relayflow.errors import DefinitionError

    with pytest.raises(DefinitionError, match="cycle"):
        define_workflow(
            "x", input_model=Anything, steps=[task("a", after=["b"]), task("b", after=["a"])]
        )
    with pytest.raises(DefinitionError, match="unknown step"):
        define_workflow("x", input_model=Anything, steps=[task("a", after=["zz"])])
    with pytest.raises(DefinitionError, match="of a step it comes after"):
        define_workflow(
            "x",
            input_model=Anything,
            steps=[task("a"), wait("w", correlation_from="a.id", timeout=timedelta(seconds=1))],
        )


def retry_message() -> RetryWorkflow:
    return RetryWorkflow(message_id="retry-1", workflow_id="wf_1", reason="operator")


def cancel_message() -> CancelWorkflow:
    return CancelWorkflow(message_id="cancel-1", workflow_id="wf_1", reason="not needed")


FLAKY = define_workflow(
    "flaky",
    input_model=Anything,
    steps=[
        task(
            "call",
            retry=RetryPolicy(
                max_attempts=3,
                initial_interval=timedelta(seconds=1),
                backoff_coefficient=2,
                max_interval=timedelta(seconds=10),
                jitter=0.1,
                non_retryable_errors=frozenset({"BadRequest"}),
            ),
            timeout=timedelta(seconds=5),
        ),
        task("after", after=["call"]),
    ],
    timeout=timedelta(minutes=10),
)
BOOM = ErrorInfo(type="ConnectionError", message="reset", retryable=True)


def test_retryable_failure_schedules_the_next_attempt_durably() -> None:
    """A retryable failure becomes a step.retrying event and a retry timer with backoff; the
    timer dispatches the next attempt, and the late result of the old attempt is ignored."""
    first = start(FLAKY, {})
    assert {(t.kind, t.attempt) for t in first.timers} == {
        (TimerKind.WORKFLOW_TIMEOUT, 1),
        (TimerKind.STEP_TIMEOUT, 1),
    }
    state = first.state
    old = result(state, "call", error=BOOM)
    t = applied(machine.on_step_result(FLAKY, state, old, NOW))
    step = t.state.steps["call"]
    assert step.status is StepStatus.RETRYING
    assert [e.event for e in t.events] == [EventType.STEP_RETRYING]
    assert t.events[0].data["nextAttempt"] == 2
    (timer,) = t.timers
    assert timer.kind is TimerKind.RETRY
    assert timedelta(seconds=0.9) <= timer.fire_at - NOW <= timedelta(seconds=1.1)
    assert step.next_attempt_at == timer.fire_at
    fired = TimerFired("wf_1", TimerKind.RETRY, 1, "call")
    t = applied(machine.on_timer(FLAKY, t.state, fired, NOW))
    assert [(c.step_name, c.attempt) for c in t.commands] == [("call", 2)]
    assert isinstance(machine.on_timer(FLAKY, t.state, fired, NOW), Ignored)
    assert isinstance(machine.on_step_result(FLAKY, t.state, old, NOW), Ignored)


def test_backoff_grows_and_attempts_run_out() -> None:
    """The wait doubles per attempt; after max_attempts the step and the workflow fail with the
    last error."""
    state = start(FLAKY, {}).state
    delays = []
    for attempt in (1, 2):
        t = applied(machine.on_step_result(FLAKY, state, result(state, "call", error=BOOM), NOW))
        delays.append(t.timers[0].fire_at - NOW)
        fired = TimerFired("wf_1", TimerKind.RETRY, attempt, "call")
        state = applied(machine.on_timer(FLAKY, t.state, fired, NOW)).state
    assert delays[1] > delays[0] * 1.5
    t = applied(machine.on_step_result(FLAKY, state, result(state, "call", error=BOOM), NOW))
    assert t.state.status is WorkflowStatus.FAILED
    assert t.state.steps["call"].attempts == 3
    assert t.state.error == {**BOOM.model_dump(), "step": "call"}


@pytest.mark.parametrize(
    "error",
    [
        ErrorInfo(type="ValueError", message="no", retryable=False),
        ErrorInfo(type="BadRequest", message="listed as non-retryable", retryable=True),
    ],
)
def test_non_retryable_errors_fail_at_once(error: ErrorInfo) -> None:
    """An error the step marks non-retryable, or whose type the policy lists, is not retried."""
    state = start(FLAKY, {}).state
    t = applied(machine.on_step_result(FLAKY, state, result(state, "call", error=error), NOW))
    assert t.state.status is WorkflowStatus.FAILED
    assert t.timers == []


def test_step_that_never_reports_back_times_out_and_retries() -> None:
    """Start-to-close timeout: a step service that took the command and vanished does not hang
    the workflow; the attempt fails as StepTimeout and the retry policy applies."""
    state = start(FLAKY, {}).state
    t = applied(
        machine.on_timer(FLAKY, state, TimerFired("wf_1", TimerKind.STEP_TIMEOUT, 1, "call"), NOW)
    )
    assert t.state.steps["call"].status is StepStatus.RETRYING
    assert t.events[0].data["error"]["type"] == "StepTimeout"


def test_workflow_timeout_fails_the_run_and_stops_its_steps() -> None:
    """A workflow past its own limit fails as WorkflowTimeout; nothing it started is resumed."""
    state = start(FLAKY, {}).state
    timer = TimerFired("wf_1", TimerKind.WORKFLOW_TIMEOUT, 1)
    t = applied(machine.on_timer(FLAKY, state, timer, NOW))
    assert t.state.status is WorkflowStatus.FAILED
    assert t.state.error is not None
    assert t.state.error["type"] == "WorkflowTimeout"
    assert t.state.steps["call"].status is StepStatus.CANCELLED
    assert isinstance(
        machine.on_step_result(FLAKY, t.state, result(state, "call", 1), NOW), Ignored
    )


def test_cancel_stops_everything_and_is_idempotent() -> None:
    """Cancel ends a running workflow; results still in flight and a second cancel are ignored."""
    state = start(FORM_SUBMISSION).state
    in_flight = result(state, "validate", {})
    t = applied(machine.on_cancel(FORM_SUBMISSION, state, cancel_message(), NOW))
    assert t.state.status is WorkflowStatus.CANCELLED
    assert [e.event for e in t.events] == [EventType.WORKFLOW_CANCELLED]
    assert t.events[0].terminal
    assert {s.status for s in t.state.steps.values()} == {StepStatus.CANCELLED}
    assert isinstance(machine.on_step_result(FORM_SUBMISSION, t.state, in_flight, NOW), Ignored)
    assert isinstance(machine.on_cancel(FORM_SUBMISSION, t.state, cancel_message(), NOW), Ignored)


def test_retry_runs_again_from_the_failed_step_only() -> None:
    """Retrying a failed workflow re-dispatches the failed step with the next attempt number and
    keeps completed steps' outputs; retrying a running workflow does nothing."""
    state = start(FORM_SUBMISSION).state
    state = applied(
        machine.on_step_result(FORM_SUBMISSION, state, result(state, "validate", {"v": 1}), NOW)
    ).state
    bad = ErrorInfo(type="IntegrityError", message="dup", retryable=False)
    state = applied(
        machine.on_step_result(FORM_SUBMISSION, state, result(state, "persist", error=bad), NOW)
    ).state
    assert state.status is WorkflowStatus.FAILED
    t = applied(machine.on_retry(FORM_SUBMISSION, state, retry_message(), NOW))
    assert t.state.status is WorkflowStatus.RUNNING
    assert t.state.run == 2
    assert [e.event for e in t.events] == [EventType.WORKFLOW_RETRIED, EventType.STEP_STARTED]
    assert [(c.step_name, c.attempt) for c in t.commands] == [("persist", 2)]
    assert t.commands[0].dependencies == {"validate": {"v": 1}}
    assert t.state.steps["validate"].attempts == 1
    assert isinstance(machine.on_retry(FORM_SUBMISSION, t.state, retry_message(), NOW), Ignored)
    stale_timer = TimerFired("wf_1", TimerKind.WORKFLOW_TIMEOUT, 1)
    assert isinstance(machine.on_timer(FORM_SUBMISSION, t.state, stale_timer, NOW), Ignored)


def test_cancelled_workflow_can_be_retried() -> None:
    """A cancelled run can be resumed: the cancelled steps are dispatched again."""
    state = start(FORM_SUBMISSION).state
    cancelled = applied(machine.on_cancel(FORM_SUBMISSION, state, cancel_message(), NOW)).state
    t = applied(machine.on_retry(FORM_SUBMISSION, cancelled, retry_message(), NOW))
    assert [(c.step_name, c.attempt) for c in t.commands] == [("validate", 2)]


def test_failure_in_one_branch_stops_the_other_and_retry_restarts_both() -> None:
    """When one parallel branch fails, the other branch's running step is stopped, so that a
    retry of the workflow dispatches it again rather than waiting forever for a result that the
    finished workflow ignored."""
    state = start(DIAMOND, {}).state
    state = applied(machine.on_step_result(DIAMOND, state, result(state, "a", 1), NOW)).state
    bad = ErrorInfo(type="X", message="x", retryable=False)
    t = applied(machine.on_step_result(DIAMOND, state, result(state, "b", error=bad), NOW))
    assert t.state.status is WorkflowStatus.FAILED
    assert t.state.steps["c"].status is StepStatus.CANCELLED
    again = applied(machine.on_retry(DIAMOND, t.state, retry_message(), NOW))
    assert sorted((c.step_name, c.attempt) for c in again.commands) == [("b", 2), ("c", 2)]


def test_every_step_kind_has_a_handler_and_an_unknown_one_is_refused_at_start_up() -> None:
    """The kinds table is the machine's only dispatch: each kind the SDK defines has a handler,
    and a definition holding a kind the orchestrator does not know fails when it loads."""
    from relayflow.errors import DefinitionError

    assert {TaskSpec.kind, WaitSpec.kind} <= set(machine.KINDS)
    odd = define_workflow("odd", input_model=Anything, steps=[Teleport(name="beam")])
    with pytest.raises(DefinitionError, match="'beam' is of kind 'teleport'"):
        machine.check_supported(odd)
    machine.check_supported(FORM_SUBMISSION)


BRANCHES = define_workflow(
    "branches",
    input_model=Anything,
    steps=[
        task("a"),
        task("big", after=["a"], when=lambda given: given.output("a")["n"] > 10),
        task("afterBig", after=["big"]),
        task("notify", when=lambda given: bool(given.input.get("notify"))),
        task("join", after=["afterBig", "a"]),
    ],
    output_from="afterBig",
)


def test_a_false_condition_skips_the_step_and_what_only_follows_it() -> None:
    """A false condition skips its step (`step.skipped`); a step after only skipped steps is
    skipped too; a join after a skipped and a completed step runs; the workflow completes, its
    output taken from a skipped step being null."""
    t = start(BRANCHES, {"notify": False})
    assert [c.step_name for c in t.commands] == ["a"]
    assert t.state.steps["notify"].status is StepStatus.SKIPPED
    assert [(e.event, e.step_name) for e in t.events if e.event is EventType.STEP_SKIPPED] == [
        (EventType.STEP_SKIPPED, "notify")
    ]
    t = applied(machine.on_step_result(BRANCHES, t.state, result(t.state, "a", {"n": 3}), NOW))
    assert [c.step_name for c in t.commands] == ["join"]
    assert t.state.steps["big"].status is StepStatus.SKIPPED
    assert t.state.steps["afterBig"].status is StepStatus.SKIPPED
    assert t.commands[0].dependencies == {"a": {"n": 3}, "afterBig": None, "big": None}
    t = applied(machine.on_step_result(BRANCHES, t.state, result(t.state, "join", 1), NOW))
    assert t.state.status is WorkflowStatus.COMPLETED
    assert t.state.output is None


def test_a_true_condition_runs_the_step() -> None:
    """The same workflow with other data takes the other branch."""
    t = start(BRANCHES, {"notify": True})
    assert sorted(c.step_name for c in t.commands) == ["a", "notify"]
    t = applied(machine.on_step_result(BRANCHES, t.state, result(t.state, "a", {"n": 30}), NOW))
    assert [c.step_name for c in t.commands] == ["big"]


@pytest.mark.parametrize(
    ("condition", "message"),
    [
        (lambda given: given.output("nope"), "KeyError"),
        (lambda given: 1 / 0, "ZeroDivisionError"),
        (lambda given: "yes", "not a bool"),
    ],
)
def test_a_condition_that_raises_fails_its_step_not_the_orchestrator(
    condition: Condition, message: str
) -> None:
    """A condition that raises (or answers a non-bool) fails its step with the error, without
    retrying — the same outputs would give the same answer — and so fails the workflow."""
    definition = define_workflow(
        "broken", input_model=Anything, steps=[task("a"), task("b", after=["a"], when=condition)]
    )
    t = start(definition, {})
    t = applied(machine.on_step_result(definition, t.state, result(t.state, "a", {}), NOW))
    step = t.state.steps["b"]
    assert step.status is StepStatus.FAILED
    assert step.error is not None
    assert step.error["type"] == "ConditionError"
    assert message in step.error["message"]
    assert step.error["retryable"] is False
    assert t.state.status is WorkflowStatus.FAILED
    assert t.commands == []
