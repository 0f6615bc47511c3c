"""Workflows with local tasks, and their bodies, for the local-task tests (importable, so that a
real orchestrator loads them as `RELAYFLOW_WORKFLOWS` and `RELAYFLOW_STEP_MODULES`)."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel, ConfigDict

from relayflow.contracts import ExternalRequest
from relayflow.errors import StepError
from relayflow.steps import StepContext, StepRegistry
from relayflow.workflow import RetryPolicy, define_workflow, task

# The table the transactional bodies write (created by the tests).
ROWS = "local_step_rows"


class Order(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item: str
    # Which attempts of `record` fail after writing their row (a retry follows).
    fail_record_on: list[int] = []
    # Seconds `slow` sleeps in Python, and in the database.
    sleep: float = 0.0
    db_sleep: float = 0.0


FAST = RetryPolicy(max_attempts=3, initial_interval=timedelta(0), max_interval=timedelta(0))

# check (local) -> record (local, writes) -> ship (remote) -> finish (local)
LOCAL_FLOW = define_workflow(
    "localFlow",
    input_model=Order,
    retry=FAST,
    steps=[
        task("check", local=True),
        task("record", local=True, after=["check"]),
        task("ship", after=["record"]),
        task("finish", local=True, after=["ship"]),
    ],
    output_from="finish",
)

# Only local tasks: a start runs the whole workflow in one transaction.
ALL_LOCAL = define_workflow(
    "allLocalFlow",
    input_model=Order,
    retry=FAST,
    steps=[task("check", local=True), task("finish", local=True, after=["check"])],
    output_from="finish",
)

# A local task that overruns its limit (in Python, or in a query).
SLOW_FLOW = define_workflow(
    "slowLocalFlow",
    input_model=Order,
    retry=RetryPolicy(max_attempts=1),
    steps=[task("slow", local=True, timeout=timedelta(milliseconds=200))],
)

WORKFLOWS = [LOCAL_FLOW, ALL_LOCAL, SLOW_FLOW]

steps = StepRegistry()


@steps.step("check")
async def check(ctx: StepContext[Order]) -> dict[str, str]:
    if not ctx.input.item:
        raise StepError("no item", non_retryable=True)
    return {"item": ctx.input.item.upper()}


@steps.step("record", transactional=True, reads=[check])
async def record(ctx: StepContext[Order]) -> dict[str, int]:
    checked = ctx.output(check)
    await ctx.connection.execute(
        f"INSERT INTO {ROWS} (workflow_id, attempt, item) VALUES ($1, $2, $3)",
        ctx.workflow_id,
        ctx.attempt,
        checked["item"],
    )
    await ctx.publish(
        ExternalRequest(
            message_id=f"note-{ctx.workflow_id}-{ctx.attempt}",
            workflow_id=ctx.workflow_id,
            correlation_id=f"note-{ctx.workflow_id}",
            reply_to="nowhere",
            payload={"attempt": ctx.attempt},
        ),
        routing_key="local.note",
        correlation_id=f"note-{ctx.workflow_id}",
    )
    if ctx.attempt in ctx.input.fail_record_on:
        raise StepError(f"attempt {ctx.attempt} fails after writing")
    return {"attempt": ctx.attempt}


@steps.step("ship")
async def ship(ctx: StepContext[Order]) -> dict[str, bool]:
    return {"shipped": True}


@steps.step("finish")
async def finish(ctx: StepContext[Order]) -> dict[str, str]:
    return {"done": ctx.input.item}


@steps.step("slow", transactional=True)
async def slow(ctx: StepContext[Order]) -> dict[str, bool]:
    await ctx.connection.execute(
        f"INSERT INTO {ROWS} (workflow_id, attempt, item) VALUES ($1, $2, 'slow')",
        ctx.workflow_id,
        ctx.attempt,
    )
    if ctx.input.db_sleep:
        await ctx.connection.execute("SELECT pg_sleep($1)", ctx.input.db_sleep)
    await asyncio.sleep(ctx.input.sleep)
    return {"ok": True}
