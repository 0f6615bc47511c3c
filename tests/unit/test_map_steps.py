"""Map steps through the pure machine, their items held by an in-memory book (item_book.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from relayflow import machine
from relayflow.contracts import (
    CancelWorkflow,
    ErrorInfo,
    EventType,
    RetryWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
)
from relayflow.errors import DefinitionError
from relayflow.machine import (
    DispatchStep,
    Ignored,
    Rejected,
    StartChild,
    TimerFired,
    TimerKind,
    Transition,
    WorkflowState,
    WorkflowStatus,
)
from relayflow.model import StepStatus, ids
from relayflow.workflow import (
    Condition,
    Given,
    MapSpec,
    RetryPolicy,
    StepSpec,
    WorkflowDefinition,
    child,
    define_workflow,
    map_step,
    task,
)
from tests.unit.item_book import ItemBook, success

NOW = datetime(2026, 1, 1, tzinfo=UTC)
FAST_RETRY = RetryPolicy(max_attempts=3, initial_interval=timedelta(seconds=1))


class Numbers(BaseModel):
    items: list[Any]


def definition(*steps: StepSpec, name: str = "mapped") -> WorkflowDefinition:
    return define_workflow(name, input_model=Numbers, steps=list(steps), retry=FAST_RETRY)


def begin(book: ItemBook, items: list[Any]) -> WorkflowState:
    message = StartWorkflow(
        message_id="m1",
        workflow_id="wf_1",
        workflow_name=book.definition.name,
        input={"items": items},
    )
    outcome = machine.start(book.definition, message, NOW)
    state = book.apply(outcome)
    assert state is not None, outcome
    return state


def failure(command: StepCommand, *, retryable: bool = True) -> StepResult:
    return StepResult(
        message_id=f"res:{command.step_name}:{command.step_key}:{command.attempt}",
        workflow_id=command.workflow_id,
        step_name=command.step_name,
        step_key=command.step_key,
        attempt=command.attempt,
        status=StepResultStatus.FAILED,
        error=ErrorInfo(type="Boom", message="it broke", retryable=retryable),
    )


def events(book: ItemBook, kind: EventType) -> list[Any]:
    return [e for t in book.transitions for e in t.events if e.event is kind]


def run_all(book: ItemBook, state: WorkflowState, order: list[int] | None = None) -> WorkflowState:
    """Answer every command with success until none is left (in `order` of the in-flight list
    when given, else first in first out)."""
    done = 0
    in_flight = list(book.commands())
    picks = iter(order or [])
    while in_flight:
        command = in_flight.pop(next(picks, 0) % len(in_flight))
        seen = len(book.transitions)
        new_state = book.apply(book.result(command, state))
        assert new_state is not None
        state = new_state
        in_flight.extend(book.commands(seen))
        done += 1
    return state


def test_a_map_runs_each_item_once_within_its_concurrency_and_outputs_in_item_order() -> None:
    book = ItemBook(definition(map_step("double", over="input.items", max_concurrency=4)), NOW)
    state = begin(book, list(range(25)))
    first = book.commands()
    assert [c.step_key for c in first] == ["0", "1", "2", "3"]
    assert [c.item for c in first] == [0, 1, 2, 3]
    assert all(c.input == {} and c.dependencies == {} for c in first)
    assert state.steps["double"].progress is not None
    assert state.steps["double"].progress.running == 4
    in_flight = list(first)
    keys: list[str] = []
    while in_flight:
        command = in_flight.pop(len(in_flight) // 2)
        keys.append(command.step_key)
        seen = len(book.transitions)
        state = book.apply(book.result(command, state)) or state
        in_flight.extend(book.commands(seen))
        assert len(in_flight) <= 4
    assert sorted(keys, key=int) == [str(i) for i in range(25)]
    step = state.steps["double"]
    assert step.status is StepStatus.COMPLETED
    assert step.output == [i * 2 for i in range(25)]
    assert state.status is WorkflowStatus.COMPLETED
    assert state.output == {"double": [i * 2 for i in range(25)]}
    progress = events(book, EventType.STEP_PROGRESS)
    assert progress[-1].data == {"total": 25, "completed": 25, "failed": 0, "running": 0}
    [completed] = events(book, EventType.STEP_COMPLETED)
    assert "output" not in completed.data
    seqs = [e.seq for t in book.transitions for e in t.events]
    assert seqs == list(range(1, len(seqs) + 1))


def test_progress_is_reported_about_once_per_hundredth() -> None:
    book = ItemBook(definition(map_step("double", over="input.items", max_concurrency=50)), NOW)
    state = run_all(book, begin(book, list(range(1000))))
    assert state.status is WorkflowStatus.COMPLETED
    assert len(events(book, EventType.STEP_PROGRESS)) == 100


def test_an_empty_list_completes_at_once() -> None:
    book = ItemBook(definition(map_step("double", over="input.items")), NOW)
    state = begin(book, [])
    assert state.status is WorkflowStatus.COMPLETED
    assert state.steps["double"].output == []


@pytest.mark.parametrize(
    ("items", "spec", "message"),
    [
        ("not a list", map_step("m", over="input.items"), "is a str, not a list"),
        ([1, 2, 3], map_step("m", over="input.items", max_items=2), "more than the map's 2"),
        ([1, 1], map_step("m", over="input.items", key=str), "keys must be unique"),
        ([1], map_step("m", over="input.items", key=lambda item: str(1 / 0)), "ZeroDivisionError"),
    ],
)
def test_a_list_the_map_cannot_take_fails_the_step_for_good(
    items: Any, spec: StepSpec, message: str
) -> None:
    class Loose(BaseModel):
        items: Any

    loose = define_workflow("mapped", input_model=Loose, steps=[spec])
    book = ItemBook(loose, NOW)
    state = begin(book, items)
    assert state.status is WorkflowStatus.FAILED
    assert state.error is not None
    assert state.error["type"] == "MapInputError"
    assert message in state.error["message"]
    assert not state.error["retryable"]


def test_a_map_over_a_step_output_with_derived_keys() -> None:
    book = ItemBook(
        definition(
            task("list"),
            map_step("each", over="list.rows", after=["list"], key=lambda row: row["sku"]),
            task("sum", after=["each"]),
        ),
        NOW,
    )
    state = begin(book, [])
    [listing] = book.commands()
    seen = len(book.transitions)
    rows = [{"sku": "a"}, {"sku": "b"}]
    state = book.apply(book.deliver(state, success(listing, {"rows": rows}))) or state
    assert [(c.step_key, c.item_index) for c in book.commands(seen)] == [("a", 0), ("b", 1)]
    state = run_all_from(book, state, seen)
    [summing] = [c for c in book.commands() if c.step_name == "sum"]
    assert summing.dependencies["each"] == rows


def run_all_from(book: ItemBook, state: WorkflowState, since: int) -> WorkflowState:
    in_flight = [c for c in book.commands(since) if c.step_name == "each"]
    while in_flight:
        command = in_flight.pop(0)
        seen = len(book.transitions)
        state = book.apply(book.result(command, state)) or state
        in_flight.extend(c for c in book.commands(seen) if c.step_name == "each")
    return state


def test_a_failed_item_retries_by_its_own_timer_then_succeeds() -> None:
    book = ItemBook(definition(map_step("double", over="input.items", max_concurrency=2)), NOW)
    state = begin(book, [1, 2, 3])
    first, second = book.commands()
    outcome = book.deliver(state, failure(first))
    state = book.apply(outcome) or state
    assert isinstance(outcome, Transition)
    [timer] = outcome.timers
    assert (timer.kind, timer.step_key, timer.attempt) == (TimerKind.RETRY, "0", 1)
    [retrying] = events(book, EventType.STEP_ITEM_RETRYING)
    assert retrying.step_key == "0"
    # The retrying item keeps its place: only the other item is in flight beside it.
    assert state.steps["double"].progress is not None
    assert state.steps["double"].progress.running == 2
    seen = len(book.transitions)
    fired = TimerFired(state.id, TimerKind.RETRY, 1, step_name="double", step_key="0")
    state = book.apply(book.fire(state, fired)) or state
    [again] = book.commands(seen)
    assert (again.step_key, again.attempt) == ("0", 2)
    assert isinstance(book.fire(state, fired), Ignored)
    state = run_all_with(book, state, [second, again])
    assert state.status is WorkflowStatus.COMPLETED
    assert state.steps["double"].output == [2, 4, 6]


def run_all_with(
    book: ItemBook, state: WorkflowState, in_flight: list[StepCommand]
) -> WorkflowState:
    while in_flight:
        command = in_flight.pop(0)
        seen = len(book.transitions)
        state = book.apply(book.result(command, state)) or state
        in_flight.extend(book.commands(seen))
    return state


def test_an_item_failing_for_good_fails_the_map_and_a_retry_reruns_what_did_not_complete() -> None:
    book = ItemBook(definition(map_step("double", over="input.items", max_concurrency=2)), NOW)
    state = begin(book, [1, 2, 3, 4])
    first, second = book.commands()
    state = book.apply(book.result(first, state)) or state
    state = book.apply(book.deliver(state, failure(second, retryable=False))) or state
    assert state.status is WorkflowStatus.FAILED
    assert state.error is not None
    assert state.error["step"] == "double"
    assert "item '1' failed" in state.error["message"]
    [failed] = events(book, EventType.STEP_ITEM_FAILED)
    assert failed.step_key == "1"
    statuses = {key: item.status for (_, key), item in book.items.items()}
    assert statuses == {
        "0": StepStatus.COMPLETED,
        "1": StepStatus.FAILED,
        "2": StepStatus.CANCELLED,
        "3": StepStatus.CANCELLED,
    }
    seen = len(book.transitions)
    retry = RetryWorkflow(message_id="retry", workflow_id=state.id)
    state = book.apply(machine.on_retry(book.definition, state, retry, NOW)) or state
    rerun = book.commands(seen)
    # Item 2 had been claimed (attempt 1) when the map stopped: it runs its next attempt.
    assert [(c.step_key, c.attempt) for c in rerun] == [("1", 2), ("2", 2)]
    state = run_all_with(book, state, rerun)
    assert state.status is WorkflowStatus.COMPLETED
    assert state.steps["double"].output == [2, 4, 6, 8]


def test_tolerated_failures_leave_a_none_in_their_place() -> None:
    book = ItemBook(
        definition(map_step("double", over="input.items", max_concurrency=3, tolerate_failures=1)),
        NOW,
    )
    state = begin(book, [1, 2, 3])
    first, second, third = book.commands()
    state = book.apply(book.deliver(state, failure(second, retryable=False))) or state
    assert state.status is WorkflowStatus.RUNNING
    state = run_all_with(book, state, [first, third])
    assert state.status is WorkflowStatus.COMPLETED
    assert state.steps["double"].output == [2, None, 6]
    assert state.steps["double"].progress is not None
    assert state.steps["double"].progress.failed == 1


def test_an_item_that_never_answers_times_out_and_its_late_result_is_ignored() -> None:
    book = ItemBook(
        definition(map_step("double", over="input.items", timeout=timedelta(seconds=5))), NOW
    )
    state = begin(book, [7])
    [command] = book.commands()
    [timeout] = [timer for t in book.transitions for timer in t.timers]
    assert (timeout.kind, timeout.step_key) == (TimerKind.STEP_TIMEOUT, "0")
    fired = TimerFired(state.id, TimerKind.STEP_TIMEOUT, 1, step_name="double", step_key="0")
    state = book.apply(book.fire(state, fired)) or state
    item = book.item("double", "0")
    assert item is not None
    assert item.status is StepStatus.RETRYING
    assert isinstance(book.result(command, state), Ignored)


def test_cancel_stops_every_item_and_later_results_change_nothing() -> None:
    book = ItemBook(definition(map_step("double", over="input.items", max_concurrency=2)), NOW)
    state = begin(book, [1, 2, 3])
    first, _ = book.commands()
    cancel = CancelWorkflow(message_id="c", workflow_id=state.id, reason="stop")
    state = book.apply(machine.on_cancel(book.definition, state, cancel, NOW)) or state
    assert state.status is WorkflowStatus.CANCELLED
    assert {item.status for item in book.items.values()} == {StepStatus.CANCELLED}
    assert isinstance(book.result(first, state), Ignored)


def test_duplicate_and_unknown_item_results() -> None:
    book = ItemBook(definition(map_step("double", over="input.items", max_concurrency=2)), NOW)
    state = begin(book, [1, 2, 3])
    first, _ = book.commands()
    state = book.apply(book.result(first, state)) or state
    assert isinstance(book.result(first, state), Ignored)
    stranger = success(first, 0).model_copy(update={"step_key": "99"})
    assert isinstance(book.deliver(state, stranger), Rejected)


def test_definitions_refuse_a_map_over_what_cannot_be_a_list() -> None:
    class Form(BaseModel):
        name: str

    with pytest.raises(DefinitionError, match="not a list"):
        define_workflow("w", input_model=Form, steps=[map_step("m", over="input.name")])
    with pytest.raises(DefinitionError, match="has no field 'rows'"):
        define_workflow("w", input_model=Form, steps=[map_step("m", over="input.rows")])
    with pytest.raises(DefinitionError, match="a step it comes after"):
        define_workflow("w", input_model=Form, steps=[task("a"), map_step("m", over="a.rows")])
    with pytest.raises(DefinitionError, match="max_concurrency"):
        map_step("m", over="input.items", max_concurrency=0)


@st.composite
def mapped_dags(draw: st.DrawFn) -> tuple[WorkflowDefinition, int]:
    size = draw(st.integers(min_value=1, max_value=6))
    steps: list[StepSpec] = []
    for index in range(size):
        deps = (
            draw(st.sets(st.integers(min_value=0, max_value=index - 1), max_size=2))
            if index
            else set()
        )
        after = [f"s{dep}" for dep in sorted(deps)]
        # Some steps carry a condition, drawn once so that it is deterministic.
        answer = draw(st.sampled_from([None, None, True, False]))
        when = None if answer is None else _constant(answer)
        kind = draw(st.sampled_from(["task", "map", "child"]))
        name = f"s{index}"
        if kind == "map":
            concurrency = draw(st.integers(min_value=1, max_value=4))
            steps.append(
                map_step(
                    name, over="input.items", after=after, max_concurrency=concurrency, when=when
                )
            )
        elif kind == "child":
            steps.append(child(name, workflow="leaf", after=after, when=when))
        else:
            steps.append(task(name, after=after, when=when))
    items = draw(st.integers(min_value=0, max_value=12))
    return definition(*steps, name="random"), items


def _constant(answer: bool) -> Condition:
    return lambda _given: answer


def expected_skips(definition: WorkflowDefinition) -> set[str]:
    """The branch rule, stated on its own: a step is skipped when its condition is false or
    every step it comes after was skipped."""
    skipped: set[str] = set()
    for name in definition.order:
        spec = definition.steps[name]
        if (spec.after and set(spec.after) <= skipped) or (
            spec.when is not None and not spec.when(Given(input={}, outputs={}))
        ):
            skipped.add(name)
    return skipped


def answers_since(book: ItemBook, seen: int) -> list[StepResult]:
    """What the outside world would answer to everything sent since transition `seen`: each
    command's success, and each child's completion (as the child's end reports it)."""
    found: list[StepResult] = []
    for transition in book.transitions[seen:]:
        for intent in transition.intents:
            if isinstance(intent, DispatchStep):
                command = intent.command
                output = command.item * 2 if command.item_index is not None else command.step_name
                found.append(success(command, output))
            elif isinstance(intent, StartChild):
                parent = intent.start.parent
                assert parent is not None
                found.append(
                    StepResult(
                        message_id=ids.child_result_id(intent.start.workflow_id, 1),
                        workflow_id=parent.workflow_id,
                        step_name=parent.step_name,
                        step_key=parent.step_key,
                        attempt=parent.attempt,
                        status=StepResultStatus.SUCCEEDED,
                        output={"child": intent.start.workflow_id},
                    )
                )
    return found


@settings(max_examples=150, deadline=None)
@given(drawn=mapped_dags(), data=st.data())
def test_any_dag_with_maps_children_and_conditions_runs_everything_once_in_order(
    drawn: tuple[WorkflowDefinition, int], data: st.DataObject
) -> None:
    """Whatever the DAG of tasks, maps and children, its conditions and the order answers
    arrive in (duplicates included): every item of every map that is not skipped, every task
    and every child runs once, never before its step's dependencies have ended well, exactly the
    steps the branch rule names are skipped, no map has more than its concurrency in flight, and
    each map's output is its items' outputs in order."""
    definition, size = drawn
    book = ItemBook(definition, NOW)
    items = list(range(size))
    state = begin(book, items)
    in_flight = answers_since(book, 0)
    ran = [(a.step_name, a.step_key) for a in in_flight]
    delivered: list[StepResult] = []
    while in_flight:
        message = in_flight.pop(data.draw(st.integers(0, len(in_flight) - 1)))
        delivered.append(message)
        seen = len(book.transitions)
        state = book.apply(book.deliver(state, message)) or state
        new = answers_since(book, seen)
        for fresh in new:
            spec = definition.steps[fresh.step_name]
            assert all(
                state.steps[dep].status in (StepStatus.COMPLETED, StepStatus.SKIPPED)
                for dep in spec.after
            )
        in_flight.extend(new)
        ran.extend((a.step_name, a.step_key) for a in new)
        for name, spec in definition.steps.items():
            if isinstance(spec, MapSpec):
                assert sum(1 for a in in_flight if a.step_name == name) <= spec.max_concurrency
        if data.draw(st.booleans()):
            assert isinstance(book.deliver(state, data.draw(st.sampled_from(delivered))), Ignored)
    assert state.status is WorkflowStatus.COMPLETED
    skipped = expected_skips(definition)
    assert {n for n, s in state.steps.items() if s.status is StepStatus.SKIPPED} == skipped
    expected = sorted(
        (name, str(key))
        for name, spec in definition.steps.items()
        if name not in skipped
        for key in (range(size) if spec.kind == "map" else [0])
    )
    assert sorted(ran) == expected
    for name, spec in definition.steps.items():
        if spec.kind == "map" and name not in skipped:
            assert state.steps[name].output == [i * 2 for i in items]
    seqs = [e.seq for t in book.transitions for e in t.events]
    assert seqs == list(range(1, len(seqs) + 1))
