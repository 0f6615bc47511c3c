"""The run command heals itself: with `relayflow-run` up and workflows in flight, SIGKILL the
orchestrator and the step service (as an operator's OOM killer would); the supervisor starts them
again and every accepted workflow completes, with nobody touching anything."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from pathlib import Path

import aio_pika
import httpx

from relayflow.testing_system import free_port
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry
from tests.e2e.conftest import ROOT
from tests.support import delete_topology, unique_name, wait_for

FORM = {"name": "Ada Lovelace", "email": "ada@example.com", "message": "Hello there"}


class Run:
    """`relayflow-run` as a process, its output collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        assert process.stdout is not None
        self._reader = asyncio.create_task(self._read(process.stdout))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode(errors="replace").rstrip())

    def pids(self, service: str) -> list[int]:
        """The pids the supervisor started `service` as, in order."""
        pattern = re.compile(rf"run\s+\| (?:re)?started {service} \(pid (\d+)\)")
        return [int(m.group(1)) for line in self.lines if (m := pattern.search(line))]

    async def stop(self) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.wait_for(self.process.wait(), 60)
        finally:
            if self.process.returncode is None:
                self.process.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)
        return code


async def test_killed_services_come_back_and_every_accepted_workflow_completes(
    amqp_url: str,
    database_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
) -> None:
    namespace, port = unique_name("heal"), free_port()
    env = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "DATABASE_URL": database_url,
        "RELAYFLOW_NAMESPACE": namespace,
        "RELAYFLOW_GATEWAY_HOST": "127.0.0.1",
        "RELAYFLOW_GATEWAY_PORT": str(port),
        "RELAYFLOW_AUTH": "off",
        "RELAYFLOW_EXTERNAL_REPLY_DELAY": "0.3",
        "RELAYFLOW_OUTBOX_STALE_AFTER": "1",
        # The default metrics ports (9101…) may be taken by another run on this machine.
        "RELAYFLOW_METRICS_PORT": "0",
        "NO_COLOR": "1",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relayflow.supervisor",
        cwd=Path(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    run = Run(process)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=10) as client:

            async def ready() -> bool:
                assert process.returncode is None, "\n".join(run.lines[-40:])
                try:
                    return (await client.get(f"{base}/readyz")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_for(ready, timeout=60, what="the run's gateway ready")
            accepted = []
            for _ in range(30):
                answer = await client.post(f"{base}/submit", json=FORM)
                assert answer.status_code == 202, answer.text
                accepted.append(answer.json()["workflowId"])
            # Mid-flight: the replies are delayed, so these workflows are still running.
            for service in ("orchestrator", "steps"):
                os.kill(run.pids(service)[-1], signal.SIGKILL)

            async def restarted() -> bool:
                return all(len(run.pids(s)) == 2 for s in ("orchestrator", "steps"))

            await wait_for(restarted, timeout=30, what="both services started again")

            async def all_completed() -> bool:
                assert process.returncode is None, "\n".join(run.lines[-40:])
                statuses = []
                for workflow_id in accepted:
                    answer = await client.get(f"{base}/workflows/{workflow_id}")
                    statuses.append(
                        answer.json().get("status") if answer.status_code == 200 else None
                    )
                return all(status == "completed" for status in statuses)

            await wait_for(all_completed, timeout=90, interval=0.5, what="every workflow completed")
        assert any(
            "orchestrator exited unexpectedly with code -9; restarting" in x for x in run.lines
        )
        assert await run.stop() == 0, "\n".join(run.lines[-40:])
    finally:
        if process.returncode is None:
            await run.stop()
        await delete_topology(amqp_connection, Topology(namespace), registry.task_names())
