"""`relayflow broker setup`: one broker user per service of the namespace, each with only the
rights its service needs (`relayflow.amqp.definitions`), written as a RabbitMQ definitions file
to load with `rabbitmqctl import_definitions FILE`; prints each service's `AMQP_URL` (the
passwords, once) and the `RELAYFLOW_BROKER_SENDERS` every service is to run with. It needs no
broker."""

from __future__ import annotations

import json
import os
import urllib.parse
from pathlib import Path
from typing import Annotated

import typer

from relayflow.amqp.definitions import broker_users, definitions, senders_setting
from relayflow.cli import output
from relayflow.cli.context import current
from relayflow.steps import StepRegistry
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry

app = typer.Typer(help="Broker users.")


@app.command("setup")
def setup_command(
    ctx: typer.Context,
    *,
    out: Annotated[Path, typer.Option(help="the definitions file to write")],
    vhost: Annotated[str, typer.Option()] = "relayflow",
    host: Annotated[str, typer.Option(help="broker host in the printed URLs")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 5672,
    isolated_steps: Annotated[
        bool,
        typer.Option(help="the step service only sends results (RELAYFLOW_STEP_ADVANCE=false)"),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON object: the file, each AMQP_URL, the senders")
    ] = False,
) -> None:
    """Write least-privilege users for the namespace as RabbitMQ definitions, and print each
    service's AMQP_URL and the RELAYFLOW_BROKER_SENDERS they share."""
    context = current(ctx)
    settings = context.settings
    # The topology of what the services load (RELAYFLOW_APPS, or RELAYFLOW_WORKFLOWS and
    # RELAYFLOW_STEP_MODULES); a task whose body no step module has is served from outside
    # Python, and gets a user of its own.
    tasks = WorkflowRegistry.from_modules(settings.workflows).task_names()
    served = StepRegistry.from_modules(settings.step_modules).names()
    steps = {*tasks, *served}
    foreign = sorted(set(tasks) - set(served))
    users = broker_users(context.namespace, isolated_steps=isolated_steps, foreign_steps=foreign)
    topology = Topology(
        context.namespace, settings.queue_type, settings.delivery_limit, settings.quorum_size
    )
    document = definitions(users, vhost, topology, steps)
    # Passwords are hashed in it, and the file is readable by its owner only.
    descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        json.dump(document, file, indent=2)
    quoted = urllib.parse.quote(vhost, safe="")
    urls = {
        user.service: f"amqp://{user.name}:{user.password}@{host}:{port}/{quoted}" for user in users
    }
    if as_json:
        output.write_json(
            {
                "file": str(out),
                "amqp_urls": urls,
                "broker_senders": senders_setting(users),
                "step_advance": not isolated_steps,
            }
        )
        return
    lines = [f"wrote {out}; load it with: rabbitmqctl import_definitions {out}", ""]
    lines += [f"{service:13} AMQP_URL={url}" for service, url in urls.items()]
    lines += ["", f"every service: RELAYFLOW_BROKER_SENDERS='{senders_setting(users)}'"]
    if isolated_steps:
        lines.append("the step service: RELAYFLOW_STEP_ADVANCE=false")
    output.write_lines(lines)
