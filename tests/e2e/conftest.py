"""The whole system as processes, the way the quick start runs it: gateway, orchestrator, step
service and external system, each its own OS process on this test run's database and namespace."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aio_pika
import httpx
import pytest

from relayflow import supervisor
from relayflow.testing_system import free_port
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry
from tests.support import delete_topology, unique_name, wait_for

ROOT = Path(__file__).resolve().parents[2]
# Each service and the module it runs as (`python -m`), as the run command starts them: the core's
# and formSubmission's external system.
MODULES = {**supervisor.SERVICES, "external": "apps.form_submission.external"}
SERVICES = tuple(MODULES)


@dataclass
class System:
    """Handles on the running services; tests may kill and restart them."""

    env: dict[str, str]
    base_url: str
    namespace: str
    log_dir: Path
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    # What one service's environment adds to `env` (its own metrics port, say).
    service_env: dict[str, dict[str, str]] = field(default_factory=dict)

    async def start(self, service: str) -> None:
        log = (self.log_dir / f"{service}.log").open("ab")
        self.processes[service] = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            MODULES[service],
            cwd=ROOT,
            env={**self.env, **self.service_env.get(service, {})},
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )
        log.close()

    async def kill(self, service: str) -> None:
        """SIGKILL: no chance to finish, ack or clean up anything."""
        process = self.processes.pop(service)
        process.send_signal(signal.SIGKILL)
        await process.wait()

    async def terminate(self, service: str) -> int:
        """SIGTERM, and the exit code; one still running after 30 s is killed (no test leaves a
        process behind) and TimeoutError raised."""
        process = self.processes.pop(service)
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.send_signal(signal.SIGKILL)
            await process.wait()
            raise

    def logs(self, service: str) -> str:
        return (self.log_dir / f"{service}.log").read_text(errors="replace")

    async def wait_ready(self, client: httpx.AsyncClient) -> None:
        async def ready() -> bool:
            for name, process in self.processes.items():
                if process.returncode is not None:
                    raise AssertionError(f"{name} exited early:\n{self.logs(name)[-3000:]}")
            try:
                response = await client.get(f"{self.base_url}/readyz")
            except httpx.TransportError:
                return False
            return response.status_code == 200

        await wait_for(ready, timeout=60, interval=0.1)

    async def wait_consuming(self, queue: str, connection: aio_pika.abc.AbstractConnection) -> None:
        async def consuming() -> bool:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                return False
            count = declared.declaration_result.consumer_count or 0
            await channel.close()
            return count > 0

        await wait_for(consuming, timeout=60, interval=0.1)


@contextlib.asynccontextmanager
async def running_system(
    *,
    prefix: str,
    amqp_url: str,
    database_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
    log_dir: Path,
    env: dict[str, str],
    service_env: dict[str, dict[str, str]] | None = None,
) -> AsyncIterator[System]:
    """Every service as its own process on a fresh namespace, ready and consuming; stopped and
    its queues removed afterwards. `service_env`: what each service's environment adds."""
    namespace = unique_name(prefix)
    port = free_port()
    system = System(
        env={
            **os.environ,
            "AMQP_URL": amqp_url,
            "DATABASE_URL": database_url,
            "RELAYFLOW_NAMESPACE": namespace,
            "RELAYFLOW_GATEWAY_PORT": str(port),
            "RELAYFLOW_GATEWAY_HOST": "127.0.0.1",
            # Open on loopback: a key another test left in the run's database must not switch
            # these gateways to required (the modes are tested in test_gateway_auth.py).
            "RELAYFLOW_AUTH": "off",
            "PYTHONUNBUFFERED": "1",
            **env,
        },
        base_url=f"http://127.0.0.1:{port}",
        namespace=namespace,
        log_dir=log_dir,
        service_env=service_env or {},
    )
    for service in SERVICES:
        await system.start(service)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await system.wait_ready(client)
        topology = Topology(namespace)
        for queue in (
            topology.orchestrator_queue,
            topology.external_queue,
            topology.step_queue("finalize"),
        ):
            await system.wait_consuming(queue, amqp_connection)
        yield system
    finally:
        for name in list(system.processes):
            with contextlib.suppress(Exception):
                await system.terminate(name)
        await delete_topology(amqp_connection, Topology(namespace), registry.task_names())


@pytest.fixture(scope="module")
async def system(
    amqp_url: str,
    database_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[System]:
    env = {
        # Long enough to kill the orchestrator while workflows wait for their reply.
        "RELAYFLOW_EXTERNAL_REPLY_DELAY": "0.5",
        "RELAYFLOW_OUTBOX_STALE_AFTER": "1",
    }
    async with running_system(
        prefix="e",
        amqp_url=amqp_url,
        database_url=database_url,
        amqp_connection=amqp_connection,
        registry=registry,
        log_dir=tmp_path_factory.mktemp("logs"),
        env=env,
    ) as system:
        yield system
