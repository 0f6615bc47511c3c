"""`map`: one invocation of the step's body per item of a list, keyed by the item's index (or a
key derived from it), at most `max_concurrency` in flight, each retried and timed out by the
step's policy; the step completes with the item outputs in item order.

The items are rows of `step_items`, not part of the workflow's state: the step keeps only its
`MapProgress` (counts), so that an item's result costs one row and the workflow's jsonb stays the
same size for ten items or ten thousand. The machine stays pure by asking for what it does not
hold — the next pending items (`ClaimItems`), every output at the end (`CollectItems`) — and the
processor answers in the same transaction (`on_items`). Successes are reported in aggregate
(`step.progress`, about once per hundredth of the items); item failures one by one, with their
stepKey.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from relayflow.contracts import ErrorInfo, EventType, StepResult, StepResultStatus
from relayflow.machine.handle import StepHandle
from relayflow.machine.kinds.base import StepKind
from relayflow.machine.transition import (
    CancelItems,
    ClaimItems,
    CollectItems,
    CreateItems,
    DispatchStep,
    Ignored,
    ItemAnswer,
    ItemsClaimed,
    Rejected,
    ResetItems,
    SaveItem,
    TimerFired,
    TimerKind,
)
from relayflow.model import ItemState, MapProgress, StepStatus
from relayflow.workflow import MapSpec

# The longest stepKey a message carries.
MAX_KEY_LENGTH = 200
# Progress events per map: one each time another 1/PROGRESS_STEPS of the items has ended.
PROGRESS_STEPS = 100


class Map(StepKind):
    name = "map"
    takes_results = True

    def start(self, step: StepHandle) -> None:
        spec = _spec(step)
        previous = step.state.progress
        attempt = step.begin_attempt(StepStatus.RUNNING)
        workflow = step.workflow
        if previous is not None:
            # A retried workflow: completed items keep their outputs, the others run again.
            progress = MapProgress(total=previous.total, completed=previous.completed)
            step.add_item_op(ResetItems(workflow.id, step.name))
        else:
            items = _items(step, spec)
            if isinstance(items, ErrorInfo):
                step.fail(items)
                return
            progress = MapProgress(total=len(items))
            if items:
                step.add_item_op(CreateItems(items))
        step.emit(EventType.STEP_STARTED, attempt=attempt, items=progress.total)
        _set_progress(step, progress)
        _refill(step, spec)

    def on_result(self, step: StepHandle, message: StepResult) -> Ignored | Rejected | None:
        item = step.item
        if item is None:
            return Rejected(f"map {step.name!r} has no item {message.step_key!r}")
        stale = _stale(step, item, message.attempt, StepStatus.RUNNING)
        if stale is not None:
            return stale
        if message.status is StepResultStatus.SUCCEEDED:
            step.add_item_op(
                SaveItem(
                    replace(
                        item,
                        status=StepStatus.COMPLETED,
                        output=message.output,
                        error=None,
                        finished_at=step.now,
                    )
                )
            )
            progress = _progress(step)
            _set_progress(
                step,
                replace(progress, completed=progress.completed + 1, running=progress.running - 1),
            )
            _after_item(step, _spec(step))
        else:
            error = message.error or ErrorInfo(type="UnknownError", message="no error given")
            _item_attempt_failed(step, item, error)
        return None

    def on_timer(self, step: StepHandle, timer: TimerFired) -> Ignored | None:
        item = step.item
        if not timer.step_key or item is None:
            return Ignored(f"{timer.kind.value} timer for {step.name} names no item of it")
        if timer.kind is TimerKind.RETRY:
            stale = _stale(step, item, timer.attempt, StepStatus.RETRYING)
            if stale is not None:
                return stale
            _dispatch(step, _spec(step), _next_attempt(step, item), save=True)
            return None
        if timer.kind is TimerKind.STEP_TIMEOUT:
            stale = _stale(step, item, timer.attempt, StepStatus.RUNNING)
            if stale is not None:
                return stale
            limit = step.spec.timeout.total_seconds() if step.spec.timeout else 0.0
            _item_attempt_failed(
                step,
                item,
                ErrorInfo(
                    type="StepTimeout",
                    message=f"item {item.key!r} attempt {timer.attempt} did not report back "
                    f"within {limit:g}s",
                    retryable=True,
                ),
            )
            return None
        return Ignored(f"a map step sets no {timer.kind.value} timer")

    def on_items(self, step: StepHandle, answer: ItemAnswer) -> Ignored | None:
        spec = _spec(step)
        if step.state.status is not StepStatus.RUNNING:
            if isinstance(answer, ItemsClaimed):
                # Claimed for a map that has meanwhile stopped: hand them back as cancelled.
                for item in answer.items:
                    step.add_item_op(SaveItem(replace(item, status=StepStatus.CANCELLED)))
            return Ignored(f"map {step.name!r} is {step.state.status.value}")
        if isinstance(answer, ItemsClaimed):
            progress = _progress(step)
            shortfall = answer.requested - len(answer.items)
            if shortfall:
                _set_progress(step, replace(progress, running=progress.running - shortfall))
            for item in answer.items:
                _dispatch(step, spec, item, save=False)
            _refill(step, spec)
        else:
            _complete(step, answer.outputs)
        return None

    def on_cancel(self, step: StepHandle) -> None:
        if step.state.progress is not None:
            step.add_item_op(CancelItems(step.workflow.id, step.name))
            _set_progress(step, replace(step.state.progress, running=0))
        step.cancel()


def _spec(step: StepHandle) -> MapSpec:
    spec = step.spec
    assert isinstance(spec, MapSpec)
    return spec


def _progress(step: StepHandle) -> MapProgress:
    progress = step.state.progress
    assert progress is not None, f"map {step.name!r} runs without progress"
    return progress


def _set_progress(step: StepHandle, progress: MapProgress) -> None:
    step.set(replace(step.state, progress=progress))


def _stale(step: StepHandle, item: ItemState, attempt: int, expected: StepStatus) -> Ignored | None:
    """An item's result or timer counts only while the map runs and the item is still at that
    attempt, in that status: a late one (after a timeout, a retry or a cancel) changes nothing."""
    if (
        step.state.status is StepStatus.RUNNING
        and item.status is expected
        and (item.attempts == attempt)
    ):
        return None
    return Ignored(
        f"stale for {step.name}[{item.key}] attempt {attempt} (item is {item.status.value} at "
        f"attempt {item.attempts})"
    )


def _items(step: StepHandle, spec: MapSpec) -> tuple[ItemState, ...] | ErrorInfo:
    """The map's items from its source, or why they cannot be had (never retried: the same
    outputs give the same list)."""
    found, value = step.value_at(spec.over)
    if not found:
        return _input_error(step, f"{spec.over} is missing")
    if not isinstance(value, list):
        return _input_error(step, f"{spec.over} is a {type(value).__name__}, not a list")
    if len(value) > spec.max_items:
        return _input_error(
            step, f"{spec.over} has {len(value)} items, more than the map's {spec.max_items}"
        )
    keys = _keys(spec, value)
    if isinstance(keys, str):
        return _input_error(step, keys)
    workflow = step.workflow
    return tuple(
        ItemState(workflow_id=workflow.id, step_name=step.name, key=key, index=index, item=item)
        for index, (key, item) in enumerate(zip(keys, value, strict=True))
    )


def _keys(spec: MapSpec, values: Sequence[Any]) -> list[str] | str:
    if spec.key is None:
        return [str(index) for index in range(len(values))]
    keys: list[str] = []
    for index, value in enumerate(values):
        try:
            key = spec.key(value)
        except Exception as exc:
            return f"the key of item {index} raised {type(exc).__name__}: {exc}"
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
            return f"the key of item {index} is not a string of 1 to {MAX_KEY_LENGTH} characters"
        keys.append(key)
    seen: set[str] = set()
    for index, key in enumerate(keys):
        if key in seen:
            return f"item {index} has the key {key!r} of an earlier item; keys must be unique"
        seen.add(key)
    return keys


def _input_error(step: StepHandle, message: str) -> ErrorInfo:
    return ErrorInfo(type="MapInputError", message=f"map {step.name!r}: {message}", retryable=False)


def _refill(step: StepHandle, spec: MapSpec) -> None:
    """Fill free places (up to max_concurrency) with pending items, or collect the outputs once
    every item has ended."""
    progress = _progress(step)
    free = min(spec.max_concurrency - progress.running, progress.pending)
    if free > 0:
        _set_progress(step, replace(progress, running=progress.running + free))
        step.add_item_op(ClaimItems(step.workflow.id, step.name, free))
    elif progress.running == 0 and progress.pending == 0:
        if progress.total == 0:
            _complete(step, ())
        else:
            step.add_item_op(CollectItems(step.workflow.id, step.name))


def _after_item(step: StepHandle, spec: MapSpec) -> None:
    _report_progress(step)
    _refill(step, spec)


def _report_progress(step: StepHandle) -> None:
    progress = _progress(step)
    every = max(1, progress.total // PROGRESS_STEPS)
    if progress.ended and (progress.ended % every == 0 or progress.ended == progress.total):
        step.emit(EventType.STEP_PROGRESS, **progress.to_json())


def _next_attempt(step: StepHandle, item: ItemState) -> ItemState:
    return replace(
        item,
        status=StepStatus.RUNNING,
        attempts=item.attempts + 1,
        started_at=step.now,
        finished_at=None,
    )


def _dispatch(step: StepHandle, spec: MapSpec, item: ItemState, *, save: bool) -> None:
    """Send the command of `item`'s current attempt; `save` stores the item's new state (a
    claimed item was stored running by its claim)."""
    if save:
        step.add_item_op(SaveItem(item))
    step.add(
        DispatchStep(
            step.command(
                item.key,
                item.attempts,
                body=spec.body,
                input={},
                item=item.item,
                item_index=item.index,
            )
        )
    )
    if spec.timeout is not None:
        step.set_timer(TimerKind.STEP_TIMEOUT, item.attempts, step.now + spec.timeout, item.key)


def _item_attempt_failed(step: StepHandle, item: ItemState, error: ErrorInfo) -> None:
    error_json = error.model_dump(mode="json")
    next_at = step.retry_at(error, item.attempts, item.key)
    if next_at is not None:
        step.add_item_op(SaveItem(replace(item, status=StepStatus.RETRYING, error=error_json)))
        step.emit_item(
            EventType.STEP_ITEM_RETRYING,
            item.key,
            attempt=item.attempts,
            nextAttemptAt=next_at.isoformat(),
            error=error_json,
        )
        step.set_timer(TimerKind.RETRY, item.attempts, next_at, item.key)
        return
    step.add_item_op(
        SaveItem(replace(item, status=StepStatus.FAILED, error=error_json, finished_at=step.now))
    )
    step.emit_item(EventType.STEP_ITEM_FAILED, item.key, attempt=item.attempts, error=error_json)
    progress = _progress(step)
    progress = replace(progress, failed=progress.failed + 1, running=progress.running - 1)
    _set_progress(step, progress)
    spec = _spec(step)
    if progress.failed > spec.tolerated(progress.total):
        step.add_item_op(CancelItems(step.workflow.id, step.name))
        _set_progress(step, replace(progress, running=0))
        _report_progress(step)
        step.fail(
            ErrorInfo(
                type=error.type,
                message=f"item {item.key!r} failed: {error.message}",
                retryable=False,
            )
        )
        return
    _after_item(step, spec)


def _complete(step: StepHandle, outputs: Sequence[Any]) -> None:
    progress = _progress(step)
    step.set(
        replace(
            step.state,
            status=StepStatus.COMPLETED,
            output=list(outputs),
            error=None,
            finished_at=step.now,
        )
    )
    # The outputs themselves are in the step's state (GET /workflows/{id}); an event carrying
    # ten thousand of them would swamp every stream that follows the workflow.
    step.emit(EventType.STEP_COMPLETED, attempt=step.state.attempts, **progress.to_json())
