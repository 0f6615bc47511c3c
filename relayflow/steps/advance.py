"""What a step service needs in order to advance workflows itself: the protocol of the one thing
that applies step results to their workflows inside the transaction that records them.

With one (`relayflow.orchestration.StepAdvancer` is the real one), a step's outcome and the
workflow's next move — its state, events and next command — commit together, and the result
never travels to the orchestrator: one broker hop and one commit per step instead of two of
each. A result it cannot apply here (a workflow this service does not know, a version it does
not load) is published as before and the orchestrator decides.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from relayflow.contracts import StepResult
from relayflow.steps.context import DbConnection


class Advanced(Protocol):
    """What one transaction's `Advancer.apply` did; `committed` once that transaction has."""

    @property
    def applied(self) -> frozenset[str]:
        """The message ids of the results applied (or found applied already): not to publish."""
        ...

    def committed(self) -> None:
        """Hand what the transaction wrote to send (the next commands, events) to the relay."""
        ...


class Advancer(Protocol):
    async def apply(
        self,
        conn: DbConnection,
        results: Sequence[StepResult],
        traces: Mapping[str, str] | None = None,
    ) -> Advanced:
        """Apply `results` in the open transaction of `conn`, before it commits; raises when the
        transaction cannot go on (it is then rolled back, and its commands run again without
        advancing). `traces`: the trace context of each workflow's command, by workflow id."""
        ...
