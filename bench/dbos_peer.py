"""The DBOS Transact peer: five `@DBOS.step`s in one `@DBOS.workflow`, on the same PostgreSQL,
in two worker processes so that both cores are used (see `bench.peers.dbos_worker`).

- `dbos`: each process runs its half of the workflows directly, in threads, the way a DBOS app
  calls a workflow from its own request handlers; latency is measured in those processes.
- `dbos-queue`: this process enqueues with `DBOSClient` onto a DBOS queue (polled every 10 ms)
  that both processes serve; completion is read by one poller of `dbos.workflow_status` every
  2 ms for all waiting threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from bench.infra import ROOT, Infra, unique
from bench.measure import CpuMeter, Phase, Sample, peak_mib
from bench.threaded import DonePoller, threaded_closed_loop

if TYPE_CHECKING:  # dbos is the bench extra's, imported when a peer starts
    from dbos import DBOSClient, EnqueueOptions

PROCESSES = 2
QUEUE_POLL_SECONDS = 0.01
WORKFLOW_NAME = "bench_chain"
DONE_QUERY = (
    "SELECT workflow_uuid FROM dbos.workflow_status WHERE workflow_uuid = ANY(%s) "
    "AND status IN ('SUCCESS', 'ERROR')"
)


class DbosPeer:
    def __init__(self, infra: Infra, log_dir: Path, *, queued: bool) -> None:
        self.name = "dbos-queue" if queued else "dbos"
        self.infra = infra
        self.queued = queued
        self.log_dir = log_dir / self.name
        self.database = unique("bench_dbos_")
        self.queue = unique("bench_q_")
        self.workers: list[asyncio.subprocess.Process] = []
        self.client: DBOSClient | None = None
        self.poller: DonePoller | None = None
        self._memory: dict[str, float | None] = {}

    async def start(self) -> None:
        url = await self.infra.create_database(self.database)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        # One after the other: the first creates DBOS's schema.
        for index in range(PROCESSES):
            with (self.log_dir / f"worker{index + 1}.log").open("ab") as log:
                worker = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bench.peers.dbos_worker",
                    url, self.queue, str(QUEUE_POLL_SECONDS),
                    cwd=ROOT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    start_new_session=True,
                )  # fmt: skip
            self.workers.append(worker)
            line = await self._read(worker, timeout=90)
            if line != "READY":
                raise RuntimeError(f"dbos worker {index + 1} did not start: {line!r}")
        if self.queued:
            from dbos import DBOSClient

            self.client = await asyncio.to_thread(DBOSClient, system_database_url=url)
            self.poller = await asyncio.to_thread(DonePoller, url, DONE_QUERY)

    async def _read(self, worker: asyncio.subprocess.Process, timeout: float) -> str:
        assert worker.stdout is not None
        async with asyncio.timeout(timeout):
            line = await worker.stdout.readline()
        if not line:
            raise RuntimeError(f"dbos worker exited ({worker.returncode}); see {self.log_dir}")
        return line.decode().strip()

    async def run(self, steps: int, n: int, concurrency: int) -> Phase:
        if self.queued:
            return await asyncio.to_thread(
                threaded_closed_loop,
                steps,
                n,
                concurrency,
                self._enqueue_one(steps),
                roles=self._roles(),
            )
        return await self._run_direct(steps, n, concurrency)

    def _roles(self) -> dict[int, str]:
        return {worker.pid: "dbos" for worker in self.workers}

    def _enqueue_one(self, steps: int) -> Callable[[int], Sample]:
        client, poller = self.client, self.poller
        assert client is not None
        assert poller is not None
        options: EnqueueOptions = {"workflow_name": WORKFLOW_NAME, "queue_name": self.queue}

        def one(i: int) -> Sample:
            workflow_id = uuid.uuid4().hex
            t0 = time.perf_counter()
            client.enqueue({**options, "workflow_id": workflow_id}, steps, i)
            poller.wait(workflow_id)
            return Sample(latency=time.perf_counter() - t0)

        return one

    async def _run_direct(self, steps: int, n: int, concurrency: int) -> Phase:
        """Each process runs its share of `n` with its share of `concurrency` in flight."""
        shares = []
        for index in range(min(PROCESSES, concurrency)):
            share_n = n // PROCESSES + (1 if index < n % PROCESSES else 0)
            share_c = concurrency // PROCESSES + (1 if index < concurrency % PROCESSES else 0)
            if concurrency < PROCESSES:
                share_n = n
            shares.append((self.workers[index], share_n, share_c))
        loop = asyncio.get_running_loop()
        meter, t0 = CpuMeter(self._roles()), loop.time()
        for worker, share_n, share_c in shares:
            assert worker.stdin is not None
            worker.stdin.write(f"RUN {steps} {share_n} {share_c}\n".encode())
            await worker.stdin.drain()
        lines = await asyncio.gather(*(self._read(w, timeout=600) for w, _, _ in shares))
        wall = loop.time() - t0
        cpu, by_role = meter.read()
        samples: list[Sample] = []
        errors = 0
        for line in lines:
            if not line.startswith("RESULT "):
                raise RuntimeError(f"unexpected answer from a dbos worker: {line[:200]!r}")
            result = orjson.loads(line.removeprefix("RESULT "))
            samples.extend(Sample(latency=v) for v in result["latencies"])
            errors += int(result["errors"])
        if errors:
            print(f"  ! {errors} workflow(s) failed; see {self.log_dir}")
        return Phase(steps, n, concurrency, wall, cpu, samples, errors, by_role)

    def memory(self) -> dict[str, float | None]:
        if self.workers and all(w.returncode is None for w in self.workers):
            self._memory = {"workers (2 processes)": peak_mib(w.pid for w in self.workers)}
        return dict(self._memory)

    async def stop(self) -> None:
        self.memory()
        for worker in self.workers:
            if worker.stdin is not None and worker.returncode is None:
                with contextlib.suppress(ConnectionError):
                    worker.stdin.write(b"QUIT\n")
                    await worker.stdin.drain()
                    worker.stdin.close()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.wait(), 20)
            except TimeoutError:
                worker.kill()
                await worker.wait()
        self.workers = []
        if self.poller is not None:
            await asyncio.to_thread(self.poller.close)
            self.poller = None
        if self.client is not None:
            await asyncio.to_thread(self.client.destroy)
            self.client = None
        await self.infra.drop_database(self.database)
