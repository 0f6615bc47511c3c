"""Commands handed over in process (eager dispatch): a step service that has just advanced a
workflow, and serves the step it moved to, runs that step's command itself instead of sending it
through the broker and back (Temporal's eager activity dispatch is the same idea).

The command's outbox row is committed with the move, as always; what changes is who delivers it.
The relay hands it to this process's step worker as an `EagerDelivery`, which the worker's batch
consumer takes like any delivery from the broker and the worker settles the same way:

- **ack** (its outcome recorded): the row counts as sent, and is deleted like a confirmed one;
- **hand back** (an outage, a stop, a batch that could not run): the row is published after all,
  and the broker's copy is handled like any other (an invocation already claimed or recorded is
  found by its key, so nothing runs twice);
- a crash before either leaves the row in the outbox, and the orchestrators' sweep sends it once
  it is `RELAYFLOW_OUTBOX_STALE_AFTER` old: a step in flight in a process that dies resumes that
  much later than a broker delivery would (the broker redelivers when the connection drops).

What it saves per step: a confirmed publish, the broker's write of the command to its log, a
delivery and an ack. What it gives up: within a chain, the steps after the first stay on the
process that took the first (the first step of each run still goes through the broker, so runs
spread over the replicas), and the step queue's delivery limit does not count a handed-over
attempt (its broker copy, sent after a crash, is counted as usual).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

import aiormq
import aiormq.abc
from aio_pika.abc import AbstractIncomingMessage, AbstractProcessContext, DeliveryMode

from relayflow.amqp import OutgoingMessage
from relayflow.contracts import StepCommand


class OutboxEntry(Protocol):
    """An outbox row as the relay hands it over (`relayflow.orchestration.store.OutboxRow`)."""

    @property
    def message(self) -> OutgoingMessage: ...


Row = TypeVar("Row", bound=OutboxEntry)


class EagerDelivery(AbstractIncomingMessage, Generic[Row]):
    """A step command handed over from an outbox row, settled through `done` (acked: the row is
    sent) or `back` (handed back: the row is to be published)."""

    def __init__(
        self,
        row: Row,
        command: StepCommand,
        *,
        done: Callable[[Row], None],
        back: Callable[[Row], None],
    ) -> None:
        message = row.message
        self.row = row
        self.command = command
        self._done = done
        self._back = back
        self._processed = False
        self.body = message.body
        self.body_size = len(message.body)
        self.headers = dict(message.headers)
        if message.traceparent:
            self.headers["traceparent"] = message.traceparent
        self.message_id = message.message_id
        self.type = message.type
        self.correlation_id = message.correlation_id
        self.routing_key = message.routing_key
        self.exchange = message.exchange
        self.user_id = None
        self.redelivered = False
        self.delivery_tag = None
        self.consumer_tag = None
        self.cluster_id = None
        self.message_count = None
        self.content_type = "application/json"
        self.content_encoding = None
        self.delivery_mode = DeliveryMode.PERSISTENT
        self.priority = None
        self.reply_to = None
        self.expiration = None
        self.timestamp = None
        self.app_id = None

    @property
    def processed(self) -> bool:
        return self._processed

    async def ack(self, multiple: bool = False) -> None:
        if not self._processed:
            self._processed = True
            self._done(self.row)

    async def nack(self, multiple: bool = False, requeue: bool = True) -> None:
        await self.reject(requeue)

    async def reject(self, requeue: bool = False) -> None:
        # Even a reject without requeue goes to the broker: there its queue's dead-letter
        # policy applies, as it would to the command had it been sent that way.
        if not self._processed:
            self._processed = True
            self._back(self.row)

    # What a delivery from the broker has and a handed-over one does not.

    @property
    def channel(self) -> aiormq.abc.AbstractChannel:
        raise RuntimeError("a command handed over in process has no channel")

    def process(
        self,
        requeue: bool = False,
        reject_on_redelivered: bool = False,
        ignore_processed: bool = False,
    ) -> AbstractProcessContext:
        raise NotImplementedError("settled through relayflow.amqp.settle")

    @property
    def properties(self) -> aiormq.spec.Basic.Properties:
        raise NotImplementedError("a command handed over in process has no AMQP properties")

    def lock(self) -> None:
        raise NotImplementedError

    @property
    def locked(self) -> bool:
        return False

    def __iter__(self) -> Iterator[int]:
        return iter(())
