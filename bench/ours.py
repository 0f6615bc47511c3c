"""relayflow itself, as the quick start runs it: gateway, orchestrator(s) and step service(s),
each its own process, driven over HTTP + SSE from the bench process."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Sequence
from pathlib import Path

from bench.driver import closed_loop
from bench.http import Connection, EventStream, HttpError
from bench.infra import Infra, Processes, unique, wait_until
from bench.measure import Phase, Sample, peak_mib
from bench.workflows import BY_LENGTH, LOCAL_BY_LENGTH
from relayflow.testing_system import free_port
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry

TERMINAL = frozenset({"workflow.completed", "workflow.failed", "workflow.cancelled"})
HOST = "127.0.0.1"


class Relayflow:
    """`orchestrators` replicas and `step_services` step-service processes behind one gateway,
    serving the bench's workflows and steps, and those of the application packages in `apps`
    (each with a `workflows` and a `steps` module, e.g. `apps.batch_import`). With `local`, its
    phases run the chains whose steps are local tasks."""

    def __init__(
        self,
        infra: Infra,
        log_dir: Path,
        *,
        orchestrators: int = 1,
        step_services: int = 1,
        name: str = "relayflow",
        extra_env: dict[str, str] | None = None,
        apps: Sequence[str] = (),
        local: bool = False,
    ) -> None:
        self.name = name
        # The phases' chains: plain tasks, or (`local`) every step a local task.
        self.by_length = LOCAL_BY_LENGTH if local else BY_LENGTH
        self.infra = infra
        self.orchestrators = orchestrators
        self.step_services = step_services
        self.port = free_port()
        self.namespace = unique("bench")
        self.database = unique("bench_rf_")
        self.topology = Topology(self.namespace)
        self.workflow_modules = ["bench.workflows", *(f"{app}.workflows" for app in apps)]
        self.step_modules = ["bench.steps", *(f"{app}.steps" for app in apps)]
        self.step_names = WorkflowRegistry.from_modules(self.workflow_modules).task_names()
        self.database_url = ""
        self.log_dir = log_dir
        self.extra_env = extra_env or {}
        self.processes: Processes | None = None
        self._memory: dict[str, float | None] = {}

    def roles(self) -> list[str]:
        orchestrators = [f"orchestrator{i + 1}" for i in range(self.orchestrators)]
        steps = [f"steps{i + 1}" for i in range(self.step_services)]
        return ["gateway", *orchestrators, *steps]

    async def start(self) -> None:
        self.database_url = database_url = await self.infra.create_database(self.database)
        env = {
            "AMQP_URL": self.infra.amqp_url,
            "DATABASE_URL": database_url,
            "RELAYFLOW_NAMESPACE": self.namespace,
            "RELAYFLOW_GATEWAY_HOST": HOST,
            "RELAYFLOW_GATEWAY_PORT": str(self.port),
            "RELAYFLOW_WORKFLOWS": ",".join(self.workflow_modules),
            "RELAYFLOW_STEP_MODULES": ",".join(self.step_modules),
            "RELAYFLOW_LOG_LEVEL": "WARNING",
            # One client opens 1000 streams and submits faster than a key's default rate limit.
            "RELAYFLOW_RATE_LIMIT": "0",
            "RELAYFLOW_MAX_STREAMS": "0",
            "PYTHONUNBUFFERED": "1",
            **self.extra_env,
        }
        self.processes = Processes(self.log_dir / self.name, {**os.environ, **env})
        # The gateway migrates the database first; the others then find it ready.
        await self.processes.python("gateway", "-m", "services.gateway")
        await wait_until(self._ready, timeout=60, what=f"{self.name} gateway")
        for role in self.roles()[1:]:
            if role.startswith("orch"):
                await self.processes.python(role, "-m", "services.orchestrator")
            else:
                await self.processes.python(role, "-m", "services.steps")
        queues = [self.topology.orchestrator_queue] + [
            self.topology.step_queue(step) for step in self.step_names
        ]
        want = {self.topology.orchestrator_queue: self.orchestrators}

        async def consuming() -> bool:
            assert self.processes is not None
            self.processes.check_alive()
            for queue in queues:
                if await self.infra.consumers(queue) < want.get(queue, self.step_services):
                    return False
            return True

        await wait_until(consuming, timeout=60, what=f"{self.name} consumers", interval=0.2)

    async def _ready(self) -> bool:
        assert self.processes is not None
        self.processes.check_alive()
        try:
            reader, writer = await asyncio.open_connection(HOST, self.port)
        except OSError:
            return False
        writer.write(f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        head = await reader.read(64)
        writer.close()
        return b" 200 " in head

    def pids(self) -> dict[str, int]:
        return self.processes.pids() if self.processes is not None else {}

    async def run(self, steps: int, n: int, concurrency: int) -> Phase:
        return await self.run_workflow(self.by_length[steps], steps, n, concurrency)

    async def run_workflow(self, workflow: str, steps: int, n: int, concurrency: int) -> Phase:
        """`n` runs of `workflow` (input `{"n": i}`; `steps` is what the phase is per run)."""
        connections = [Connection(HOST, self.port) for _ in range(concurrency)]
        free = list(connections)
        loop = asyncio.get_running_loop()

        async def one(i: int) -> Sample:
            connection = free.pop()
            try:
                t0, sent = loop.time(), time.time_ns()
                response = await connection.post_json(f"/workflows/{workflow}", {"n": i})
                accepted, accepted_at = loop.time(), time.time_ns()
                if response.status != 202:
                    raise HttpError(f"submit answered {response.status}: {response.body[:200]!r}")
                workflow_id = response.text_field("workflowId")
            finally:
                free.append(connection)
            await self.completion(workflow_id)
            latency, done = loop.time() - t0, time.time_ns()
            trace = (workflow_id, sent, accepted_at, done)
            return Sample(latency=latency, accept=accepted - t0, trace=trace)

        try:
            roles = {pid: role for role, pid in self.pids().items()}
            return await closed_loop(steps, n, concurrency, one, roles=roles)
        finally:
            for connection in connections:
                await connection.close()

    async def submit(self, workflow: str, body: object) -> str:
        """Start one workflow; its id."""
        connection = Connection(HOST, self.port)
        try:
            response = await connection.post_json(f"/workflows/{workflow}", body)
        finally:
            await connection.close()
        if response.status != 202:
            raise HttpError(f"submit answered {response.status}: {response.body[:200]!r}")
        workflow_id = response.text_field("workflowId")
        return workflow_id

    async def completion(self, workflow_id: str, timeout: float = 60.0) -> None:
        """Wait on the workflow's SSE stream for its end; raise unless it completed."""
        stream = EventStream(HOST, self.port, f"/workflows/{workflow_id}/events")
        try:
            await stream.open()
            last = await stream.read_until(TERMINAL, timeout=timeout)
        finally:
            await stream.close()
        if last != "workflow.completed":
            raise HttpError(f"{workflow_id} ended with {last}")

    def memory(self) -> dict[str, float | None]:
        if self.processes is not None:
            self._memory = {role: peak_mib([pid]) for role, pid in self.pids().items()}
        return dict(self._memory)

    async def stop(self) -> None:
        self.memory()
        if self.processes is not None:
            await self.processes.stop()
            self.processes = None
        queues = [*self.topology.queue_bindings(self.step_names), self.topology.dead_letter_queue]
        exchanges = [
            self.topology.exchange,
            self.topology.events_exchange,
            self.topology.dead_letter_exchange,
        ]
        await self.infra.delete_amqp(queues, exchanges)
        await self.infra.drop_database(self.database)
