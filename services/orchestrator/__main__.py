"""`python -m services.orchestrator`: run one orchestrator replica (several may run at once)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from relayflow import metrics
from relayflow.amqp import BatchConsumer, Publisher, connect, quietly
from relayflow.applications import load_workflows
from relayflow.db import close_pool
from relayflow.hops import HopTrace
from relayflow.orchestration import retention, store
from relayflow.orchestration.local import LocalSteps
from relayflow.orchestration.processor import Processor
from relayflow.orchestration.relay import OutboxRelay
from relayflow.probes import Probes, ready_check
from relayflow.runtime import prepare_database, run
from relayflow.topology import Topology
from services.orchestrator.announce import Announcer, replica_id
from services.orchestrator.service import Orchestrator
from services.orchestrator.settings import OrchestratorSettings

log = logging.getLogger("services.orchestrator")


async def serve(
    settings: OrchestratorSettings, stop: asyncio.Event, probes: Probes | None = None
) -> None:
    registry = load_workflows(settings.apps, settings.workflows)
    topology = Topology.from_settings(settings)
    local = LocalSteps.load(registry, settings.step_modules, exchange=topology.exchange)
    pool = await prepare_database(settings, local.migrations if local else (), engine=True)
    connection = await connect(
        settings.amqp_url, name="relayflow-orchestrator", heartbeat=settings.amqp_heartbeat
    )
    hops = HopTrace.open(settings.hop_trace, "orchestrator")
    try:
        await topology.ensure(connection, registry.task_names())
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=settings.orchestrator_prefetch)
        publisher = await Publisher.open(connection)
        relay = OutboxRelay(
            pool,
            publisher,
            stale_after=settings.outbox_stale_after,
            sweep_interval=settings.outbox_sweep_interval,
            hops=hops,
        )
        orchestrator = Orchestrator(
            pool,
            Processor(registry, topology, local=local),
            relay,
            publisher,
            topology,
            max_input_bytes=settings.max_input_bytes,
            defer_first=settings.orchestrator_defer_first,
            defer_limit=settings.orchestrator_defer_limit,
            hops=hops,
            senders=settings.senders,
        )
        # ensure=True returns the queue the robust channel tracks, so that its consumer is
        # restored after a reconnect (an untracked queue object would silently stop consuming).
        queue = await channel.get_queue(topology.orchestrator_queue)
        consumer = BatchConsumer(
            queue,
            orchestrator.handle_batch,
            max_batch=settings.orchestrator_batch_size,
            workers=settings.orchestrator_workers,
        )
        announcer = Announcer(
            pool,
            registry.all_versions(),
            replica=replica_id(),
            interval=settings.announce_interval,
            stale_after=settings.announce_stale_after,
        )
        relay.start()
        await consumer.start()
        if probes is not None:
            probes.ready_when(
                ready_check(connection=connection, consuming=lambda: consumer.consuming, pool=pool)
            )
        background = [
            asyncio.create_task(announcer.run()),
            asyncio.create_task(_fire_timers(orchestrator, settings.timer_poll_interval)),
            asyncio.create_task(retention.run(pool, settings.retention)),
        ]
        if settings.metrics_port:
            background.append(
                asyncio.create_task(
                    metrics.refresh_backlog(lambda: _backlog(pool), settings.outbox_gauge_interval)
                )
            )
        log.info(
            "consuming %s for workflows %s as replica %s",
            topology.orchestrator_queue,
            registry.names(),
            announcer.replica,
        )
        await stop.wait()
        log.info("stopping: no new deliveries; finishing the batches in hand")
        await consumer.stop()
        await orchestrator.stop()
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await announcer.withdraw()
        await relay.stop()
    finally:
        await quietly("closing the broker connection", connection.close)
        await close_pool(pool)
        hops.close()


async def _fire_timers(orchestrator: Orchestrator, interval: float) -> None:
    while True:
        try:
            fired = await orchestrator.fire_due_timers()
        except Exception:
            log.exception("firing timers failed")
            fired = 0
        if not fired:
            await asyncio.sleep(interval)


async def _backlog(pool: asyncpg.Pool[Any]) -> metrics.Backlog:
    async with pool.acquire() as conn:
        return metrics.Backlog(*await store.backlog(conn))


def main() -> None:
    settings = OrchestratorSettings()
    probes = Probes()
    run(
        "orchestrator",
        lambda stop: serve(settings, stop, probes),
        settings=settings,
        metrics=(settings.metrics_host, settings.metrics_port),
        probes=probes,
    )


if __name__ == "__main__":
    main()
