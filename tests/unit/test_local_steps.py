"""Local tasks in the pure machine and the in-process test environment: the kind asks for its
body to be run where the transition is recorded (`RunLocal`), sets no start-to-close timer, and
otherwise behaves as a task (results, retries, compensation)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel

from relayflow import machine
from relayflow.contracts import StartWorkflow, new_message_id
from relayflow.machine import DispatchStep, RunLocal, Transition
from relayflow.model import StepStatus, WorkflowStatus
from relayflow.steps import StepContext, StepRegistry
from relayflow.testing import WorkflowTestEnv
from relayflow.workflow import (
    LOCAL_TIMEOUT,
    LocalTaskSpec,
    RetryPolicy,
    TaskSpec,
    define_workflow,
    task,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Empty(BaseModel):
    pass


FLOW = define_workflow(
    "localUnit",
    input_model=Empty,
    retry=RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=1)),
    steps=[
        task("parse", local=True, compensate="unparse"),
        task("store", after=["parse"]),
        task("tidy", local=True, after=["store"], timeout=timedelta(seconds=2)),
    ],
)


def test_a_local_task_is_a_task_with_its_own_kind_and_no_queue_of_its_own() -> None:
    spec = FLOW.steps["parse"]
    assert isinstance(spec, LocalTaskSpec)
    assert isinstance(spec, TaskSpec)
    assert spec.kind == "local"
    # Its undo runs in a step service: the only queue it needs.
    assert FLOW.task_names() == ["unparse", "store"]
    assert FLOW.local_bodies() == ["parse", "tidy"]
    assert FLOW.steps["parse"].limit == LOCAL_TIMEOUT  # type: ignore[attr-defined]
    assert FLOW.steps["tidy"].limit == timedelta(seconds=2)  # type: ignore[attr-defined]
    remote = define_workflow(
        "localUnit",
        input_model=Empty,
        steps=[
            task("parse", compensate="unparse"),
            task("store", after=["parse"]),
            task("tidy", after=["store"], timeout=timedelta(seconds=2)),
        ],
    )
    # Moving a step into the orchestrator changes the shape: runs stay on their version.
    assert remote.version != FLOW.version


def test_starting_a_local_task_asks_for_it_to_run_here_and_sets_no_timer() -> None:
    start = StartWorkflow(
        message_id=new_message_id(), workflow_id="wf_local", workflow_name=FLOW.name, input={}
    )
    started = machine.start(FLOW, start, NOW)
    assert isinstance(started, Transition)
    assert started.state.steps["parse"].status is StepStatus.RUNNING
    (intent,) = started.intents
    assert isinstance(intent, RunLocal)
    assert intent.command.step_name == "parse"
    assert intent.limit == LOCAL_TIMEOUT.total_seconds()
    assert not [i for i in started.intents if isinstance(i, DispatchStep)]
    assert started.timers == []


steps = StepRegistry()
tries: dict[str, int] = {}


@steps.step("parse")
async def parse(ctx: StepContext[Empty]) -> dict[str, int]:
    tries[ctx.workflow_id] = ctx.attempt
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"parsed": ctx.attempt}


@steps.step("store", reads=[parse])
async def store(ctx: StepContext[Empty]) -> dict[str, int]:
    return {"stored": ctx.output(parse)["parsed"]}


@steps.step("tidy")
async def tidy(ctx: StepContext[Empty]) -> str:
    return "tidy"


@steps.step("unparse")
async def unparse(ctx: StepContext[Empty]) -> None:
    return None


async def test_the_test_environment_runs_local_tasks_like_any_body() -> None:
    env = WorkflowTestEnv([FLOW], steps, now=NOW)
    run = await env.start(FLOW.name, {})
    assert env.state(run).steps["parse"].status is StepStatus.RETRYING
    state = await env.run(run)
    assert state.status is WorkflowStatus.COMPLETED
    assert tries[run] == 2
    assert state.steps["store"].output == {"stored": 2}
    assert state.steps["tidy"].output == "tidy"
