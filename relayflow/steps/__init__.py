"""The step-service SDK: declare step bodies, and serve them from their queues.

    from relayflow.steps import StepContext, StepRegistry

    steps = StepRegistry()

    @steps.step("persist", transactional=True)
    async def persist(ctx: StepContext[ContactForm]) -> dict[str, str]:
        await ctx.connection.execute("INSERT …", ctx.workflow_id, ctx.input.name)
        return {"recordId": ctx.workflow_id}

A step body runs at most once to success per (workflowId, stepName, stepKey), however often its
command is delivered; see `relayflow.steps.worker` for the rules.
"""

from relayflow.steps.context import DbConnection, StepContext, StepContextError
from relayflow.steps.registry import StepDefinition, StepRegistry
from relayflow.steps.store import Invocation, InvocationStatus, InvocationStore, Verdict, decide
from relayflow.steps.worker import StepWorker, WorkerConfig, result_for, result_message_id

__all__ = [
    "DbConnection",
    "Invocation",
    "InvocationStatus",
    "InvocationStore",
    "StepContext",
    "StepContextError",
    "StepDefinition",
    "StepRegistry",
    "StepWorker",
    "Verdict",
    "WorkerConfig",
    "decide",
    "result_for",
    "result_message_id",
]
