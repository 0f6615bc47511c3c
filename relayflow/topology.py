"""Exchange, queue and routing-key names, and their declaration.

    <ns>            direct   commands and results:
                               workflow.start, workflow.signal, step.result,
                               workflow.control                             -> <ns>.orchestrator
                               step.run.<step>                              -> <ns>.step.<step>
                               external.request                             -> <ns>.external
    <ns>.events     fanout   workflow events -> one exclusive queue per gateway replica
    <ns>.dlx        fanout   dead letters    -> <ns>.dead-letters

Every service declares the whole topology at start-up (declarations are idempotent), so that a
publisher never sees a mandatory message returned just because its consumer has not started yet.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractExchange, AbstractQueue
from pamqp.common import FieldTable

from relayflow.settings import Settings

START_KEY = "workflow.start"
SIGNAL_KEY = "workflow.signal"
RESULT_KEY = "step.result"
# Cancel and retry requests for a workflow.
CONTROL_KEY = "workflow.control"
EXTERNAL_REQUEST_KEY = "external.request"


def step_key(step_name: str) -> str:
    return f"step.run.{step_name}"


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str
    queue_type: str = "quorum"
    delivery_limit: int = 20

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            namespace=settings.namespace,
            queue_type=settings.queue_type,
            delivery_limit=settings.delivery_limit,
        )

    @property
    def exchange(self) -> str:
        return self.namespace

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    @property
    def orchestrator_queue(self) -> str:
        return f"{self.namespace}.orchestrator"

    @property
    def external_queue(self) -> str:
        return f"{self.namespace}.external"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead-letters"

    def step_queue(self, step_name: str) -> str:
        return f"{self.namespace}.step.{step_name}"

    def work_queue_arguments(self) -> FieldTable:
        arguments: FieldTable = {
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-queue-type": self.queue_type,
        }
        if self.queue_type == "quorum":
            arguments["x-delivery-limit"] = self.delivery_limit
        return arguments

    def queue_bindings(self, step_names: Iterable[str]) -> dict[str, list[str]]:
        """Every durable work queue and the routing keys bound to it on the main exchange."""
        bindings = {
            self.orchestrator_queue: [START_KEY, SIGNAL_KEY, RESULT_KEY, CONTROL_KEY],
            self.external_queue: [EXTERNAL_REQUEST_KEY],
        }
        for step in sorted(set(step_names)):
            bindings[self.step_queue(step)] = [step_key(step)]
        return bindings

    async def declare(self, channel: AbstractChannel, step_names: Iterable[str]) -> Exchanges:
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        events = await channel.declare_exchange(
            self.events_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dlx = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dead_letters = await channel.declare_queue(
            self.dead_letter_queue, durable=True, arguments={"x-queue-type": self.queue_type}
        )
        await dead_letters.bind(dlx, routing_key="")
        for queue_name, keys in self.queue_bindings(step_names).items():
            queue = await channel.declare_queue(
                queue_name, durable=True, arguments=self.work_queue_arguments()
            )
            for key in keys:
                await queue.bind(exchange, routing_key=key)
        return Exchanges(main=exchange, events=events, dead_letters=dlx)

    async def declare_event_listener(self, channel: AbstractChannel) -> AbstractQueue:
        """A server-named queue that lives as long as this connection: each gateway replica
        receives every event for its own subscribers."""
        events = await channel.declare_exchange(
            self.events_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await channel.declare_queue(
            "", exclusive=True, auto_delete=True, arguments={"x-queue-type": "classic"}
        )
        await queue.bind(events, routing_key="")
        return queue


@dataclass(frozen=True, slots=True)
class Exchanges:
    main: AbstractExchange
    events: AbstractExchange
    dead_letters: AbstractExchange
