"""Typed outputs of any ancestor (`ctx.output(body)`), refused at load when the step read is not
an ancestor, and one body serving several steps (`task("notifyBuyer", step="notify")`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from relayflow import machine
from relayflow.contracts import (
    ErrorInfo,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
)
from relayflow.errors import DefinitionError
from relayflow.machine import Transition, WorkflowState
from relayflow.steps import StepContext, StepRegistry
from relayflow.steps.body import call
from relayflow.steps.invocation import Succeeded
from relayflow.workflow import WorkflowRegistry, define_workflow, map_step, task

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Order(BaseModel):
    sku: str


class Reserved(BaseModel):
    reservation: str
    units: int


class Shipped(BaseModel):
    label: str


steps = StepRegistry()


@steps.step("reserve")
async def reserve(ctx: StepContext[Order]) -> Reserved:
    return Reserved(reservation=f"R-{ctx.input.sku}", units=2)


@steps.step("charge")
async def charge(ctx: StepContext[Order]) -> dict[str, int]:
    return {"cents": 100}


@steps.step("emailReceipt")
async def email_receipt(ctx: StepContext[Order]) -> None:
    return None


@steps.step("ship", reads=[reserve])
async def ship(ctx: StepContext[Order]) -> Shipped:
    # Typed: mypy knows this is a Reserved, and so does the runtime.
    reserved: Reserved = ctx.output(reserve)
    return Shipped(label=f"{reserved.reservation}x{reserved.units}")


@steps.step("notify")
async def notify(ctx: StepContext[Order]) -> dict[str, str]:
    return {"notified": ctx.step_name}


# The case: `ship` comes after `charge` and `emailReceipt`, both after `reserve`; it
# reads `reserve`, an ancestor but not a direct dependency.
SHOP = define_workflow(
    "shop",
    input_model=Order,
    steps=[
        task("reserve"),
        task("charge", after=["reserve"]),
        task("emailReceipt", after=["reserve"]),
        task("ship", after=["charge", "emailReceipt"]),
        task("notifyBuyer", step="notify", after=["ship"]),
        task("notifySeller", step="notify", after=["ship"]),
    ],
)


async def _publish(*_: Any) -> None:
    return None


async def test_a_step_reads_any_ancestors_output_as_its_declared_model() -> None:
    steps.bind(WorkflowRegistry([SHOP]))
    command = StepCommand(
        message_id="cmd",
        workflow_id="wf_1",
        workflow_name="shop",
        step_name="ship",
        attempt=1,
        input={"sku": "A"},
        dependencies={
            "reserve": {"reservation": "R-A", "units": 2},
            "charge": {"cents": 100},
            "emailReceipt": None,
        },
    )
    definition = steps.get("ship")
    assert definition is not None
    outcome = await call(
        definition, command, publish=_publish, reads=steps.reads_of("shop", "ship", "ship")
    )
    assert outcome == Succeeded(b'{"label":"R-Ax2"}')


async def test_an_output_that_does_not_fit_its_model_fails_the_step_for_good() -> None:
    steps.bind(WorkflowRegistry([SHOP]))
    command = StepCommand(
        message_id="cmd",
        workflow_id="wf_1",
        workflow_name="shop",
        step_name="ship",
        attempt=1,
        input={"sku": "A"},
        dependencies={"reserve": {"reservation": "R-A"}},
    )
    definition = steps.get("ship")
    assert definition is not None
    outcome = await call(
        definition, command, publish=_publish, reads=steps.reads_of("shop", "ship", "ship")
    )
    assert isinstance(outcome, ErrorInfo)
    assert (outcome.type, outcome.retryable) == ("StepContextError", False)
    assert "units" in outcome.message


def test_reading_a_step_that_is_not_an_ancestor_is_refused_at_load() -> None:
    early = define_workflow(
        "early",
        input_model=Order,
        steps=[task("reserve"), task("ship")],
    )
    with pytest.raises(DefinitionError, match=r"workflow 'early': step 'ship' reads .*'reserve'"):
        steps.bind(WorkflowRegistry([early]))
    twice = define_workflow(
        "twice",
        input_model=Order,
        steps=[
            task("reserve"),
            task("reserveAgain", step="reserve"),
            task("ship", after=["reserve", "reserveAgain"]),
        ],
    )
    with pytest.raises(DefinitionError, match="several steps"):
        steps.bind(WorkflowRegistry([twice]))
    mapped = define_workflow(
        "mapped",
        input_model=Order,
        steps=[task("reserve"), map_step("ship", over="reserve.items", after=["reserve"])],
    )
    with pytest.raises(DefinitionError, match="a map item's body sees only its item"):
        steps.bind(WorkflowRegistry([mapped]))


def test_one_body_serves_several_steps_each_with_its_own_invocation() -> None:
    """Both notify steps send to the `notify` queue, under their own step names (so each has its
    own invocation and output), and the workflow needs one queue for them."""
    assert SHOP.task_names() == ["reserve", "charge", "emailReceipt", "ship", "notify"]
    state = machine.start(
        SHOP,
        StartWorkflow(message_id="m", workflow_id="wf_1", workflow_name="shop", input={"sku": "A"}),
        NOW,
    )
    assert isinstance(state, Transition)
    current = state.state
    for step in ("reserve", "charge", "emailReceipt", "ship"):
        outcome = machine.on_step_result(SHOP, current, _done(current, step), NOW)
        assert isinstance(outcome, Transition)
        current = outcome.state
    assert isinstance(outcome, Transition)
    notified = outcome.commands
    assert [(c.step_name, c.body) for c in notified] == [
        ("notifyBuyer", "notify"),
        ("notifySeller", "notify"),
    ]
    assert [c.body for c in state.commands] == [None]


def _done(state: WorkflowState, step: str) -> StepResult:
    return StepResult(
        message_id=f"r-{step}",
        workflow_id=state.id,
        step_name=step,
        attempt=state.steps[step].attempts,
        status=StepResultStatus.SUCCEEDED,
        output={"reservation": "R", "units": 1} if step == "reserve" else {},
    )
