"""The Celery peer: a chain of five tasks, a prefork worker with concurrency 2, on the same
RabbitMQ; results in PostgreSQL (`db+postgresql://`, the durable backend) or `rpc://` (results
as messages, nothing stored: the bound of what Celery can do here).

Workflows are started from this process (`chain.apply_async`) and awaited in a pool of threads:
with `rpc://` by `AsyncResult.get` of the chain's last task (the links before it are sent with
`ignore_result`: nothing is stored or sent back but the outcome), with PostgreSQL by one
poller for all threads that reads `celery_taskmeta` every 2 ms — faster and cheaper than
`AsyncResult.get(interval=…)` per thread, so Celery is not handicapped by its client.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from bench.infra import Infra, Processes, unique, wait_until
from bench.measure import Phase, Sample, peak_mib, process_tree
from bench.threaded import DonePoller, threaded_closed_loop

if TYPE_CHECKING:  # celery is the bench extra's, imported when the peer starts
    from celery import Celery

# Under load, Celery's rpc backend now and then never delivers a chain's result to its waiting
# thread (seen here with 50 threads, about 1 in 300); such a workflow counts as an error.
RPC_TIMEOUT = 10.0
DONE_QUERY = (
    "SELECT task_id FROM celery_taskmeta WHERE task_id = ANY(%s) "
    "AND status IN ('SUCCESS', 'FAILURE')"
)


def kombu_url(amqp_url: str) -> str:
    """aio-pika reads `amqp://host/` as the default vhost `/`; kombu needs it spelled `//`."""
    parts = urlsplit(amqp_url)
    return urlunsplit(parts._replace(path="//")) if parts.path in ("", "/") else amqp_url


class CeleryPeer:
    def __init__(self, infra: Infra, log_dir: Path, *, backend: str) -> None:
        if backend not in ("pg", "rpc"):
            raise ValueError(backend)
        self.name = f"celery-{backend}"
        self.infra = infra
        self.backend = backend
        self.log_dir = log_dir
        self.queue = unique("bench_celery_")
        self.database = unique("bench_celery_") if backend == "pg" else None
        self.processes: Processes | None = None
        self.app: Celery | None = None
        self.poller: DonePoller | None = None
        self._memory: dict[str, float | None] = {}
        self._lock = threading.Lock()
        self._thread_apps: list[Celery] = []

    async def start(self) -> None:
        from bench.peers.celery_app import make_app

        if self.database is not None:
            await self.infra.create_database(self.database)
            backend_url = "db+" + self.infra.database_url(self.database, scheme="postgresql")
        else:
            backend_url = "rpc://"
        broker = kombu_url(self.infra.amqp_url)
        self.app = make_app(broker, backend_url, self.queue)
        if self.database is not None:
            # The client creates celery_taskmeta first, so the two worker children do not race.
            await asyncio.to_thread(self.app.backend.get_task_meta, "bench-warm-up")
            dsn = self.infra.database_url(self.database)
            self.poller = await asyncio.to_thread(DonePoller, dsn, DONE_QUERY)
        env = {
            **os.environ,
            "BENCH_CELERY_BROKER": broker,
            "BENCH_CELERY_BACKEND": backend_url,
            "BENCH_CELERY_QUEUE": self.queue,
        }
        self.processes = Processes(self.log_dir / self.name, env)
        await self.processes.start(
            "worker",
            sys.executable, "-m", "celery", "-A", "bench.peers.celery_app", "worker",
            "--pool", "prefork", "--concurrency", "2", "-Q", self.queue,
            "--without-gossip", "--without-mingle", "--without-heartbeat",
            "--loglevel", "WARNING",
        )  # fmt: skip

        async def consuming() -> bool:
            assert self.processes is not None
            self.processes.check_alive()
            return await self.infra.consumers(self.queue) > 0

        await wait_until(consuming, timeout=60, what="celery worker", interval=0.2)

    def _one(self, steps: int) -> Callable[[int], Sample]:
        from celery import chain

        from bench.peers.celery_app import make_app

        shared, poller = self.app, self.poller
        assert shared is not None, "start() makes the app"
        local = threading.local()

        def client() -> Celery:
            # rpc: a client per thread, since one rpc result consumer cannot serve many threads
            # (replies meant for one thread are drained by another and lost to it).
            if poller is not None:
                return shared
            app: Celery | None = getattr(local, "app", None)
            if app is None:
                app = local.app = make_app(shared.conf.broker_url, "rpc://", self.queue)
                with self._lock:
                    self._thread_apps.append(app)
            return app

        def one(i: int) -> Sample:
            app = client()
            task = app.tasks["bench_step"]
            signatures = [task.s(i), *(task.s() for _ in range(steps - 1))]
            if poller is None:
                # rpc: only the chain's result is sent back; the links before it send nothing.
                for signature in signatures[:-1]:
                    # celery-types spells out the options `set` takes, but not ignore_result,
                    # which celery takes like any other (they all go into the options).
                    signature.set(ignore_result=True)  # type: ignore[call-arg]
            t0 = time.perf_counter()
            result = chain(*signatures).apply_async()
            if poller is not None:
                poller.wait(result.id)
            else:
                # Without its parents: `get` on the chain's result would fetch every link's.
                app.AsyncResult(result.id).get(timeout=RPC_TIMEOUT)
            return Sample(latency=time.perf_counter() - t0)

        return one

    async def run(self, steps: int, n: int, concurrency: int) -> Phase:
        return await asyncio.to_thread(
            threaded_closed_loop,
            steps,
            n,
            concurrency,
            self._one(steps),
            roles=self._roles(),
        )

    def _roles(self) -> dict[int, str]:
        # The prefork children are charged to the worker through the process tree.
        pids = self.processes.pids().values() if self.processes is not None else ()
        return dict.fromkeys(pids, "celery")

    def memory(self) -> dict[str, float | None]:
        if self.processes is not None:
            pids = process_tree(self.processes.pids()["worker"])
            self._memory = {"worker (all processes)": peak_mib(pids)}
        return dict(self._memory)

    async def stop(self) -> None:
        self.memory()
        if self.processes is not None:
            await self.processes.stop()
            self.processes = None
        if self.poller is not None:
            await asyncio.to_thread(self.poller.close)
            self.poller = None
        for app in [self.app, *self._thread_apps]:
            if app is not None:
                await asyncio.to_thread(app.close)
        self.app, self._thread_apps = None, []
        await self.infra.delete_amqp(
            [self.queue], [self.queue, f"{self.queue}.ev", f"{self.queue}.ctl"]
        )
        if self.database is not None:
            await self.infra.drop_database(self.database)
