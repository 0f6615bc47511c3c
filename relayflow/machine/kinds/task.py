"""`task`: one StepCommand per attempt to the step service of its body, one StepResult back.
A start-to-close timer fails an attempt that never reports back; the retry policy decides what
follows a failed attempt."""

from __future__ import annotations

from relayflow.contracts import (
    ErrorInfo,
    EventType,
    StepCommand,
    StepResult,
    StepResultStatus,
)
from relayflow.machine.handle import StepHandle
from relayflow.machine.kinds.base import StepKind, stale_result, start_to_close_limit
from relayflow.machine.transition import (
    DispatchStep,
    Ignored,
    Rejected,
    TimerFired,
    TimerKind,
)
from relayflow.model import StepStatus
from relayflow.workflow import TaskSpec

# A task runs one invocation; kinds that run many (a map) number them.
SINGLE_KEY = "0"


class Task(StepKind):
    name = "task"
    takes_results = True

    def start(self, step: StepHandle) -> None:
        attempt = step.begin_attempt(StepStatus.RUNNING)
        step.emit(EventType.STEP_STARTED, attempt=attempt)
        spec = step.spec
        assert isinstance(spec, TaskSpec)
        self.run(
            step,
            spec,
            step.command(
                SINGLE_KEY,
                attempt,
                body=spec.body,
                input=step.workflow.input,
                dependencies=step.ancestor_outputs(),
            ),
        )

    def run(self, step: StepHandle, spec: TaskSpec, command: StepCommand) -> None:
        """Have the attempt's command run: by a step service, bounded by a durable timer."""
        step.add(DispatchStep(command))
        if spec.timeout is not None:
            step.set_timer(TimerKind.STEP_TIMEOUT, command.attempt, step.now + spec.timeout)

    def on_result(self, step: StepHandle, message: StepResult) -> Ignored | Rejected | None:
        stale = stale_result(step, message)
        if stale is not None:
            return stale
        if message.status is StepResultStatus.SUCCEEDED:
            step.complete(message.output)
        else:
            step.attempt_failed(
                message.error or ErrorInfo(type="UnknownError", message="no error given")
            )
        return None

    def on_timer(self, step: StepHandle, timer: TimerFired) -> Ignored | None:
        limit = start_to_close_limit(step, timer)
        if isinstance(limit, Ignored):
            return limit
        step.attempt_failed(
            ErrorInfo(
                type="StepTimeout",
                message=f"attempt {timer.attempt} did not report back within {limit:g}s",
                retryable=True,
            )
        )
        return None
