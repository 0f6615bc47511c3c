"""The step service's lifespan: database, broker, topology, then the worker until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from relayflow.amqp import Publisher, connect, quietly
from relayflow.applications import load_workflows
from relayflow.db import close_pool
from relayflow.errors import ConfigurationError, DefinitionError
from relayflow.hops import HopTrace
from relayflow.orchestration.advance import StepAdvancer
from relayflow.orchestration.local import LocalSteps
from relayflow.orchestration.processor import Processor
from relayflow.orchestration.relay import OutboxRelay
from relayflow.probes import Probes, ready_check
from relayflow.runtime import prepare_database
from relayflow.steps import StepRegistry, StepWorker, WorkerConfig
from relayflow.topology import Topology
from services.steps.settings import StepServiceSettings

log = logging.getLogger(__name__)


def load_steps(settings: StepServiceSettings) -> StepRegistry:
    """The step bodies this process serves; a wrong module or step name stops it at start-up."""
    try:
        registry = StepRegistry.from_modules(settings.step_modules)
        selected = registry.select(settings.steps) if settings.steps else registry
    except (DefinitionError, ImportError) as exc:
        raise ConfigurationError(str(exc)) from exc
    if not len(selected):
        raise ConfigurationError(f"no steps to serve in {settings.step_modules}")
    return selected


def hand_over(relay: OutboxRelay, worker: StepWorker) -> None:
    """Eager dispatch (`relayflow.steps.eager`): the commands this service's own commits produce
    for steps it serves go from `relay` to `worker` in process; the rest are published."""
    worker.hand_over_with(relay.delivered, relay.returned)
    relay.divert(worker.take)


async def serve(
    settings: StepServiceSettings, stop: asyncio.Event, probes: Probes | None = None
) -> None:
    """Run until `stop` is set, then finish or hand back what is in flight and return."""
    steps = load_steps(settings)
    workflows = load_workflows(settings.apps, settings.workflows)
    try:
        steps.bind(workflows)
    except DefinitionError as exc:
        raise ConfigurationError(str(exc)) from exc
    topology = Topology.from_settings(settings)
    try:
        # Advancing a workflow may run the local tasks that follow the step.
        local = (
            LocalSteps.load(workflows, settings.step_modules, exchange=topology.exchange)
            if settings.step_advance
            else None
        )
    except (DefinitionError, ImportError) as exc:
        raise ConfigurationError(str(exc)) from exc
    async with contextlib.AsyncExitStack() as stack:
        migrations = dict.fromkeys([*steps.migrations, *(local.migrations if local else ())])
        pool = await prepare_database(settings, list(migrations), engine=True)
        stack.push_async_callback(close_pool, pool)
        connection = await connect(
            settings.amqp_url, name="relayflow-steps", heartbeat=settings.amqp_heartbeat
        )
        stack.push_async_callback(quietly, "closing the broker connection", connection.close)
        await topology.ensure(connection, {*workflows.task_names(), *steps.names()})
        hops = HopTrace.open(settings.hop_trace, "steps")
        stack.callback(hops.close)
        advancer = None
        relay: OutboxRelay | None = None
        if settings.step_advance:
            publisher = await Publisher.open(connection)
            stack.push_async_callback(publisher.close)
            relay = OutboxRelay(pool, publisher, hops=hops)
            relay.start(sweep=False)
            # Stopped after the worker (the exit stack unwinds in reverse): what the last
            # batches committed is still published.
            stack.push_async_callback(relay.stop)
            advancer = StepAdvancer(Processor(workflows, topology, local=local), relay)
        worker = StepWorker(
            steps=steps,
            pool=pool,
            connection=connection,
            topology=topology,
            config=WorkerConfig(
                prefetch=settings.step_prefetch,
                lease_seconds=settings.step_lease_seconds,
                inline_budget=settings.step_inline_budget,
                batch_size=settings.step_batch_size,
                batch_workers=settings.step_batch_workers,
                eager=settings.step_eager,
            ),
            hops=hops,
            advancer=advancer,
            senders=settings.senders,
        )
        if relay is not None and settings.step_eager:
            hand_over(relay, worker)
        await worker.start()
        if probes is not None:
            probes.ready_when(
                ready_check(connection=connection, consuming=lambda: worker.consuming, pool=pool)
            )
        try:
            await stop.wait()
        finally:
            log.info("stopping: %d step(s) in flight", worker.inflight)
            await worker.stop(grace=settings.shutdown_grace_seconds)
