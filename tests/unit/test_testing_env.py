"""`relayflow.testing`: users' workflows and step bodies in one process on a clock the test
moves."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel

from relayflow.contracts import EventType
from relayflow.errors import StepError
from relayflow.model import StepStatus, WorkflowStatus
from relayflow.steps import StepContext, StepRegistry
from relayflow.testing import InputRefused, Stuck, WorkflowTestEnv
from relayflow.workflow import (
    RetryPolicy,
    child,
    define_workflow,
    map_step,
    sleep,
    task,
    wait,
)


class Order(BaseModel):
    lines: list[int]


class Approval(BaseModel):
    approved: bool


class Empty(BaseModel):
    pass


steps = StepRegistry()
attempts: dict[str, int] = {}


@steps.step("double")
async def double(ctx: StepContext[int]) -> int:
    return ctx.input * 2


@steps.step("flaky")
async def flaky(ctx: StepContext[dict[str, Any]]) -> str:
    attempts[ctx.workflow_id] = ctx.attempt
    if ctx.attempt < 3:
        raise RuntimeError("not yet")
    return "ok"


@steps.step("total", reads=[double])
async def total(ctx: StepContext[dict[str, Any]]) -> int:
    return sum(value or 0 for value in ctx.items(double))


@steps.step("leaf")
async def leaf(ctx: StepContext[dict[str, Any]]) -> str:
    return "leaf"


@steps.step("refuse")
async def refuse(ctx: StepContext[dict[str, Any]]) -> None:
    raise StepError("no", non_retryable=True)


LEAF = define_workflow("leafFlow", input_model=Empty, steps=[task("leaf")], output_from="leaf")
ORDER = define_workflow(
    "orderFlow",
    input_model=Order,
    signals={"approval": Approval},
    steps=[
        map_step("double", over="input.lines", max_concurrency=2),
        task("flaky", after=["double"]),
        sleep("rest", duration=timedelta(hours=5), after=["flaky"]),
        wait("approval", signal="approval", after=["rest"], timeout=timedelta(days=2)),
        child("sub", workflow=LEAF, after=["approval"], input=lambda given: {}),
        task("total", after=["sub"]),
    ],
    retry=RetryPolicy(
        max_attempts=5, initial_interval=timedelta(minutes=10), max_interval=timedelta(hours=1)
    ),
    output_from="total",
)


async def test_a_workflow_runs_on_virtual_time_with_maps_retries_sleeps_signals_children() -> None:
    env = WorkflowTestEnv([ORDER, LEAF], steps)
    began = env.now
    run = await env.start("orderFlow", {"lines": [1, 2, 3]})
    assert [item.status for item in env.items(run, "double")] == [StepStatus.COMPLETED] * 3
    # Within a day nothing is due but the approval's 2-day timeout: it waits for the test.
    with pytest.raises(Stuck, match="waits for a signal"):
        await env.run(run, within=timedelta(days=1))
    # Retries (10 and 20 minutes, less their jitter of up to a fifth) and the 5-hour sleep
    # passed without waiting for them.
    assert attempts[run] == 3
    assert env.now - began >= timedelta(hours=5, minutes=24)
    await env.signal(run, "approval", {"approved": True}, sent_by="ada")
    state = await env.run(run)
    assert state.status is WorkflowStatus.COMPLETED
    assert state.output == 12
    kinds = [e.event for e in env.events(run)]
    assert EventType.STEP_SLEEPING in kinds
    assert EventType.SIGNAL_RECEIVED in kinds
    assert EventType.CHILD_COMPLETED in kinds


async def test_refused_inputs_raise_with_the_reason() -> None:
    env = WorkflowTestEnv([ORDER, LEAF], steps)
    run = await env.start("orderFlow", {"lines": []})
    with pytest.raises(InputRefused, match="declares no signal 'nope'"):
        await env.signal(run, "nope", {})
    with pytest.raises(InputRefused, match="approved"):
        await env.signal(run, "approval", {"approved": "perhaps"})


async def test_a_failure_compensates_on_virtual_time() -> None:
    undo = StepRegistry()
    undone: list[str] = []

    @undo.step("book")
    async def book(ctx: StepContext[dict[str, Any]]) -> str:
        return "booked"

    @undo.step("unbook")
    async def unbook(ctx: StepContext[dict[str, Any]]) -> None:
        undone.append(ctx.dependencies["book"])

    @undo.step("refuse")
    async def refuse_here(ctx: StepContext[dict[str, Any]]) -> None:
        raise StepError("no", non_retryable=True)

    saga = define_workflow(
        "saga",
        input_model=Empty,
        steps=[task("book", compensate="unbook"), task("refuse", after=["book"])],
    )
    env = WorkflowTestEnv([saga], undo)
    state = await env.run(await env.start("saga", {}))
    assert state.status is WorkflowStatus.COMPENSATED
    assert undone == ["booked"]
