"""The protocol every step kind implements, with the defaults most kinds share.

A kind owns its step's life between `pending` and an end: how it starts (dispatch a command,
begin a wait, …), and what a result, a timer, a reply or a cancel does to it. The machine
(`core.py`) decides *when* — a step starts once its dependencies have completed; a workflow
ends when its steps have — and hands the kind a `StepHandle` to act through. Adding a kind is a
module here and an entry in the table of `kinds/__init__.py`, nothing in the machine.
"""

from __future__ import annotations

from typing import Any

from relayflow.contracts import ExternalReply, StepResult
from relayflow.machine.handle import StepHandle
from relayflow.machine.transition import (
    Ignored,
    ItemAnswer,
    Rejected,
    TimerFired,
    TimerKind,
)
from relayflow.model import StepStatus


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

    def on_signal(self, step: StepHandle, name: str, signal: dict[str, Any]) -> bool:
        """Whether this step took the named signal (the machine offers it to each step in
        turn; one no step takes is kept in the workflow's mailbox)."""
        return False

    def on_items(self, step: StepHandle, answer: ItemAnswer) -> Ignored | None:
        """The processor's answer to an item request this kind made (maps)."""
        return Ignored(f"a {self.name} step asks for no items")

    def on_cancel(self, step: StepHandle) -> None:
        """The workflow stops while this step is unfinished."""
        step.cancel()


def stale_result(step: StepHandle, message: StepResult) -> Ignored | None:
    """A result counts only while its step runs the attempt it answers: a late one (after a
    timeout, a retry or a cancel) changes nothing."""
    current = step.state
    if current.status is StepStatus.RUNNING and current.attempts == message.attempt:
        return None
    return Ignored(
        f"stale result for {message.step_name} attempt {message.attempt} "
        f"(step is {current.status.value} at attempt {current.attempts})"
    )


def start_to_close_limit(step: StepHandle, timer: TimerFired) -> float | Ignored:
    """The step's timeout in seconds, if `timer` is the start-to-close timer of the attempt it
    still runs; else why the timer is stale."""
    if timer.kind is not TimerKind.STEP_TIMEOUT or step.state.status is not StepStatus.RUNNING:
        return Ignored(f"{timer.kind.value} timer for {step.name} #{timer.attempt} is stale")
    return step.spec.timeout.total_seconds() if step.spec.timeout else 0.0
