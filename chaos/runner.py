"""One chaos run: start everything privately, drive the workload, inject faults, check.

The services run as processes (`tests.tools.cluster`) on a private RabbitMQ node and a private
PostgreSQL cluster (`tests.tools.private_services`), each service behind its own fault proxies;
the machine's shared broker and database are never touched. The workload (`chaos.workload`) is
mostly `ledgerFlow` (`tests.tools.ledger`: four transactional steps, each counting its committed
side effect), with a fraction of mapped workflows beside it: `ledgerMap`
(`tests.tools.ledger_map`: every item counts its effect under its stepKey) and `batchImport`,
and a fraction of `approval` runs, each sent its `decision` signal by a task of its own
(`Chaos.signal`) at the moments and over the routes (broker or gateway) its plan names.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx
import orjson
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel

from chaos.checks import (
    TERMINAL,
    ApprovalRun,
    ApprovalVerdict,
    History,
    ParentLink,
    ReceivedSignal,
    count_by,
    judge,
    judge_approvals,
    map_stream_violation,
    stream_violation,
)
from chaos.workload import (
    DECISION,
    MAP_ITEM_STEPS,
    NOTIFY_STEP,
    STEP_QUEUES,
    TASK_KEY,
    Mix,
    Moment,
    Planned,
    Route,
    Send,
    plan,
)
from relayflow.amqp.connection import connect, connect_once
from relayflow.contracts import TERMINAL_EVENTS, SignalWorkflow, encode
from relayflow.topology import RESULT_KEY, SIGNAL_KEY, START_KEY, step_key
from tests.support import read_sse
from tests.tools.cluster import Cluster, running_cluster
from tests.tools.failover_cluster import FailoverCluster, running_failover_cluster
from tests.tools.pg_standby import PostgresPair
from tests.tools.private_services import PrivatePostgres, PrivateRabbit
from tests.tools.rabbit_cluster import RabbitCluster

log = logging.getLogger("chaos")

FAULTS = (
    "kill-orchestrator",
    "kill-steps",
    "kill-gateway",
    "restart-broker",
    "restart-database",
    "cut-amqp",
    "cut-db",
    "duplicate",
    "reorder",
    "malformed",
)
# With --cluster (three broker nodes): a random node killed (then started again), hung (SIGSTOP,
# then SIGCONT) or cut off from every service (its fault proxies black-holed), for a few
# seconds each; `restart-broker` then restarts one node's application.
NODE_FAULTS = ("kill-node", "pause-node", "cut-node")

# The applications the cluster serves beside its defaults (`tests.tools.cluster`).
APPS = {
    "RELAYFLOW_WORKFLOWS": "apps.approval.workflows",
    "RELAYFLOW_STEP_MODULES": "apps.approval.steps",
}
_ENDING_EVENTS = frozenset(str(event) for event in TERMINAL_EVENTS)
# What the harness's own queries meet while PostgreSQL restarts or is cut.
_DB_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@dataclass(frozen=True, slots=True)
class Config:
    workflows: int = 300
    duration: float = 120.0
    seed: int = 1
    faults: tuple[str, ...] = FAULTS
    subscribers: int = 20
    settle_timeout: float = 240.0
    step_delay: float = 0.05
    # Never cut the orchestrator's broker link nor restart the broker: to tell, when a run
    # fails, whether the orchestrator's reconnection is to blame (it once failed to restore its
    # consumer; tests/faults/test_infrastructure.py covers that on its own now).
    spare_orchestrator_amqp: bool = False
    # How much of the workload is mapped (ledgerMap, batchImport) and how many items a map has.
    mix: Mix = field(default_factory=Mix)
    # On the distributed engines (issue 13): three RabbitMQ nodes (`tests.tools.rabbit_cluster`),
    # node faults added; PostgreSQL a primary with a synchronous standby, failed over once,
    # halfway through the faults (the primary SIGKILLed, the standby promoted).
    cluster: bool = False


@dataclass
class Observed:
    attempted: set[str] = field(default_factory=set)
    accepted: set[str] = field(default_factory=set)
    faults: list[tuple[float, str]] = field(default_factory=list)
    malformed: int = 0
    streams: dict[str, list[int]] = field(default_factory=dict)
    # (event, stepKey) of every event a subscriber saw, by workflow.
    stream_events: dict[str, list[tuple[str, str | None]]] = field(default_factory=dict)
    # What we tried to start, by workflow id.
    planned: dict[str, Planned] = field(default_factory=dict)
    stream_ended: dict[str, bool] = field(default_factory=dict)
    reconnects: dict[str, int] = field(default_factory=dict)
    # The workflow accepted last: most likely still running.
    latest: str | None = None
    captured: list[tuple[str, aio_pika.Message]] = field(default_factory=list)
    # Copies of map items' commands and results published again (duplicated or reordered).
    item_replays: int = 0
    # approval runs: the signal ids a send of which was confirmed (broker) or accepted (202).
    confirmed_signals: dict[str, set[str]] = field(default_factory=dict)
    # Sends by route, and how they ended: "confirmed", "finished" (409: the run had ended),
    # "refused" (any other 4xx: a check fails), "unsent" (gave up retrying).
    signal_sends: dict[str, int] = field(default_factory=dict)
    signal_outcomes: dict[str, int] = field(default_factory=dict)
    signal_refusals: list[str] = field(default_factory=list)
    # Why sends were tried again (a gateway's status, the broker unreachable or unconfirmed).
    signal_retries: dict[str, int] = field(default_factory=dict)
    # Seconds from a fault to every service working again, by kind: for a node fault, until
    # every service that held the node holds another; for the failover, until they work on the
    # promoted standby.
    recoveries: dict[str, list[float]] = field(default_factory=dict)


class Chaos:
    def __init__(
        self,
        cluster: Cluster,
        rabbit: PrivateRabbit,
        postgres: PrivatePostgres,
        config: Config,
        *,
        rabbits: RabbitCluster | None = None,
        pair: PostgresPair | None = None,
    ) -> None:
        self.cluster = cluster
        self.rabbit = rabbit
        self.rabbits = rabbits
        # The server that takes writes (the standby, once promoted), and the pair it is of.
        self.postgres = postgres
        self.pair = pair
        self.config = config
        self.rng = random.Random(config.seed)  # noqa: S311 - chaos, not cryptography
        self.seen = Observed()
        self.subscribers: list[asyncio.Task[None]] = []
        # One task per accepted approval run, sending its decision signals.
        self.signallers: list[asyncio.Task[None]] = []
        # Set once a subscriber's stream has delivered an event.
        self.streaming: dict[str, asyncio.Event] = {}
        total = config.workflows + self.wave_size()
        self.plans = [plan(config.seed, index, config.mix) for index in range(total)]
        self.followed = self._pick_subscribers()

    def _pick_subscribers(self) -> frozenset[int]:
        """Evenly spread over the run, mapped workflows followed in their share of the
        subscribers (at least one when there are any), so their item events are checked too."""
        spread = self.plans[: self.config.workflows]
        mapped = [p.index for p in spread if p.mapped]
        plain = [p.index for p in spread if not p.mapped]
        wanted = min(self.config.subscribers, len(spread))
        share = min(
            len(mapped),
            max(1 if mapped and wanted else 0, round(wanted * len(mapped) / max(len(spread), 1))),
        )

        def every(indices: list[int], count: int) -> list[int]:
            if count <= 0:
                return []
            stride = max(1, len(indices) // count)
            return indices[::stride][:count]

        return frozenset(every(mapped, share) + every(plain, wanted - share))

    # -- workload --------------------------------------------------------------------------

    async def submit_all(self, client: httpx.AsyncClient) -> None:
        """Submit the workflows spread over the run, so faults keep meeting fresh work, each
        retried with its idempotency key until the gateway accepts it (or we give up on it)."""
        loop = asyncio.get_running_loop()
        spread = self.config.duration * 0.9
        started = loop.time()
        tasks = []
        for index in range(self.config.workflows):
            due = started + spread * index / max(self.config.workflows, 1)
            await asyncio.sleep(max(0.0, due - loop.time()))
            tasks.append(asyncio.create_task(self._submit_new(client, index)))
        await asyncio.gather(*tasks)

    def wave_size(self) -> int:
        return max(5, self.config.workflows // 20)

    async def submit_wave(self, client: httpx.AsyncClient) -> None:
        """Submit a wave at once, right after the last fault. Spread workflows may all have
        finished before it; the wave's completion times how soon the system does work again
        after the last fault (`last_fault_to_last_completion_s`)."""
        first = self.config.workflows
        await asyncio.gather(
            *(self._submit_new(client, index) for index in range(first, first + self.wave_size()))
        )

    async def _submit_new(self, client: httpx.AsyncClient, index: int) -> None:
        planned = self.plans[index]
        self.seen.attempted.add(planned.workflow_id)
        self.seen.planned[planned.workflow_id] = planned
        await self._submit(client, planned)

    async def _submit(self, client: httpx.AsyncClient, planned: Planned) -> None:
        for attempt in range(60):
            try:
                response = await client.post(
                    f"{self.cluster.base_url}/workflows/{planned.name}",
                    json=planned.input,
                    headers={"Idempotency-Key": planned.key},
                )
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 202:
                workflow_id: str = response.json()["workflowId"]
                if planned.approval is not None and workflow_id not in self.seen.accepted:
                    self.signallers.append(asyncio.create_task(self.signal(client, planned)))
                self.seen.accepted.add(workflow_id)
                self.seen.latest = workflow_id
                if planned.index in self.followed:
                    self.subscribers.append(
                        asyncio.create_task(self.subscribe(client, workflow_id))
                    )
                return
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))

    async def subscribe(self, client: httpx.AsyncClient, workflow_id: str) -> None:
        """Follow a workflow's events, reconnecting with Last-Event-ID whenever the stream
        breaks (the gateway is killed under it), until its terminal event."""
        seqs = self.seen.streams.setdefault(workflow_id, [])
        seen = self.seen.stream_events.setdefault(workflow_id, [])
        self.seen.stream_ended[workflow_id] = False
        url = f"{self.cluster.base_url}/workflows/{workflow_id}/events"
        for attempt in range(200):
            headers = {"Last-Event-ID": str(seqs[-1])} if seqs else {}
            if attempt:
                self.seen.reconnects[workflow_id] = self.seen.reconnects.get(workflow_id, 0) + 1
            try:
                async with client.stream("GET", url, headers=headers, timeout=None) as response:
                    # Not 200 (the gateway restarting behind a proxy): try again shortly.
                    events = read_sse(response) if response.status_code == 200 else _nothing()
                    async for event in events:
                        if "id" in event:
                            seqs.append(int(event["id"]))
                            data = event.get("data")
                            item = data.get("stepKey") if isinstance(data, dict) else None
                            seen.append((str(event.get("event", "")), item))
                            self.streaming.setdefault(workflow_id, asyncio.Event()).set()
                        if event.get("event") in _ENDING_EVENTS:
                            self.seen.stream_ended[workflow_id] = True
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            await asyncio.sleep(0.5)

    # -- signals -----------------------------------------------------------------------------

    async def signal(self, client: httpx.AsyncClient, planned: Planned) -> None:
        """Send an approval run its decision signals as its plan says: each at its moment (as
        soon as the run exists, once its wait has begun, or right after the send before it),
        over its route, retried (under the same key, so the same signal) until the broker
        confirms it or the gateway accepts it — or says the run has ended."""
        assert planned.approval is not None
        workflow_id = planned.workflow_id
        for send in planned.approval.sends:
            if send.moment is not Moment.NEXT:
                await self._until(workflow_id, waiting=send.moment is Moment.WAITING)
            # The planned offset from that moment (the workload's schedule, like the spread of
            # the starts: no condition to wait for).
            await asyncio.sleep(send.delay)
            outcome = await self._send(client, workflow_id, send)
            _bump(self.seen.signal_sends, str(send.route))
            _bump(self.seen.signal_outcomes, outcome)
            if outcome == "confirmed":
                self.seen.confirmed_signals.setdefault(workflow_id, set()).add(
                    send.signal_id(workflow_id)
                )

    async def _until(self, workflow_id: str, *, waiting: bool) -> None:
        """Until the run's row exists, or (`waiting`) its wait has begun or it has ended,
        read from the database directly (it may be restarting: then asked again). Polled
        often: an early signal should beat the run's first step to its wait."""
        query = """
            SELECT w.status, EXISTS (
                SELECT 1 FROM workflow_events e
                WHERE e.workflow_id = w.id AND e.event = 'step.started'
                  AND e.body ->> 'stepName' = $2
            ) AS waiting
            FROM workflows w WHERE w.id = $1
        """
        while True:
            try:
                row = await self.cluster.db().fetchrow(query, workflow_id, DECISION)
            except _DB_ERRORS:
                row = None
            else:
                if row is not None and (not waiting or row["waiting"] or row["status"] in TERMINAL):
                    return
            await asyncio.sleep(0.02 if not waiting else 0.1)

    async def _send(self, client: httpx.AsyncClient, workflow_id: str, send: Send) -> str:
        for attempt in range(60):
            if send.route is Route.GATEWAY:
                outcome = await self._send_through_gateway(client, workflow_id, send)
            else:
                outcome = await self._send_on_broker(workflow_id, send)
            if outcome is not None:
                return outcome
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))
        return "unsent"

    async def _send_through_gateway(
        self, client: httpx.AsyncClient, workflow_id: str, send: Send
    ) -> str | None:
        """POST /workflows/{id}/signals/decision; None: try again (same key)."""
        try:
            response = await client.post(
                f"{self.cluster.base_url}/workflows/{workflow_id}/signals/{DECISION}",
                json=send.payload(),
                headers={"Idempotency-Key": send.key, "X-Relayflow-Sender": send.by},
            )
        except httpx.TransportError:
            _bump(self.seen.signal_retries, "gateway unreachable")
            return None
        if response.status_code == 202:
            return "confirmed"
        if response.status_code == 409 and "finished workflow" in response.text:
            return "finished"
        if response.status_code >= 500 or (
            response.status_code == 404 and "no workflow with id" in response.text
        ):
            # 503: the broker did not confirm; 500: the database did not answer (a restart).
            # 404: not seen yet. Asked again under the same key: the same signal.
            _bump(self.seen.signal_retries, f"gateway {response.status_code}")
            return None
        self.seen.signal_refusals.append(f"{response.status_code}: {response.text[:200]}")
        return "refused"

    async def _send_on_broker(self, workflow_id: str, send: Send) -> str | None:
        """A SignalWorkflow on `workflow.signal`, confirmed and mandatory; None: try again
        (same message id)."""
        message = SignalWorkflow(
            message_id=send.signal_id(workflow_id),
            workflow_id=workflow_id,
            idempotency_key=send.key,
            signal_name=DECISION,
            payload=send.payload(),
            sent_by=send.by,
        )
        try:
            connection = await self._connect()
        except Exception:  # the broker may be restarting: try again
            _bump(self.seen.signal_retries, "broker unreachable")
            return None
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            exchange = await channel.get_exchange(self.cluster.topology.exchange, ensure=False)
            await exchange.publish(
                aio_pika.Message(
                    encode(message),
                    message_id=message.message_id,
                    type=message.type,
                    content_type="application/json",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=SIGNAL_KEY,
                mandatory=True,
                timeout=5,
            )
        except Exception:  # not confirmed (a restart, a cut): try again, same message id
            _bump(self.seen.signal_retries, "broker unconfirmed")
            return None
        finally:
            with contextlib.suppress(Exception):
                await connection.close()
        return "confirmed"

    # -- capturing messages to duplicate and reorder ---------------------------------------

    async def _connect(self) -> aio_pika.abc.AbstractConnection:
        """The harness's own connection, to a node that answers."""
        return await connect_once(self.cluster.amqp_urls, timeout=5)

    async def capture(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        if isinstance(channel, AbstractRobustChannel):
            # After a failover, a new queue (the lost connection may still hold the old one).
            channel.reopen_callbacks.add(lambda *_: self._capture_on(channel))
        await self._capture_on(channel)

    async def _capture_on(self, channel: aio_pika.abc.AbstractChannel) -> None:
        queue: aio_pika.abc.AbstractQueue
        if isinstance(channel, AbstractRobustChannel):
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True, robust=False)
        else:
            queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        exchange = self.cluster.topology.exchange
        for key in (START_KEY, RESULT_KEY, SIGNAL_KEY, *(step_key(s) for s in STEP_QUEUES)):
            await queue.bind(exchange, routing_key=key)

        async def keep(message: AbstractIncomingMessage) -> None:
            copy = aio_pika.Message(
                message.body,
                message_id=message.message_id,
                type=message.type,
                content_type=message.content_type,
                headers=dict(message.headers or {}),
                correlation_id=message.correlation_id,
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            captured = self.seen.captured
            captured.append((message.routing_key or "", copy))
            if len(captured) > 500:
                del captured[: len(captured) - 500]
            await message.ack()

        await queue.consume(keep)

    # -- faults ----------------------------------------------------------------------------

    async def inject_faults(self, client: httpx.AsyncClient) -> None:
        loop = asyncio.get_running_loop()
        end = loop.time() + self.config.duration
        actions: dict[str, Callable[[], Awaitable[None]]] = {
            "kill-orchestrator": lambda: self._kill("orchestrator", client),
            "kill-steps": lambda: self._kill("steps", client),
            "kill-gateway": lambda: self._kill("gateway", client),
            "restart-broker": self.rabbit.restart,
            "restart-database": lambda: self.postgres.restart(
                self.rng.choice(["fast", "immediate"])
            ),
            "cut-amqp": lambda: self._cut("amqp"),
            "cut-db": lambda: self._cut("db"),
            "duplicate": self._duplicate,
            "reorder": self._reorder,
            "malformed": self._malformed,
            **{kind: functools.partial(self._node_fault, kind) for kind in NODE_FAULTS},
        }
        if self.rabbits is not None:
            actions["restart-broker"] = self._restart_node
        failover_at = loop.time() + self.config.duration / 2 if self.pair is not None else None
        # Let the first workflows get going before the first fault.
        await asyncio.sleep(min(3.0, self.config.duration / 10))
        while loop.time() < end:
            if failover_at is not None and loop.time() >= failover_at:
                failover_at = None
                fault = "failover-database"
                self.seen.faults.append((time.time(), fault))
                await self._fail_over(client)
            else:
                fault = self.rng.choice(self.config.faults)
                log.info("fault: %s", fault)
                self.seen.faults.append((time.time(), fault))
                await actions[fault]()
            await asyncio.sleep(self.rng.uniform(1.0, 4.0))

    async def _fail_over(self, client: httpx.AsyncClient) -> None:
        """The primary's machine dies (SIGKILL of every process), the standby is promoted, and
        the recovery is the time from the kill until every service that uses the database has
        a session on it (the gateway's are made when asked: a list that needs one)."""
        assert self.pair is not None
        assert isinstance(self.cluster, FailoverCluster)
        log.info("fault: failover-database")
        killed = time.monotonic()
        self.pair.primary.kill()
        await self.pair.promote()
        # Writes go to the promoted standby from now on; the old primary stays down (whatever
        # runs PostgreSQL keeps it from coming back as a second primary).
        self.postgres = self.pair.standby
        deadline = killed + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(*_DB_ERRORS, httpx.HTTPError):
                listed = await client.get(f"{self.cluster.base_url}/workflows?limit=1")
                back = await self.cluster.connected_services()
                if listed.status_code == 200 and {"orchestrator", "steps"} <= back:
                    break
            await asyncio.sleep(0.05)
        else:
            log.warning("not every service reconnected within 60 s of the failover")
            return
        self.seen.recoveries.setdefault("failover-database", []).append(
            round(time.monotonic() - killed, 2)
        )

    async def _kill(self, service: str, client: httpx.AsyncClient) -> None:
        if service == "gateway":
            await self._follow_through_the_kill(client)
        await self.cluster.kill(service)
        await asyncio.sleep(self.rng.uniform(0.0, 1.0))
        await self.cluster.start(service)
        if service == "gateway":
            # Submissions retry meanwhile; waiting here keeps faults from piling on one start.
            with contextlib.suppress(AssertionError):
                await self.cluster.wait_ready(client, timeout=30)

    async def _follow_through_the_kill(self, client: httpx.AsyncClient) -> None:
        """Have a stream open on a running workflow when the gateway is killed, so that the
        kill breaks it and its resumption with Last-Event-ID is checked: subscribers picked at
        submission are rarely mid-stream at the moment of a kill."""
        workflow_id = self.seen.latest
        if workflow_id is None or self.seen.stream_ended.get(workflow_id):
            return
        if workflow_id not in self.seen.streams:
            self.subscribers.append(asyncio.create_task(self.subscribe(client, workflow_id)))
        # Until the stream has delivered an event and so is open (not longer: a fault is due).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                await self.streaming.setdefault(workflow_id, asyncio.Event()).wait()

    async def _node_fault(self, kind: str) -> None:
        """One node killed, hung or cut off for a few seconds; how long until every service
        that held it holds another is kept per kind."""
        assert self.rabbits is not None
        index = self.rng.randrange(len(self.rabbits.nodes))
        proxies = [links.nodes[index] for links in self.cluster.links.values()]
        holders = [
            s for s, links in self.cluster.links.items() if links.nodes[index].open_connections
        ]
        loop = asyncio.get_running_loop()
        started = loop.time()
        if kind == "kill-node":
            await self.rabbits.kill(index)
        elif kind == "pause-node":
            self.rabbits.pause(index)
        else:
            for proxy in proxies:
                proxy.blackhole()
        try:
            moved = await self._until_moved(holders, index, started + 60)
            # A node no service held moves nobody: no recovery to time.
            if moved is not None and holders:
                self.seen.recoveries.setdefault(kind, []).append(round(moved - started, 2))
            await asyncio.sleep(self.rng.uniform(0.0, 2.0))
        finally:
            if kind == "kill-node":
                await self.rabbits.nodes[index].launch()
            elif kind == "pause-node":
                self.rabbits.resume(index)
            else:
                for proxy in proxies:
                    proxy.pass_through()
            # One node fault at a time: two would leave the quorum queues without a majority.
            with contextlib.suppress(Exception):
                await self.rabbits.heal()

    async def _until_moved(self, services: list[str], node: int, deadline: float) -> float | None:
        loop = asyncio.get_running_loop()
        while loop.time() < deadline:
            if all(
                any(
                    p.open_connections
                    for i, p in enumerate(self.cluster.links[s].nodes)
                    if i != node
                )
                for s in services
            ):
                return loop.time()
            await asyncio.sleep(0.1)
        return None

    async def _restart_node(self) -> None:
        assert self.rabbits is not None
        await self.rng.choice(self.rabbits.nodes).restart()

    async def _cut(self, link: str) -> None:
        candidates = [
            s
            for s in self.cluster.links
            if not (link == "amqp" and s == "orchestrator" and self.config.spare_orchestrator_amqp)
        ]
        for service in self.rng.sample(candidates, k=self.rng.randint(1, len(candidates))):
            await getattr(self.cluster.links[service], link).cut()
            if link == "db" and isinstance(self.cluster, FailoverCluster):
                await self.cluster.standby_links[service].cut()

    async def _publisher(
        self,
    ) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractExchange]:
        connection = await self._connect()
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(self.cluster.topology.exchange, ensure=False)
        return connection, exchange

    async def _republish(self, batch: list[tuple[str, aio_pika.Message]]) -> None:
        try:
            connection, exchange = await self._publisher()
        except Exception:  # the broker may be restarting: skip this fault
            return
        try:
            for routing_key, message in batch:
                with contextlib.suppress(Exception):
                    await exchange.publish(message, routing_key=routing_key, timeout=5)
                    self.seen.item_replays += _is_item_message(message.body)
        finally:
            await connection.close()

    async def _duplicate(self) -> None:
        pool = self.seen.captured
        if pool:
            await self._republish(self.rng.sample(pool, k=min(len(pool), 10)))

    async def _reorder(self) -> None:
        pool = self.seen.captured
        if len(pool) >= 2:
            start = self.rng.randrange(0, max(1, len(pool) - 10))
            batch = pool[start : start + 10]
            await self._republish(list(reversed(batch)))

    async def _malformed(self) -> None:
        bodies = [
            b"{not json",
            b'{"type": "StartWorkflow", "messageId": "m"}',
            b'{"type": "NoSuchMessage", "messageId": "x", "workflowId": "wf_x"}',
        ]
        keys = [START_KEY, RESULT_KEY, SIGNAL_KEY, *(step_key(s) for s in STEP_QUEUES)]
        try:
            connection, exchange = await self._publisher()
        except Exception:
            return
        try:
            await exchange.publish(
                aio_pika.Message(
                    self.rng.choice(bodies),
                    message_id=f"malformed-{uuid.uuid4().hex}",
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                ),
                routing_key=self.rng.choice(keys),
                mandatory=True,
                timeout=5,
            )
            self.seen.malformed += 1
        except Exception:  # noqa: S110 - not confirmed: not counted
            pass
        finally:
            await connection.close()

    # -- the end ---------------------------------------------------------------------------

    async def settle(self, client: httpx.AsyncClient) -> float | None:
        """Every service back, then wait for the accepted workflows to finish; returns when the
        last one did (epoch seconds), None if some never did."""
        for service in ("gateway", "orchestrator", "steps", "external"):
            process = self.cluster.processes.get(service)
            if process is None or process.returncode is not None:
                self.cluster.processes.pop(service, None)
                await self.cluster.start(service)
        for links in self.cluster.links.values():
            links.amqp.pass_through()
            links.db.pass_through()
        with contextlib.suppress(AssertionError):
            await self.cluster.wait_ready(client, timeout=60)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.settle_timeout
        accepted = sorted(self.seen.accepted)
        while loop.time() < deadline:
            statuses = await self.cluster.statuses(accepted)
            if len(statuses) == len(accepted) and all(s in TERMINAL for s in statuses.values()):
                last = await self.cluster.db().fetchval(
                    "SELECT extract(epoch FROM max(finished_at)) FROM workflows"
                )
                return float(last) if last is not None else time.time()
            await asyncio.sleep(0.5)
        return None

    async def quiescent(self) -> dict[str, Any]:
        """Queues drained, outbox empty, dead letters counted (waiting briefly for the last
        acks and the outbox sweep)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            counts = await self.cluster.queue_counts()
            counts.update(await self._step_queue_counts(set(counts)))
            outbox = await self.cluster.db().fetchval("SELECT count(*) FROM outbox")
            dead = counts.pop(self.cluster.topology.dead_letter_queue, (0, 0))[0]
            busy = {q: c[0] for q, c in counts.items() if c[0]}
            if (not busy and outbox == 0) or loop.time() > deadline:
                return {"busy_queues": busy, "outbox": outbox, "dead_letters": dead}
            await asyncio.sleep(0.5)

    async def _step_queue_counts(self, known: set[str]) -> dict[str, tuple[int, int]]:
        """(ready, consumers) of the workload's step queues the cluster's own count leaves out
        (the mapped workflows'), declared passively."""
        names = [self.cluster.topology.step_queue(s) for s in STEP_QUEUES]
        counts: dict[str, tuple[int, int]] = {}
        connection = await self._connect()
        try:
            for name in (n for n in names if n not in known):
                channel = await connection.channel()
                try:
                    declared = await channel.declare_queue(name, passive=True)
                except aio_pika.exceptions.ChannelClosed:
                    continue
                result = declared.declaration_result
                counts[name] = (result.message_count or 0, result.consumer_count or 0)
                with contextlib.suppress(Exception):
                    await channel.close()
        finally:
            await connection.close()
        return counts


# Every counted effect: the ledger's rows, batchImport's rows (one per sku: the key refuses a
# second), and each batchImport's notification, counted under the parent that asked for it.
_EFFECTS = f"""
SELECT workflow_id, step_name, step_key, effects FROM fault_ledger
UNION ALL
SELECT workflow_id, 'importItem', sku, count(*)::int FROM imported_items GROUP BY 1, 2, 3
UNION ALL
SELECT w.parent ->> 'workflowId', '{NOTIFY_STEP}', '{TASK_KEY}', count(*)::int
FROM import_notifications n JOIN workflows w ON w.id = n.workflow_id
WHERE w.parent IS NOT NULL
GROUP BY 1
"""


@dataclass(frozen=True, slots=True)
class Holdings:
    """What the database holds at the end."""

    statuses: dict[str, str]
    last_seq: dict[str, int]
    outputs: dict[str, Any]
    errors: dict[str, str]
    parents: dict[str, ParentLink]
    effects: dict[tuple[str, str, str], int]
    # Map items the orchestrator tried again (a failed or timed-out attempt).
    item_retries: int


async def holdings(cluster: Cluster) -> Holdings:
    db = cluster.db()
    rows = await db.fetch("SELECT id, status, last_seq, output, error, parent FROM workflows")
    effects: dict[tuple[str, str, str], int] = {}
    for row in await db.fetch(_EFFECTS):
        key = (row["workflow_id"], row["step_name"], row["step_key"])
        effects[key] = effects.get(key, 0) + int(row["effects"])
    retries = await db.fetchval("SELECT count(*) FROM step_items WHERE attempts > 1")
    return Holdings(
        item_retries=int(retries),
        statuses={row["id"]: row["status"] for row in rows},
        last_seq={row["id"]: row["last_seq"] for row in rows},
        outputs={row["id"]: row["output"] for row in rows if row["status"] == "completed"},
        errors={row["id"]: str(row["error"]) for row in rows if row["status"] == "failed"},
        parents={
            row["id"]: ParentLink(
                workflow_id=str(row["parent"]["workflowId"]),
                step_name=str(row["parent"]["stepName"]),
                step_key=str(row["parent"].get("stepKey", TASK_KEY)),
                attempt=int(row["parent"]["attempt"]),
            )
            for row in rows
            if isinstance(row["parent"], dict)
        },
        effects=effects,
    )


# What an approval run left: its effects (the bodies' own rows), its invocations (the step
# service's rows), its decision as its `outcome` step recorded it, and what its history says
# of its signals and its wait.
_APPROVAL_LEDGER = "SELECT workflow_id, effect, count FROM approval_ledger"
_APPROVAL_INVOCATIONS = """
SELECT workflow_id, step_name, step_key, status, output FROM step_invocations
WHERE workflow_id = ANY($1)
"""
_APPROVAL_EVENTS = """
SELECT workflow_id, seq, event, body -> 'data' AS data FROM workflow_events
WHERE workflow_id = ANY($1)
  AND (event = 'signal.received' OR (event = 'step.started' AND body ->> 'stepName' = $2))
ORDER BY workflow_id, seq
"""
_INBOXED = "SELECT message_id FROM inbox WHERE message_id = ANY($1)"


async def approval_runs(cluster: Cluster, seen: Observed, held: Holdings) -> list[ApprovalRun]:
    """Every approval run we started, as the database holds it."""
    plans = {wf: p for wf, p in seen.planned.items() if p.approval is not None}
    if not plans:
        return []
    db = cluster.db()
    ids = sorted(plans)
    ledger: dict[str, dict[str, int]] = {wf: {} for wf in ids}
    for row in await db.fetch(_APPROVAL_LEDGER):
        ledger.setdefault(row["workflow_id"], {})[row["effect"]] = int(row["count"])
    invocations: dict[str, dict[tuple[str, str], str]] = {wf: {} for wf in ids}
    outcomes: dict[str, Any] = {}
    for row in await db.fetch(_APPROVAL_INVOCATIONS, ids):
        invocations[row["workflow_id"]][(row["step_name"], row["step_key"])] = row["status"]
        if row["step_name"] == "outcome" and row["status"] == "succeeded":
            outcomes[row["workflow_id"]] = row["output"]
    received: dict[str, list[ReceivedSignal]] = {wf: [] for wf in ids}
    wait_started: dict[str, int] = {}
    for row in await db.fetch(_APPROVAL_EVENTS, ids, DECISION):
        data = row["data"] if isinstance(row["data"], dict) else {}
        if row["event"] != "signal.received":
            wait_started.setdefault(row["workflow_id"], int(row["seq"]))
            continue
        payload = data.get("payload")
        payload = payload if isinstance(payload, dict) else {}
        received[row["workflow_id"]].append(
            ReceivedSignal(
                seq=int(row["seq"]),
                signal_id=str(data.get("signalId")),
                approved=payload.get("approved"),
                by=payload.get("by"),
            )
        )
    approvals = {wf: p.approval for wf, p in plans.items() if p.approval is not None}
    planned_ids = {
        wf: frozenset(send.signal_id(wf) for send in a.sends) for wf, a in approvals.items()
    }
    everyone = sorted(set().union(*planned_ids.values()))
    inboxed = {row["message_id"] for row in await db.fetch(_INBOXED, everyone)}
    return [
        ApprovalRun(
            workflow_id=wf,
            fail_at=approvals[wf].fail_at,
            planned_signals=planned_ids[wf],
            confirmed_signals=frozenset(seen.confirmed_signals.get(wf, ())),
            status=held.statuses.get(wf),
            output=held.outputs.get(wf),
            ledger=ledger.get(wf, {}),
            invocations=invocations[wf],
            outcome=outcomes.get(wf),
            received=received[wf],
            wait_started_seq=wait_started.get(wf),
            inboxed=frozenset(planned_ids[wf] & inboxed),
        )
        for wf in ids
        if wf in seen.accepted
    ]


def _approval_report(verdict: ApprovalVerdict, runs: int, seen: Observed) -> dict[str, Any]:
    return {
        "approval_runs": runs,
        "approval_statuses": dict(sorted(verdict.statuses.items())),
        "approval_lost": len(verdict.lost),
        "approval_duplicated": len(verdict.duplicated),
        "approval_unexpected": len(verdict.unexpected),
        "approval_missing_effects": len(verdict.missing_effects),
        "approval_wrong_status": len(verdict.wrong_status),
        "approval_wrong_outputs": len(verdict.wrong_outputs),
        "approval_undos": verdict.compensated_undos,
        "signal_sends": dict(sorted(seen.signal_sends.items())),
        "signal_send_outcomes": dict(sorted(seen.signal_outcomes.items())),
        "signal_send_retries": dict(sorted(seen.signal_retries.items())),
        "signals_confirmed": verdict.signals_confirmed,
        "signals_received": verdict.signals_received,
        "signals_before_wait": verdict.signals_before_wait,
        "signals_while_waiting": verdict.signals_while_waiting,
        "signals_after_end": verdict.signals_after_end,
    }


def _bump(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


async def _nothing() -> AsyncIterator[dict[str, Any]]:
    return
    yield


def _system(
    rabbit: PrivateRabbit,
    postgres: PrivatePostgres,
    log_dir: Path,
    env: dict[str, str],
    *,
    rabbits: RabbitCluster | None,
    pair: PostgresPair | None,
) -> contextlib.AbstractAsyncContextManager[Cluster]:
    """Every service's links proxied (to each broker node; on the pair, to both of its
    servers), none started yet."""
    brokers = rabbits.nodes if rabbits else ()
    if pair is None:
        return running_cluster(
            rabbit, postgres, log_dir, extra_env=env, start=False, brokers=brokers
        )
    return running_failover_cluster(
        rabbit, pair, log_dir, extra_env=env, start=False, brokers=brokers
    )


async def run(config: Config) -> dict[str, Any]:
    """The whole run; returns the report (its `ok` says whether every check passed)."""
    started = time.time()
    log_dir = Path(tempfile.mkdtemp(prefix="relayflow-chaos-logs-"))
    env = {
        "RELAYFLOW_LEDGER_DELAY": str(config.step_delay),
        "RELAYFLOW_LOG_LEVEL": "WARNING",
    }
    if config.cluster:
        # Every hung node is noticed within about three of these (relayflow.amqp.connection).
        env["RELAYFLOW_AMQP_HEARTBEAT"] = "2"
    async with contextlib.AsyncExitStack() as stack:
        rabbits = await stack.enter_async_context(RabbitCluster()) if config.cluster else None
        rabbit = rabbits.nodes[0] if rabbits else await stack.enter_async_context(PrivateRabbit())
        pair = await stack.enter_async_context(PostgresPair()) if config.cluster else None
        postgres = pair.primary if pair else await stack.enter_async_context(PrivatePostgres())
        cluster = await stack.enter_async_context(
            _system(rabbit, postgres, log_dir, env, rabbits=rabbits, pair=pair)
        )
        client = await stack.enter_async_context(httpx.AsyncClient(timeout=10))
        # The cluster's own workflows and step modules, and approval's beside them.
        defaults = cluster.env_for("orchestrator")
        for variable, module in APPS.items():
            cluster.extra_env[variable] = f"{defaults[variable]},{module}"
        await cluster.start_all(client)
        chaos = Chaos(cluster, rabbit, postgres, config, rabbits=rabbits, pair=pair)
        observer = await connect(cluster.amqp_urls, name="chaos-observer")
        try:
            await chaos.capture(observer)
            faults = asyncio.create_task(chaos.inject_faults(client))
            await chaos.submit_all(client)
            await faults
            last_fault = chaos.seen.faults[-1][0] if chaos.seen.faults else started
            await chaos.submit_wave(client)
            last_completion = await chaos.settle(client)
            # Each run is terminal, so its signaller has sent all (or met the end): a moment.
            if chaos.signallers:
                _, stuck = await asyncio.wait(chaos.signallers, timeout=60)
                for task in stuck:
                    task.cancel()
                if stuck:
                    chaos.seen.signal_outcomes["unfinished"] = len(stuck)
            # Streams still open end by themselves after their workflow's terminal event.
            if chaos.subscribers:
                _, late = await asyncio.wait(chaos.subscribers, timeout=30)
                for task in late:
                    task.cancel()
            end_state = await chaos.quiescent()
            held = await holdings(cluster)
            approvals = await approval_runs(cluster, chaos.seen, held)
        finally:
            await observer.close()
    planned = chaos.seen.planned
    verdict = judge(
        History(
            attempted=frozenset(chaos.seen.attempted),
            accepted=frozenset(chaos.seen.accepted),
            statuses=held.statuses,
            effects=held.effects,
            expected={wf: p.effects for wf, p in planned.items() if p.approval is None},
            expected_outputs={wf: p.output for wf, p in planned.items() if p.output is not None},
            outputs=held.outputs,
            parents=held.parents,
            errors=held.errors,
        )
    )
    stream_problems = {
        wf: problem
        for wf, seqs in chaos.seen.streams.items()
        if (
            problem := stream_violation(
                seqs, held.last_seq.get(wf, 0), chaos.seen.stream_ended.get(wf, False)
            )
            or _map_stream_problem(chaos.seen, planned.get(wf), held.statuses.get(wf))
        )
    }
    mapped = [p for p in planned.values() if p.mapped]
    approval = judge_approvals(approvals)
    signal_problems = [
        *chaos.seen.signal_refusals,
        *(
            f"{n} send(s) {outcome}"
            for outcome, n in chaos.seen.signal_outcomes.items()
            if n and outcome in ("unsent", "unfinished")
        ),
    ]
    checks = {
        "lost": len(verdict.lost) == 0,
        "duplicated": len(verdict.duplicated) == 0,
        "unexpected": len(verdict.unexpected) == 0,
        "missing_effects": len(verdict.missing_effects) == 0,
        "stray_effects": len(verdict.stray_effects) == 0,
        "outputs": len(verdict.wrong_outputs) == 0,
        "queues_drained": not end_state["busy_queues"],
        "outbox_empty": end_state["outbox"] == 0,
        "dead_letters": end_state["dead_letters"] == chaos.seen.malformed,
        "sse": not stream_problems,
        "approval_lost": not approval.lost,
        "approval_duplicated": not approval.duplicated,
        "approval_unexpected": not approval.unexpected,
        "approval_missing_effects": not approval.missing_effects,
        "approval_status": not approval.wrong_status,
        "approval_outputs": not approval.wrong_outputs,
        "signals_sent": not signal_problems,
    }
    report: dict[str, Any] = {
        "ok": all(checks.values()),
        "seed": config.seed,
        "workflows": config.workflows,
        "recovery_wave": chaos.wave_size(),
        "accepted": len(chaos.seen.accepted),
        "completed": verdict.completed,
        "failed": len(verdict.failed),
        "lost": len(verdict.lost),
        "duplicated": len(verdict.duplicated),
        "unexpected": len(verdict.unexpected),
        "missing_effects": len(verdict.missing_effects),
        "stray_effects": len(verdict.stray_effects),
        "wrong_outputs": len(verdict.wrong_outputs),
        "mapped": count_by(p.name for p in mapped),
        "mapped_completed": sum(
            1 for p in mapped if held.statuses.get(p.workflow_id) == "completed"
        ),
        "items": sum(p.items for p in mapped),
        "children": verdict.children,
        "item_messages_replayed": chaos.seen.item_replays,
        "item_retries": held.item_retries,
        "unacknowledged_started": verdict.unacknowledged_started,
        **_approval_report(approval, len(approvals), chaos.seen),
        "queues_drained": checks["queues_drained"],
        "busy_queues": end_state["busy_queues"],
        "outbox": end_state["outbox"],
        "dead_letters": end_state["dead_letters"],
        "malformed_injected": chaos.seen.malformed,
        "sse_subscribers": len(chaos.seen.streams),
        "sse_mapped_subscribers": sum(
            1 for wf in chaos.seen.streams if wf in planned and planned[wf].mapped
        ),
        "sse_reconnected": sum(1 for n in chaos.seen.reconnects.values() if n),
        "sse_ok": checks["sse"],
        "sse_problems": dict(list(stream_problems.items())[:3]),
        "faults": count_by(f for _, f in chaos.seen.faults),
        "cluster": config.cluster,
        # Seconds until every service worked on again, by kind of fault (--cluster).
        "recovery_s": {
            kind: {"n": len(times), "median": statistics.median(times), "max": max(times)}
            for kind, times in chaos.seen.recoveries.items()
        },
        "last_fault_to_last_completion_s": (
            round(last_completion - last_fault, 2) if last_completion is not None else None
        ),
        "failed_checks": [name for name, passed in checks.items() if not passed],
        "examples": {
            "lost": verdict.lost[:3],
            "duplicated": verdict.duplicated[:3],
            "unexpected": verdict.unexpected[:3],
            "missing_effects": verdict.missing_effects[:3],
            "stray_effects": verdict.stray_effects[:3],
            "wrong_outputs": verdict.wrong_outputs[:3],
            "approval_lost": approval.lost[:3],
            "approval_duplicated": approval.duplicated[:3],
            "approval_unexpected": approval.unexpected[:3],
            "approval_missing_effects": approval.missing_effects[:3],
            "approval_wrong_status": approval.wrong_status[:3],
            "approval_wrong_outputs": approval.wrong_outputs[:3],
            "signal_problems": signal_problems[:3],
        },
        "elapsed_s": round(time.time() - started, 1),
        "logs": str(log_dir),
    }
    return report


def _map_stream_problem(seen: Observed, planned: Planned | None, status: str | None) -> str | None:
    if planned is None or not planned.mapped:
        return None
    keys = frozenset(planned.item_keys)
    return map_stream_violation(
        seen.stream_events.get(planned.workflow_id, []), keys, status == "completed"
    )


def _is_item_message(body: bytes) -> bool:
    """A map item's command or result (evidence that replays reach the maps)."""
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(message, dict) and message.get("stepName") in MAP_ITEM_STEPS
