"""`local`: a task whose body the orchestrator runs itself, inside the transaction that records
the transition (`RunLocal`); its StepResult comes back to the machine in that same transaction.
What follows a result is the task's: success completes the step, a failure goes to the retry
policy (a retry waits on a durable timer, like any task's). No start-to-close timer is set: the
orchestrator bounds the attempt itself, and a crash rolls the attempt back with everything else."""

from __future__ import annotations

from relayflow.contracts import StepCommand
from relayflow.machine.handle import StepHandle
from relayflow.machine.kinds.task import Task
from relayflow.machine.transition import RunLocal
from relayflow.workflow import LocalTaskSpec, TaskSpec


class LocalTask(Task):
    name = LocalTaskSpec.kind

    def run(self, step: StepHandle, spec: TaskSpec, command: StepCommand) -> None:
        assert isinstance(spec, LocalTaskSpec)
        step.add(RunLocal(command, limit=spec.limit.total_seconds()))
