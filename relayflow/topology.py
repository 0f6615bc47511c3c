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

import logging
from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractExchange,
    AbstractQueue,
    AbstractRobustChannel,
)
from pamqp.common import FieldTable

from relayflow.errors import ConfigurationError
from relayflow.settings import Settings

log = logging.getLogger(__name__)

START_KEY = "workflow.start"
SIGNAL_KEY = "workflow.signal"
RESULT_KEY = "step.result"
# Cancel and retry requests for a workflow.
CONTROL_KEY = "workflow.control"
EXTERNAL_REQUEST_KEY = "external.request"
_CLASSIC: dict[str, Any] = {"x-queue-type": "classic"}


def step_key(step_name: str) -> str:
    return f"step.run.{step_name}"


@dataclass(frozen=True, slots=True)
class Topology:
    namespace: str
    queue_type: str = "quorum"
    delivery_limit: int = 20
    # x-quorum-initial-group-size: the broker caps it at the cluster's size.
    quorum_size: int = 3

    @classmethod
    def from_settings(cls, settings: Settings) -> Topology:
        return cls(
            namespace=settings.namespace,
            queue_type=settings.queue_type,
            delivery_limit=settings.delivery_limit,
            quorum_size=settings.quorum_size,
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

    def queue_arguments(self) -> FieldTable:
        """A durable queue's type, and how many replicas a quorum queue gets."""
        arguments: FieldTable = {"x-queue-type": self.queue_type}
        if self.queue_type == "quorum":
            arguments["x-quorum-initial-group-size"] = self.quorum_size
        return arguments

    def work_queue_arguments(self) -> FieldTable:
        arguments: FieldTable = {
            "x-dead-letter-exchange": self.dead_letter_exchange,
            **self.queue_arguments(),
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

    def queues(self, step_names: Iterable[str]) -> dict[str, FieldTable]:
        """Every durable queue and its arguments."""
        queues: dict[str, FieldTable] = {self.dead_letter_queue: self.queue_arguments()}
        for name in self.queue_bindings(step_names):
            queues[name] = self.work_queue_arguments()
        return queues

    async def declare(
        self,
        channel: AbstractChannel,
        step_names: Iterable[str],
        *,
        existing: Set[str] = frozenset(),
    ) -> Exchanges:
        """Declare the exchanges, the queues not in `existing` and every binding."""
        names = list(step_names)
        exchange = await channel.declare_exchange(
            self.exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        events = await channel.declare_exchange(
            self.events_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        dlx = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queues: dict[str, AbstractQueue] = {}
        for name, arguments in self.queues(names).items():
            if name in existing:
                queues[name] = await channel.get_queue(name, ensure=False)
            else:
                queues[name] = await channel.declare_queue(name, durable=True, arguments=arguments)
        await queues[self.dead_letter_queue].bind(dlx, routing_key="")
        for queue_name, keys in self.queue_bindings(names).items():
            for key in keys:
                await queues[queue_name].bind(exchange, routing_key=key)
        return Exchanges(main=exchange, events=events, dead_letters=dlx)

    async def ensure(self, connection: AbstractConnection, step_names: Iterable[str]) -> None:
        """Declare the whole topology (`declare`), as every service does at start-up; or, when
        the broker refuses because this user holds only least privileges (`relayflow broker
        setup`, whose definitions create the topology), check that all of it exists. A
        part missing then is a configuration error naming it.

        A queue that exists is taken as it is, not declared again: the broker refuses a
        declaration whose arguments differ from the queue's (a queue made before
        x-quorum-initial-group-size was given, or under another RELAYFLOW_QUORUM_SIZE), and a
        quorum queue's members are chosen once, by whoever creates it."""
        names = list(step_names)
        # Declared at once, as a topology usually is (made by this code, or not yet at all);
        # only a declaration the broker refuses for its arguments makes us look at what exists
        # and take those queues as they are. (Looking first every time, and binding the queues
        # found instead of declaring them, made every SSE event of the gateway slower — bench
        # fan-out, 10,000 subscribers of one workflow: its terminal event reached the last one
        # 280-350 ms after the first, against 145-160 ms — for a reason not found: not the
        # probes' channels, not the quorum group size.)
        existing: set[str] | None = None
        try:
            if await self._declared(connection, names, existing=set()):
                return
        except aiormq.exceptions.ChannelPreconditionFailed as refused:
            log.info("a queue exists with other arguments (%s); taking those as they are", refused)
            existing = await self._existing(connection, names)
            if await self._declared(connection, names, existing=existing):
                return
        if existing is None:
            existing = await self._existing(connection, names)
        missing = [f"queue {name}" for name in self.queues(names) if name not in existing]
        for name in [self.exchange, self.events_exchange, self.dead_letter_exchange]:
            if not await _exists(connection, "exchange", name):
                missing.insert(0, f"exchange {name}")
        if missing:
            raise ConfigurationError(
                f"the broker has no {', '.join(missing)}, and this broker user may not declare "
                "them: load the definitions of `relayflow broker setup` (made with the "
                "same workflows) first"
            )

    async def _declared(
        self, connection: AbstractConnection, names: list[str], *, existing: Set[str]
    ) -> bool:
        """`declare` on a channel of its own; False if this user may not declare."""
        channel = await _plain_channel(connection)
        try:
            await self.declare(channel, names, existing=existing)
        except aiormq.exceptions.ChannelAccessRefused as refused:
            log.info("may not declare the topology (%s); checking that it exists", refused)
            return False
        await channel.close()
        return True

    async def _existing(self, connection: AbstractConnection, names: list[str]) -> set[str]:
        return {name for name in self.queues(names) if await _exists(connection, "queue", name)}

    async def declare_event_listener(self, channel: AbstractChannel) -> AbstractQueue:
        """A server-named queue that lives as long as this connection: each gateway replica
        receives every event for its own subscribers. The exchange is `ensure`d's (declaring
        it again here would take a right a least-privilege gateway does not hold).

        On a robust channel the queue is not one it declares again when it reopens: the broker
        names it, and a reopened channel needs a new one (`services.gateway.events`)."""
        if isinstance(channel, AbstractRobustChannel):
            queue: AbstractQueue = await channel.declare_queue(
                "", exclusive=True, auto_delete=True, arguments=_CLASSIC, robust=False
            )
        else:
            queue = await channel.declare_queue(
                "", exclusive=True, auto_delete=True, arguments=_CLASSIC
            )
        await queue.bind(self.events_exchange, routing_key="")
        return queue


@dataclass(frozen=True, slots=True)
class Exchanges:
    main: AbstractExchange
    events: AbstractExchange
    dead_letters: AbstractExchange


async def _plain_channel(connection: AbstractConnection) -> AbstractChannel:
    """A channel that is not robust: one the broker closes (a refused declaration) is not
    opened again by aio-pika, to linger on the connection."""
    channel = aio_pika.Channel(connection)
    await channel  # opens it
    return channel


async def _exists(connection: AbstractConnection, kind: str, name: str) -> bool:
    """A passive declaration: it needs no permission, and one that fails closes its channel."""
    probe = await _plain_channel(connection)
    try:
        if kind == "exchange":
            await probe.declare_exchange(name, passive=True)
        else:
            await probe.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    await probe.close()
    return True
