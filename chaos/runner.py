"""One chaos run: start everything privately, drive the workload, inject faults, check.

The services run as processes (`tests.tools.cluster`) on a private RabbitMQ node and a private
PostgreSQL cluster (`tests.tools.private_services`), each service behind its own fault proxies;
the machine's shared broker and database are never touched. The workload is `ledgerFlow`
(`tests.tools.ledger`): four transactional steps, each counting its committed side effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from aio_pika.abc import AbstractIncomingMessage

from chaos.checks import History, count_by, judge, stream_violation
from relayflow.contracts import workflow_id_for_key
from relayflow.topology import RESULT_KEY, START_KEY, step_key
from tests.support import read_sse
from tests.tools.cluster import Cluster, running_cluster
from tests.tools.ledger import STEP_NAMES, WORKFLOW_NAME
from tests.tools.private_services import PrivatePostgres, PrivateRabbit

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


@dataclass
class Observed:
    attempted: set[str] = field(default_factory=set)
    accepted: set[str] = field(default_factory=set)
    faults: list[tuple[float, str]] = field(default_factory=list)
    malformed: int = 0
    streams: dict[str, list[int]] = field(default_factory=dict)
    stream_ended: dict[str, bool] = field(default_factory=dict)
    reconnects: dict[str, int] = field(default_factory=dict)
    # The workflow accepted last: most likely still running.
    latest: str | None = None
    captured: list[tuple[str, aio_pika.Message]] = field(default_factory=list)


class Chaos:
    def __init__(
        self, cluster: Cluster, rabbit: PrivateRabbit, postgres: PrivatePostgres, config: Config
    ) -> None:
        self.cluster = cluster
        self.rabbit = rabbit
        self.postgres = postgres
        self.config = config
        self.rng = random.Random(config.seed)  # noqa: S311 - chaos, not cryptography
        self.seen = Observed()
        self.subscribers: list[asyncio.Task[None]] = []
        # Set once a subscriber's stream has delivered an event.
        self.streaming: dict[str, asyncio.Event] = {}

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
        key = f"chaos-{self.config.seed}-{index}-{uuid.uuid4().hex[:8]}"
        self.seen.attempted.add(workflow_id_for_key(WORKFLOW_NAME, key))
        await self._submit(client, key, index)

    async def _submit(self, client: httpx.AsyncClient, key: str, index: int) -> None:
        for attempt in range(60):
            try:
                response = await client.post(
                    f"{self.cluster.base_url}/workflows/{WORKFLOW_NAME}",
                    json={"tag": key},
                    headers={"Idempotency-Key": key},
                )
            except httpx.TransportError:
                response = None
            if response is not None and response.status_code == 202:
                workflow_id: str = response.json()["workflowId"]
                self.seen.accepted.add(workflow_id)
                self.seen.latest = workflow_id
                if index % max(1, self.config.workflows // self.config.subscribers) == 0:
                    self.subscribers.append(
                        asyncio.create_task(self.subscribe(client, workflow_id))
                    )
                return
            await asyncio.sleep(min(0.2 * 2**attempt, 2.0))

    async def subscribe(self, client: httpx.AsyncClient, workflow_id: str) -> None:
        """Follow a workflow's events, reconnecting with Last-Event-ID whenever the stream
        breaks (the gateway is killed under it), until its terminal event."""
        seqs = self.seen.streams.setdefault(workflow_id, [])
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
                            self.streaming.setdefault(workflow_id, asyncio.Event()).set()
                        if event.get("event") in (
                            "workflow.completed",
                            "workflow.failed",
                            "workflow.cancelled",
                        ):
                            self.seen.stream_ended[workflow_id] = True
                            return
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass
            await asyncio.sleep(0.5)

    # -- capturing messages to duplicate and reorder ---------------------------------------

    async def capture(self, connection: aio_pika.abc.AbstractConnection) -> None:
        channel = await connection.channel()
        queue = await channel.declare_queue("", exclusive=True, auto_delete=True)
        exchange = self.cluster.topology.exchange
        for key in (START_KEY, RESULT_KEY, *(step_key(s) for s in STEP_NAMES)):
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
        }
        # Let the first workflows get going before the first fault.
        await asyncio.sleep(min(3.0, self.config.duration / 10))
        while loop.time() < end:
            fault = self.rng.choice(self.config.faults)
            log.info("fault: %s", fault)
            self.seen.faults.append((time.time(), fault))
            await actions[fault]()
            await asyncio.sleep(self.rng.uniform(1.0, 4.0))

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

    async def _cut(self, link: str) -> None:
        candidates = [
            s
            for s in self.cluster.links
            if not (link == "amqp" and s == "orchestrator" and self.config.spare_orchestrator_amqp)
        ]
        for service in self.rng.sample(candidates, k=self.rng.randint(1, len(candidates))):
            await getattr(self.cluster.links[service], link).cut()

    async def _publisher(
        self,
    ) -> tuple[aio_pika.abc.AbstractConnection, aio_pika.abc.AbstractExchange]:
        connection = await aio_pika.connect(self.rabbit.url, timeout=5)
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
        keys = [START_KEY, RESULT_KEY, *(step_key(s) for s in STEP_NAMES)]
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
            if len(statuses) == len(accepted) and all(
                s in ("completed", "failed", "cancelled") for s in statuses.values()
            ):
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
            outbox = await self.cluster.db().fetchval("SELECT count(*) FROM outbox")
            dead = counts.pop(self.cluster.topology.dead_letter_queue, (0, 0))[0]
            busy = {q: c[0] for q, c in counts.items() if c[0]}
            if (not busy and outbox == 0) or loop.time() > deadline:
                return {"busy_queues": busy, "outbox": outbox, "dead_letters": dead}
            await asyncio.sleep(0.5)


async def _nothing() -> AsyncIterator[dict[str, Any]]:
    return
    yield


async def run(config: Config) -> dict[str, Any]:
    """The whole run; returns the report (its `ok` says whether every check passed)."""
    started = time.time()
    log_dir = Path(tempfile.mkdtemp(prefix="relayflow-chaos-logs-"))
    env = {
        "RELAYFLOW_LEDGER_DELAY": str(config.step_delay),
        "RELAYFLOW_LOG_LEVEL": "WARNING",
    }
    async with (
        PrivateRabbit() as rabbit,
        PrivatePostgres() as postgres,
        running_cluster(rabbit, postgres, log_dir, extra_env=env) as cluster,
        httpx.AsyncClient(timeout=10) as client,
    ):
        chaos = Chaos(cluster, rabbit, postgres, config)
        observer = await aio_pika.connect_robust(rabbit.url)
        try:
            await chaos.capture(observer)
            faults = asyncio.create_task(chaos.inject_faults(client))
            await chaos.submit_all(client)
            await faults
            last_fault = chaos.seen.faults[-1][0] if chaos.seen.faults else started
            await chaos.submit_wave(client)
            last_completion = await chaos.settle(client)
            # Streams still open end by themselves after their workflow's terminal event.
            if chaos.subscribers:
                _, late = await asyncio.wait(chaos.subscribers, timeout=30)
                for task in late:
                    task.cancel()
            end_state = await chaos.quiescent()
            statuses = {
                row["id"]: row["status"]
                for row in await cluster.db().fetch("SELECT id, status FROM workflows")
            }
            last_seq = {
                row["id"]: row["last_seq"]
                for row in await cluster.db().fetch("SELECT id, last_seq FROM workflows")
            }
            effects = await cluster.ledger(statuses)
        finally:
            await observer.close()
    verdict = judge(
        History(
            attempted=frozenset(chaos.seen.attempted),
            accepted=frozenset(chaos.seen.accepted),
            statuses=statuses,
            effects=effects,
            steps=STEP_NAMES,
        )
    )
    stream_problems = {
        wf: problem
        for wf, seqs in chaos.seen.streams.items()
        if (
            problem := stream_violation(
                seqs, last_seq.get(wf, 0), chaos.seen.stream_ended.get(wf, False)
            )
        )
    }
    checks = {
        "lost": len(verdict.lost) == 0,
        "duplicated": len(verdict.duplicated) == 0,
        "unexpected": len(verdict.unexpected) == 0,
        "missing_effects": len(verdict.missing_effects) == 0,
        "queues_drained": not end_state["busy_queues"],
        "outbox_empty": end_state["outbox"] == 0,
        "dead_letters": end_state["dead_letters"] == chaos.seen.malformed,
        "sse": not stream_problems,
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
        "unacknowledged_started": verdict.unacknowledged_started,
        "queues_drained": checks["queues_drained"],
        "busy_queues": end_state["busy_queues"],
        "outbox": end_state["outbox"],
        "dead_letters": end_state["dead_letters"],
        "malformed_injected": chaos.seen.malformed,
        "sse_subscribers": len(chaos.seen.streams),
        "sse_reconnected": sum(1 for n in chaos.seen.reconnects.values() if n),
        "sse_ok": checks["sse"],
        "sse_problems": dict(list(stream_problems.items())[:3]),
        "faults": count_by(f for _, f in chaos.seen.faults),
        "last_fault_to_last_completion_s": (
            round(last_completion - last_fault, 2)
            if last_completion is not None
            else None
        ),
        "failed_checks": [name for name, passed in checks.items() if not passed],
        "examples": {
            "lost": verdict.lost[:3],
            "duplicated": verdict.duplicated[:3],
            "unexpected": verdict.unexpected[:3],
        },
        "elapsed_s": round(time.time() - started, 1),
        "logs": str(log_dir),
    }
    return report
