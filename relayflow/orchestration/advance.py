"""Step results applied to their workflows by the step service, in the transaction that records
the step's outcome (`relayflow.steps.advance` says why). The same `Processor` as the
orchestrator's does the work — inbox, locks, machine, outbox — so the two paths cannot drift."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from relayflow import metrics
from relayflow.contracts import StepResult
from relayflow.db import Connection
from relayflow.machine import Rejected
from relayflow.orchestration import store
from relayflow.orchestration.processor import Deferred, Delivered, Processor
from relayflow.orchestration.relay import OutboxRelay
from relayflow.orchestration.store import OutboxRow

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Advanced:
    applied: frozenset[str]
    delivered: Delivered
    relay: OutboxRelay

    @property
    def outbox(self) -> Sequence[OutboxRow]:
        return self.delivered.result.outbox

    def committed(self) -> None:
        """Once the step's transaction has committed: count what it did, send what it wrote."""
        self.relay.submit(self.outbox)
        # After the hand-over: the next command does not wait for the metrics.
        metrics.count_duplicates(self.delivered.fresh)
        metrics.count_events(self.delivered.result.events, self.delivered.result.states)


class StepAdvancer:
    """Applies results with `processor` and hands what that committed to send to `relay`."""

    def __init__(self, processor: Processor, relay: OutboxRelay) -> None:
        self._processor = processor
        self._relay = relay

    async def apply(
        self,
        conn: Connection,
        results: Sequence[StepResult],
        traces: Mapping[str, str] | None = None,
    ) -> _Advanced:
        delivered = await self._processor.deliver(conn, results, traces=traces)
        applied: set[str] = set()
        refused: list[str] = []
        for result, outcome in zip(results, delivered.outcomes(), strict=True):
            if isinstance(outcome, (Rejected, Deferred)):
                # Published instead, for the orchestrator to decide (and dead-letter with the
                # reason): its copy must not look like one seen before (`deliver` has already
                # taken a deferred one's id back out of the inbox).
                log.debug("result %s not applied here: %s", result.message_id, outcome)
                if isinstance(outcome, Rejected):
                    refused.append(result.message_id)
            else:
                applied.add(result.message_id)
        if refused:
            await store.forget_messages(conn, refused)
        return _Advanced(frozenset(applied), delivered, self._relay)
