"""The protocol every step kind implements, with the defaults most kinds share.

A kind owns its step's life between `pending` and an end: how it starts (dispatch a command,
begin a wait, …), and what a result, a timer, a reply or a cancel does to it. The machine
(`core.py`) decides *when* — a step starts once its dependencies have completed; a workflow
ends when its steps have — and hands the kind a `StepHandle` to act through. Adding a kind is a
module here and an entry in the table of `kinds/__init__.py`, nothing in the machine.
"""

from __future__ import annotations

from relayflow.contracts import ExternalReply, StepResult
from services.orchestrator.machine.handle import StepHandle
from services.orchestrator.machine.transition import Ignored, Rejected, TimerFired


class StepKind:
    """The defaults: a kind takes no step results and no replies, and a cancel just marks the
    step cancelled. Every method acts on the handle; a return value of Ignored or Rejected says
    the input changes nothing (acknowledged) or can never apply (dead-lettered)."""

    name: str = ""
    # Whether StepResults are addressed to steps of this kind; one for another kind is wrong
    # whatever the workflow's state (dead-lettered).
    takes_results: bool = False

    def start(self, step: StepHandle) -> None:
        """Begin the step's next attempt (the first, or one after a retry timer)."""
        raise NotImplementedError

    def on_result(self, step: StepHandle, message: StepResult) -> Ignored | Rejected | None:
        """A StepResult for this step (only called when `takes_results`)."""
        raise NotImplementedError

    def on_timer(self, step: StepHandle, timer: TimerFired) -> Ignored | None:
        """A timer of this step at its current attempt came due (retry timers are the machine's:
        they call `start`)."""
        return Ignored(f"a {self.name} step sets no {timer.kind.value} timer")

    def on_reply(self, step: StepHandle, message: ExternalReply) -> bool:
        """Whether this step took the reply (the machine offers it to each step in turn)."""
        return False

    def on_cancel(self, step: StepHandle) -> None:
        """The workflow stops while this step is unfinished."""
        step.cancel()
