"""Bench-only workflows: linear chains of trivial tasks (`RELAYFLOW_WORKFLOWS=bench.workflows`).

`bench5` is the seed's five-step shape; `bench1` and `bench10` give the marginal cost of a step;
`benchfan` holds a workflow open (its `gate` step sleeps) while many SSE subscribers attach.
`benchnest3` starts `benchnest2` as its one (child) step, which starts `bench1` as its own: a
three-level chain of one step each, timed against `bench3`, three plain task steps.
`bench1local`, `bench5local` and `bench10local` are the chains with every step a local task.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from relayflow.workflow import StepSpec, WorkflowDefinition, child, define_workflow, task

MAX_STEPS = 10


class BenchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = 0
    # Seconds the `gate` step sleeps (fan-out run only).
    sleep: float = Field(default=0.0, ge=0, le=60)


def step_name(index: int) -> str:
    return f"b{index}"


def chain(name: str, length: int, *, local: bool = False) -> WorkflowDefinition:
    specs: list[StepSpec] = [
        task(step_name(i), after=[step_name(i - 1)] if i > 1 else [], local=local)
        for i in range(1, length + 1)
    ]
    return define_workflow(name, input_model=BenchInput, steps=specs, output_from=step_name(length))


FANOUT = define_workflow(
    "benchfan",
    input_model=BenchInput,
    steps=[task("gate"), task(step_name(1), after=["gate"])],
    output_from=step_name(1),
)


def nested(name: str, inner: str) -> WorkflowDefinition:
    """One child step running workflow `inner` on this workflow's own input."""
    return define_workflow(
        name, input_model=BenchInput, steps=[child("inner", workflow=inner)], output_from="inner"
    )


# The child run: parent -> child -> grandchild, one step each.
NESTED = "benchnest3"

WORKFLOWS = [
    chain("bench1", 1),
    chain("bench3", 3),
    chain("bench5", 5),
    chain("bench10", MAX_STEPS),
    FANOUT,
    nested("benchnest2", "bench1"),
    nested(NESTED, "benchnest2"),
    # The same chains with every step a local task (run inside the orchestrator).
    chain("bench1local", 1, local=True),
    chain("bench5local", 5, local=True),
    chain("bench10local", MAX_STEPS, local=True),
]
# Workflow name by number of steps, for the phases of a run.
BY_LENGTH = {1: "bench1", 3: "bench3", 5: "bench5", 10: "bench10"}
LOCAL_BY_LENGTH = {1: "bench1local", 5: "bench5local", 10: "bench10local"}
