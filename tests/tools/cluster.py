"""The whole system as processes on a private broker and database, with a fault proxy on every
link from a service to RabbitMQ and to PostgreSQL.

Like `tests/e2e`'s `System`, but each service process reaches the broker and the database
through its own pair of `FaultProxy`s, so a test (or the chaos suite) can cut, black-hole or slow
one service's links, and the broker and database are private instances it may restart. The
harness itself talks to both directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import httpx

from relayflow import supervisor
from relayflow.amqp.connection import connect_once
from relayflow.db import create_pool, migrate
from relayflow.errors import ServiceUnavailableError
from relayflow.topology import Topology
from tests.support import wait_for
from tests.tools.fault_proxy import FaultProxy
from tests.tools.ledger import LEDGER_DDL, STEP_NAMES, WORKFLOW_NAME
from tests.tools.private_services import PrivatePostgres, PrivateRabbit, free_low_port

ROOT = Path(__file__).resolve().parents[2]
# Each service and the module it runs as (`python -m`), as the run command starts them: the core's
# and formSubmission's external system.
# The workflows the services load here.
WORKFLOW_MODULES = (
    "apps.form_submission.workflows",
    "tests.tools.ledger",
    "tests.tools.ledger_map",
    "apps.batch_import.workflows",
)
STEP_MODULES = (
    "apps.form_submission.steps",
    "tests.tools.ledger",
    "tests.tools.ledger_map",
    "apps.batch_import.steps",
)
MODULES = {**supervisor.SERVICES, "external": "apps.form_submission.external"}
SERVICES = tuple(MODULES)
TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Links:
    """One service's proxied links: to each broker node (`amqp` is the first node's, the only
    one on a single broker) and to the database."""

    amqp: FaultProxy
    db: FaultProxy
    nodes: list[FaultProxy] = field(default_factory=list)

    def connected_node(self) -> int | None:
        """The broker node this service holds a connection to (by the proxies' open links)."""
        held = [i for i, proxy in enumerate(self.nodes) if proxy.open_connections]
        return held[0] if len(held) == 1 else None


@dataclass
class Cluster:
    rabbit: PrivateRabbit
    postgres: PrivatePostgres
    database: str
    log_dir: Path
    namespace: str = field(default_factory=lambda: f"f{uuid.uuid4().hex[:10]}")
    gateway_port: int = field(default_factory=free_low_port)
    extra_env: dict[str, str] = field(default_factory=dict)
    # The broker vhost, and each service's user as "name:password" (default: guest).
    vhost: str = "/"
    credentials: dict[str, str] = field(default_factory=dict)
    links: dict[str, Links] = field(default_factory=dict)
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    pool: asyncpg.Pool[Any] | None = None
    # The nodes of a broker cluster (`tests.tools.rabbit_cluster`); empty: `rabbit` alone.
    brokers: Sequence[PrivateRabbit] = ()

    # -- addresses -------------------------------------------------------------------------

    @property
    def database_url(self) -> str:
        """Direct, for the harness (not through a proxy)."""
        return self.postgres.url(self.database)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)

    @property
    def _vhost_path(self) -> str:
        return "" if self.vhost == "/" else urllib.parse.quote(self.vhost, safe="")

    @property
    def nodes(self) -> Sequence[PrivateRabbit]:
        return self.brokers or (self.rabbit,)

    @property
    def amqp_url(self) -> str:
        """Direct, as guest, for the harness (the first node)."""
        return self.rabbit.url + self._vhost_path

    @property
    def amqp_urls(self) -> str:
        """Every node that answers (not killed or paused), direct, as guest, comma-separated
        (`AMQP_URL`'s form)."""
        nodes = [node for node in self.nodes if node.answering] or self.nodes
        return ",".join(node.url + self._vhost_path for node in nodes)

    def db(self) -> asyncpg.Pool[Any]:
        assert self.pool is not None, "Cluster.setup() has not run"
        return self.pool

    def env_for(self, service: str) -> dict[str, str]:
        links = self.links[service]
        user = self.credentials.get(service, "guest:guest")
        return {
            **os.environ,
            "AMQP_URL": ",".join(
                f"amqp://{user}@127.0.0.1:{proxy.port}/{self._vhost_path}" for proxy in links.nodes
            ),
            "DATABASE_URL": f"postgresql://postgres@127.0.0.1:{links.db.port}/{self.database}",
            "RELAYFLOW_NAMESPACE": self.namespace,
            "RELAYFLOW_GATEWAY_HOST": "127.0.0.1",
            "RELAYFLOW_GATEWAY_PORT": str(self.gateway_port),
            "RELAYFLOW_WORKFLOWS": ",".join(WORKFLOW_MODULES),
            "RELAYFLOW_STEP_MODULES": ",".join(STEP_MODULES),
            "RELAYFLOW_OUTBOX_STALE_AFTER": "1",
            "RELAYFLOW_STEP_LEASE_SECONDS": "3",
            "RELAYFLOW_EXTERNAL_REPLY_DELAY": "0.2",
            "RELAYFLOW_GATEWAY_CATCH_UP_INTERVAL": "2",
            "RELAYFLOW_DB_POOL_MAX": "6",
            # The chaos workload follows every workflow on its own stream, from one address.
            "RELAYFLOW_RATE_LIMIT": "0",
            "RELAYFLOW_MAX_STREAMS": "0",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }

    # -- lifecycle -------------------------------------------------------------------------

    async def setup(self) -> None:
        """Database migrated with the ledger, and a proxy pair for every service."""
        await self.postgres.create_database(self.database)
        conn = await asyncpg.connect(self.database_url)
        try:
            await migrate(conn)
            await conn.execute(LEDGER_DDL)
        finally:
            await conn.close()
        self.pool = await create_pool(self.database_url, min_size=1, max_size=4)
        for service in SERVICES:
            nodes = [
                FaultProxy(node.address, name=f"{service}->amqp{'' if i == 0 else i}")
                for i, node in enumerate(self.nodes)
            ]
            db = FaultProxy(self.postgres.address, name=f"{service}->db")
            for proxy in [*nodes, db]:
                await proxy.start()
            self.links[service] = Links(amqp=nodes[0], db=db, nodes=nodes)

    @contextlib.asynccontextmanager
    async def running(self, *, start: bool = True) -> AsyncIterator[None]:
        """Set up, start every service (unless `start` is False: the caller then adds to
        `extra_env` and calls `start_all`), and tear everything down at the end."""
        try:
            await self.setup()
            if start:
                async with httpx.AsyncClient(timeout=10) as client:
                    await self.start_all(client)
            yield
        finally:
            await self.teardown()

    async def start(self, service: str) -> None:
        log = (self.log_dir / f"{service}.log").open("ab")
        self.processes[service] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            MODULES[service],
            cwd=ROOT,
            env=self.env_for(service),
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        log.close()

    async def start_all(self, client: httpx.AsyncClient) -> None:
        for service in SERVICES:
            await self.start(service)
        await self.wait_ready(client)

    async def kill(self, service: str) -> None:
        """SIGKILL: no chance to finish, ack or clean up anything."""
        process = self.processes.pop(service)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()

    async def terminate(self, service: str, timeout: float = 30) -> int:
        """SIGTERM, and the exit code. A process still running after `timeout` is killed (so that
        no test leaves one behind) and TimeoutError raised."""
        process = self.processes.pop(service)
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGKILL)
            await process.wait()
            raise

    async def teardown(self) -> None:
        for name in list(self.processes):
            with contextlib.suppress(Exception):
                await self.terminate(name, timeout=20)
        for links in self.links.values():
            for proxy in [*links.nodes, links.db]:
                await proxy.stop()
        if self.pool is not None:
            await self.pool.close()

    def logs(self, service: str) -> str:
        path = self.log_dir / f"{service}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.returncode is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode}:\n{self.logs(name)[-3000:]}"
                )

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float = 90) -> None:
        """The gateway answers /readyz and every work queue has its consumer."""

        async def ready() -> bool:
            self.check_alive()
            if "gateway" in self.processes:
                try:
                    response = await client.get(f"{self.base_url}/readyz")
                except httpx.TransportError:
                    return False
                if response.status_code != 200:
                    return False
            return await self.consumers_ready()

        await wait_for(ready, timeout=timeout, interval=0.2, what="services ready")

    async def queue_counts(self) -> dict[str, tuple[int, int]]:
        """(messages ready, consumers) per work queue of this namespace, declared passively."""
        topology = self.topology
        names = [
            topology.orchestrator_queue,
            topology.external_queue,
            topology.dead_letter_queue,
            *(
                topology.step_queue(s)
                for s in (*STEP_NAMES, "validate", "persist", "publishToMQ", "finalize")
            ),
        ]
        counts: dict[str, tuple[int, int]] = {}
        connection = await connect_once(self.amqp_urls, timeout=5)
        try:
            for name in names:
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

    async def consumers_ready(self) -> bool:
        try:
            counts = await self.queue_counts()
        except (OSError, aio_pika.exceptions.AMQPError, ServiceUnavailableError):
            return False
        wanted: list[str] = []
        topology = self.topology
        if "orchestrator" in self.processes:
            wanted.append(topology.orchestrator_queue)
        if "steps" in self.processes:
            wanted.extend(topology.step_queue(s) for s in STEP_NAMES)
        if "external" in self.processes:
            wanted.append(topology.external_queue)
        return all(counts.get(name, (0, 0))[1] > 0 for name in wanted)

    # -- driving and observing -------------------------------------------------------------

    async def submit(self, client: httpx.AsyncClient, tag: str) -> str | None:
        """Start a ledger workflow through the gateway; its id if accepted (202), else None."""
        try:
            response = await client.post(
                f"{self.base_url}/workflows/{WORKFLOW_NAME}",
                json={"tag": tag},
                headers={"Idempotency-Key": tag},
            )
        except httpx.TransportError:
            return None
        if response.status_code != 202:
            return None
        workflow_id: str = response.json()["workflowId"]
        return workflow_id

    async def submit_many(self, client: httpx.AsyncClient, count: int, prefix: str) -> list[str]:
        answers = await asyncio.gather(
            *(self.submit(client, f"{prefix}-{i}-{uuid.uuid4().hex[:6]}") for i in range(count))
        )
        return [answer for answer in answers if answer is not None]

    async def statuses(self, ids: Sequence[str]) -> dict[str, str]:
        rows = await self.db().fetch("SELECT id, status FROM workflows WHERE id = ANY($1)", ids)
        return {row["id"]: row["status"] for row in rows}

    async def wait_terminal(self, ids: Sequence[str], timeout: float = 120) -> dict[str, str]:
        """Every workflow in `ids` finished; returns their statuses."""
        last: dict[str, str] = {}

        async def done() -> bool:
            nonlocal last
            self.check_alive()
            last = await self.statuses(ids)
            return len(last) == len(ids) and all(s in TERMINAL for s in last.values())

        try:
            await wait_for(done, timeout=timeout, interval=0.25, what="all workflows terminal")
        except AssertionError:
            stuck = {i: last.get(i, "<absent>") for i in ids if last.get(i) not in TERMINAL}
            raise AssertionError(
                f"{len(stuck)} of {len(ids)} workflow(s) not finished: {list(stuck.items())[:5]}"
            ) from None
        return last

    async def ledger(self, ids: Iterable[str]) -> dict[tuple[str, str], int]:
        rows = await self.db().fetch(
            "SELECT workflow_id, step_name, effects FROM fault_ledger WHERE workflow_id = ANY($1)",
            list(ids),
        )
        return {(row["workflow_id"], row["step_name"]): row["effects"] for row in rows}

    async def assert_exactly_once(self, ids: Sequence[str], timeout: float = 120) -> None:
        """Every workflow completed and every step's effect was committed exactly once."""
        statuses = await self.wait_terminal(ids, timeout=timeout)
        failed = {i: s for i, s in statuses.items() if s != "completed"}
        errors = []
        if failed:
            rows = await self.db().fetch(
                "SELECT id, status, error FROM workflows WHERE id = ANY($1)", list(failed)
            )
            errors = [dict(row) for row in rows[:3]]
        assert not failed, f"{len(failed)} workflow(s) did not complete: {errors}"
        ledger = await self.ledger(ids)
        expected = {(i, step) for i in ids for step in STEP_NAMES}
        assert set(ledger) == expected, f"missing effects: {sorted(expected - set(ledger))[:5]}"
        duplicated = {key: n for key, n in ledger.items() if n != 1}
        assert not duplicated, f"duplicated effects: {duplicated}"

    async def wait_in_flight(self, least: int = 1, step: str | None = None) -> None:
        """Until at least `least` slowed ledger-step bodies (of `step`, or any) hold their
        written effect in an open transaction.

        A quick or transactional step keeps its claim uncommitted until its outcome is recorded,
        so `step_invocations` cannot show it; PostgreSQL's own view of the step service's
        sessions can: a slowed body's last statement is its `ledger-in-flight:<step>` marker."""
        pattern = f"%ledger-in-flight:{step or ''}%"

        async def reached() -> bool:
            count = await self.db().fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND state = 'idle in transaction' AND query LIKE $1",
                pattern,
            )
            return bool(count >= least)

        await wait_for(reached, timeout=60, interval=0.02, what=f"{least} ledger bodies in flight")

    async def wait_step_state(self, status: str, step: str | None = None, least: int = 1) -> None:
        """Until at least `least` ledger-step invocations are in `status`."""

        async def reached() -> bool:
            count = await self.db().fetchval(
                "SELECT count(*) FROM step_invocations WHERE status = $1"
                " AND ($2::text IS NULL OR step_name = $2)",
                status,
                step,
            )
            return bool(count >= least)

        await wait_for(reached, timeout=60, interval=0.05, what=f"{least} invocation(s) {status}")


@contextlib.asynccontextmanager
async def running_cluster(
    rabbit: PrivateRabbit,
    postgres: PrivatePostgres,
    log_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    start: bool = True,
    namespace: str | None = None,
    vhost: str = "/",
    credentials: dict[str, str] | None = None,
    brokers: Sequence[PrivateRabbit] = (),
) -> AsyncIterator[Cluster]:
    """A fresh database and namespace on the private instances, with every service running;
    with `brokers` (a cluster's nodes, `rabbit` among them), each service is given all."""
    cluster = Cluster(
        rabbit=rabbit,
        brokers=brokers,
        postgres=postgres,
        database=f"faults_{uuid.uuid4().hex[:10]}",
        log_dir=log_dir,
        extra_env=dict(extra_env or {}),
        vhost=vhost,
        credentials=dict(credentials or {}),
    )
    if namespace is not None:
        cluster.namespace = namespace
    async with cluster.running(start=start):
        yield cluster
