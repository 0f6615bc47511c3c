"""A mapped workflow whose every item has a side effect we can count: the chaos suite's mapped
workload, beside `ledgerFlow` (`tests.tools.ledger`).

    tallyItem[k₁ … kₙ] ──► tallyClose

`tallyItem` is a map over `input.items`, keyed by each item's `key`; its body is transactional
and adds 1 to `fault_ledger(workflow_id, "tallyItem", <stepKey>)` inside the transaction that
records the item's success, so an item whose effect committed twice shows as a 2 (where
`batchImport`'s primary key could only make the second one fail). `tallyClose` counts its own
effect the same way (stepKey "0") and returns the keys the map's output lists, in its order:
a completed run's output must name every item once, in item order.

Bodies are slowed like the ledger's (`RELAYFLOW_LEDGER_DELAY`, `RELAYFLOW_LEDGER_DELAY_STEPS`).
Served with `RELAYFLOW_WORKFLOWS=tests.tools.ledger_map` and
`RELAYFLOW_STEP_MODULES=tests.tools.ledger_map`; its table is the ledger's `LEDGER_DDL`.
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from relayflow.steps import StepContext, StepRegistry
from relayflow.workflow import define_workflow, map_step, task
from tests.tools.ledger import RECORD_EFFECT, delay_for

WORKFLOW_NAME = "ledgerMap"
ITEM_STEP = "tallyItem"
CLOSE_STEP = "tallyClose"
STEP_NAMES = (ITEM_STEP, CLOSE_STEP)
MAX_CONCURRENCY = 8


class LedgerItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    key: Annotated[str, Field(min_length=1, max_length=64)]


class LedgerMapInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str
    items: Annotated[list[LedgerItem], Field(min_length=1)]


class Tallied(BaseModel):
    """One item's output: its key as the body saw it, and its place."""

    key: str
    step_key: str
    index: int | None


class Closed(BaseModel):
    """The workflow's output: the map's item keys in the order its output gave them."""

    tag: str
    keys: list[str]


def _item_key(item: Any) -> str:
    return str(item["key"])


LEDGER_MAP = define_workflow(
    WORKFLOW_NAME,
    input_model=LedgerMapInput,
    steps=[
        map_step(ITEM_STEP, over="input.items", max_concurrency=MAX_CONCURRENCY, key=_item_key),
        task(CLOSE_STEP, after=[ITEM_STEP]),
    ],
    output_from=CLOSE_STEP,
)
WORKFLOWS = [LEDGER_MAP]

steps = StepRegistry()


async def _slow(step: str) -> None:
    delay = delay_for(step)
    if delay:
        await asyncio.sleep(delay)


@steps.step(ITEM_STEP, transactional=True)
async def tally_item(ctx: StepContext[LedgerItem]) -> Tallied:
    """Counted under the invocation's stepKey (which must be the item's key: if it were not,
    the check would find the item's effect missing and a stray one beside it)."""
    await ctx.connection.execute(RECORD_EFFECT, ctx.workflow_id, ctx.step_name, ctx.step_key)
    await _slow(ctx.step_name)
    return Tallied(key=ctx.input.key, step_key=ctx.step_key, index=ctx.item_index)


@steps.step(CLOSE_STEP, transactional=True)
async def tally_close(ctx: StepContext[LedgerMapInput]) -> Closed:
    await ctx.connection.execute(RECORD_EFFECT, ctx.workflow_id, ctx.step_name, ctx.step_key)
    await _slow(ctx.step_name)
    outputs: list[dict[str, Any] | None] = ctx.dependencies[ITEM_STEP]
    return Closed(
        tag=ctx.input.tag,
        keys=[str(output["key"]) if output is not None else "" for output in outputs],
    )
