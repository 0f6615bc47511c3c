"""The external system's lifespan: broker and topology, then the consumer until stopped."""

from __future__ import annotations

import asyncio
import contextlib

from apps.form_submission.external.settings import ExternalSettings
from apps.form_submission.external.system import ExternalConfig, ExternalSystem
from relayflow.amqp import connect, quietly
from relayflow.applications import load_workflows
from relayflow.probes import Probes, ready_check
from relayflow.topology import Topology


async def serve(
    settings: ExternalSettings, stop: asyncio.Event, probes: Probes | None = None
) -> None:
    """Run until `stop` is set, then let in-flight replies finish and return."""
    workflows = load_workflows(settings.apps, settings.workflows)
    topology = Topology.from_settings(settings)
    async with contextlib.AsyncExitStack() as stack:
        connection = await connect(
            settings.amqp_url, name="relayflow-external", heartbeat=settings.amqp_heartbeat
        )
        stack.push_async_callback(quietly, "closing the broker connection", connection.close)
        await topology.ensure(connection, workflows.task_names())
        system = ExternalSystem(
            connection=connection,
            topology=topology,
            config=ExternalConfig(
                reply_delay=settings.external_reply_delay,
                prefetch=settings.external_prefetch,
                senders=settings.senders,
            ),
        )
        await system.start()
        if probes is not None:
            probes.ready_when(
                ready_check(connection=connection, consuming=lambda: system.consuming)
            )
        try:
            await stop.wait()
        finally:
            await system.stop(grace=settings.shutdown_grace_seconds)
