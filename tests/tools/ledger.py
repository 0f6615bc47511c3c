"""A workflow whose every step has a side effect we can count: the fault tests' and the chaos
suite's workload.

    start ──► left  ──► join
          └─► right ──┘

Each step is transactional and adds 1 to `fault_ledger(workflow_id, step_name, step_key)`
inside the transaction that records its success (a task's stepKey is "0"; the mapped workload,
`tests.tools.ledger_map`, counts each item under its own). The row's `effects` is how often the
effect was committed: anything but 1 is a duplicated side effect. A body may be slowed down
(`RELAYFLOW_LEDGER_DELAY` seconds, after its write and before the commit, for the steps in
`RELAYFLOW_LEDGER_DELAY_STEPS`, default all) so a test can kill or cut a step service in the
middle of a transaction that already holds its effect.

Load it into the services with `RELAYFLOW_WORKFLOWS=tests.tools.ledger` and
`RELAYFLOW_STEP_MODULES=tests.tools.ledger`; create the table with `LEDGER_DDL` first.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel, ConfigDict

from relayflow.steps import StepContext, StepRegistry
from relayflow.workflow import define_workflow, task

WORKFLOW_NAME = "ledgerFlow"
STEP_NAMES = ("start", "left", "right", "join")

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS fault_ledger (
    workflow_id text NOT NULL,
    step_name   text NOT NULL,
    step_key    text NOT NULL DEFAULT '0',
    effects     integer NOT NULL,
    first_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (workflow_id, step_name, step_key)
)
"""

# One committed side effect of one invocation ($1 workflow, $2 step, $3 stepKey).
RECORD_EFFECT = """
INSERT INTO fault_ledger (workflow_id, step_name, step_key, effects) VALUES ($1, $2, $3, 1)
ON CONFLICT (workflow_id, step_name, step_key)
DO UPDATE SET effects = fault_ledger.effects + 1, last_at = clock_timestamp()
"""


# One constant statement per step, so that its name is in the statement's text.
_IN_FLIGHT = {name: f"SELECT 'ledger-in-flight:{name}'" for name in STEP_NAMES}


class LedgerInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tag: str


LEDGER_FLOW = define_workflow(
    WORKFLOW_NAME,
    input_model=LedgerInput,
    steps=[
        task("start"),
        task("left", after=["start"]),
        task("right", after=["start"]),
        task("join", after=["left", "right"]),
    ],
    output_from="join",
)
WORKFLOWS = [LEDGER_FLOW]

steps = StepRegistry()


def delay_for(step: str) -> float:
    delay = float(os.environ.get("RELAYFLOW_LEDGER_DELAY", "0") or 0)
    chosen = os.environ.get("RELAYFLOW_LEDGER_DELAY_STEPS", "")
    if chosen and step not in {name.strip() for name in chosen.split(",")}:
        return 0.0
    return delay


async def _effect(ctx: StepContext[LedgerInput]) -> dict[str, str]:
    await ctx.connection.execute(RECORD_EFFECT, ctx.workflow_id, ctx.step_name, ctx.step_key)
    delay = delay_for(ctx.step_name)
    if delay:
        # A marker the tests can see in pg_stat_activity (parameters do not show there): this
        # step's body holds its written, uncommitted effect. A kill or a cut now must roll it back.
        await ctx.connection.execute(_IN_FLIGHT[ctx.step_name])
        await asyncio.sleep(delay)
    return {"step": ctx.step_name, "tag": ctx.input.tag}


for _name in STEP_NAMES:
    steps.step(_name, transactional=True)(_effect)
