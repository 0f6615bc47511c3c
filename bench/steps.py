"""Trivial step bodies for the bench workflows (`RELAYFLOW_STEP_MODULES=bench.steps`)."""

from __future__ import annotations

import asyncio

from bench.workflows import MAX_STEPS, BenchInput, step_name
from relayflow.steps import StepContext, StepRegistry

steps = StepRegistry()


def _trivial(index: int) -> None:
    async def body(ctx: StepContext[BenchInput]) -> dict[str, int]:
        return {"n": ctx.input.n, "step": index}

    body.__name__ = f"step_{index}"
    steps.step(step_name(index), input_model=BenchInput)(body)


for _index in range(1, MAX_STEPS + 1):
    _trivial(_index)


@steps.step("gate", input_model=BenchInput)
async def gate(ctx: StepContext[BenchInput]) -> dict[str, float]:
    """Holds the fan-out workflow open while the subscribers attach."""
    await asyncio.sleep(ctx.input.sleep)
    return {"slept": ctx.input.sleep}
