"""The step-service SDK: declare step bodies, and serve them from their queues.

    from relayflow.steps import StepContext, StepRegistry

    steps = StepRegistry()

    @steps.step("persist", transactional=True)
    async def persist(ctx: StepContext[ContactForm]) -> dict[str, str]:
        await ctx.connection.execute("INSERT …", ctx.workflow_id, ctx.input.name)
        return {"recordId": ctx.workflow_id}

A step body runs at most once to success per (workflowId, stepName, stepKey), however often its
command is delivered (ARCHITECTURE.md, "Step invocations"). `StepWorker` serves bodies from the
broker; `InvocationEngine` is the part that claims, runs and records, without a broker; and
`relayflow.steps.testing` drives it over records kept in memory.
"""

from relayflow.steps.body import OutputNotStorable
from relayflow.steps.context import DbConnection, StepContext, StepContextError
from relayflow.steps.engine import EngineConfig, InvocationEngine, Started
from relayflow.steps.invocation import (
    Invocation,
    InvocationKey,
    InvocationStatus,
    Verdict,
    decide,
    invocation_key,
    result_for,
)
from relayflow.steps.registry import StepDefinition, StepRegistry
from relayflow.steps.storage import InvocationBatch, InvocationStorage
from relayflow.steps.store import InvocationStore
from relayflow.steps.worker import StepWorker, WorkerConfig

__all__ = [
    "DbConnection",
    "EngineConfig",
    "Invocation",
    "InvocationBatch",
    "InvocationEngine",
    "InvocationKey",
    "InvocationStatus",
    "InvocationStorage",
    "InvocationStore",
    "OutputNotStorable",
    "Started",
    "StepContext",
    "StepContextError",
    "StepDefinition",
    "StepRegistry",
    "StepWorker",
    "Verdict",
    "WorkerConfig",
    "decide",
    "invocation_key",
    "result_for",
]
