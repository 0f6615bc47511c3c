"""`relayflow workflows …`: workflows through the gateway's HTTP API (`RELAYFLOW_URL`, the key
in `RELAYFLOW_API_KEY`), and, with `--broker`, cancel, retry and signal straight over the broker
(`relayflow.cli.control`).

`start --wait` and `tail` follow the workflow's events to its end (`relayflow.cli.follow`) and
exit 0 when it completed, 1 when it ended any other way — failed, cancelled, compensated or
compensation_failed: a compensated run is one whose effects were undone, not one that did what
it was asked — and 2 when the command itself failed (`relayflow.cli.errors.Exit`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Annotated, Any

import httpx
import typer

from relayflow.cli import connections, gateway, output
from relayflow.cli.context import Context, current
from relayflow.cli.control import SignalRequest, control, prepare_signal, send_signal
from relayflow.cli.errors import CliError, Exit
from relayflow.cli.follow import COMPLETED, Event, follow
from relayflow.cli.inputs import read_json, read_object
from relayflow.cli.progress import Progress
from relayflow.contracts import CancelWorkflow, RetryWorkflow, new_message_id

app = typer.Typer(help="Start, watch and steer workflows (through the gateway).")

WorkflowId = Annotated[str, typer.Argument(metavar="ID", help="the workflow's id (wf_…)")]
Json = Annotated[bool, typer.Option("--json", help="JSON instead of text")]
Key = Annotated[
    str | None,
    typer.Option(
        "--key",
        "--idempotency-key",
        metavar="K",
        help="Idempotency-Key: the same key does it once, however often it is sent",
    ),
]
Reason = Annotated[str, typer.Option(help="recorded in the workflow's event")]
Broker = Annotated[
    bool,
    typer.Option(
        "--broker",
        help="publish straight to the broker (AMQP_URL, RELAYFLOW_NAMESPACE), not the gateway",
    ),
]


def _exit_for(status: str) -> Exit:
    return Exit.OK if status == "completed" else Exit.NOT_COMPLETED


async def _view(http: httpx.AsyncClient, context: Context, workflow_id: str) -> dict[str, Any]:
    view: dict[str, Any] = await gateway.call(
        http,
        context,
        "GET",
        gateway.path("workflows", workflow_id),
        what=f"reading workflow {workflow_id}",
    )
    return view


async def _outcome(
    http: httpx.AsyncClient, context: Context, workflow_id: str, last: Event | None
) -> tuple[str, Any]:
    """How the run ended (status and error): from its terminal event, or, when the stream had
    nothing more to say (it was seen to its end before), from its state."""
    if last is not None and last.terminal:
        data = last.body.get("data")
        error = data.get("error") if isinstance(data, Mapping) else None
        return last.event.removeprefix("workflow."), error
    view = await _view(http, context, workflow_id)
    return str(view.get("status")), view.get("error")


@app.command("start")
def start_command(
    ctx: typer.Context,
    *,
    name: Annotated[str, typer.Argument(help="the workflow's name, e.g. formSubmission")],
    input_: Annotated[
        str,
        typer.Option(
            "--input", "-i", metavar="JSON|@FILE", help="its input: JSON, @file, or @- for stdin"
        ),
    ] = "{}",
    key: Key = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="follow it to its end: exit 0 completed, 1 not")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="no progress display with --wait")
    ] = False,
    as_json: Json = False,
) -> None:
    """Start a workflow and print its id (with --json, the gateway's answer; with --wait and
    --json, the workflow's final state)."""
    context = current(ctx)
    data = read_json(input_, "--input")
    headers = {gateway.IDEMPOTENCY_HEADER: key} if key is not None else {}

    async def main() -> Exit:
        async with gateway.client(context) as http:
            accepted = await gateway.call(
                http,
                context,
                "POST",
                gateway.path("workflows", name),
                json=data,
                headers=headers,
                what=f"starting {name}",
            )
            workflow_id = str(accepted["workflowId"])
            if not wait:
                if as_json:
                    output.write_json(accepted)
                else:
                    output.write_lines([workflow_id])
                return Exit.OK
            if not as_json:
                output.write_lines([workflow_id])
            status = await _wait(http, context, workflow_id, quiet=quiet)
            if as_json:
                output.write_json(await _view(http, context, workflow_id))
            return _exit_for(status)

    raise typer.Exit(connections.run(main()))


async def _wait(http: httpx.AsyncClient, context: Context, workflow_id: str, *, quiet: bool) -> str:
    """Follow the run to its end with the progress display; returns its final status."""
    began = time.monotonic()
    progress = Progress(workflow_id, sys.stderr, tty=sys.stderr.isatty() and not quiet)
    last: Event | None = None
    notice = (lambda _: None) if quiet else output.notice
    async for event in follow(http, context, workflow_id, on_reconnect=notice):
        last = event
        if progress.total is None:
            try:
                view = await _view(http, context, workflow_id)
            except CliError:
                pass  # not readable yet: the next event tries again
            else:
                progress.total = len(view.get("steps") or [])
        if not quiet:
            progress.update(event)
    status, error = await _outcome(http, context, workflow_id, last)
    if not quiet:
        took = f"{time.monotonic() - began:.1f} s"
        total = "?" if progress.total is None else progress.total
        if status == "completed":
            progress.finish(
                f"{workflow_id} completed in {took} ({progress.completed}/{total} steps)"
            )
        else:
            why = f": {output.error_text(error)}" if error else ""
            progress.finish(f"{workflow_id} {status} after {took}{why}")
    return status


@app.command("tail")
def tail_command(
    ctx: typer.Context,
    *,
    workflow_id: WorkflowId,
    after: Annotated[
        int, typer.Option(min=0, metavar="SEQ", help="only the events after this seq")
    ] = 0,
    as_json: Annotated[
        bool, typer.Option("--json", help="each event's JSON (WorkflowEvent), one per line")
    ] = False,
) -> None:
    """Print the workflow's events as they happen, one line each, to its end (exit 0 when it
    completed, 1 when it did not)."""
    context = current(ctx)

    async def main() -> Exit:
        last: Event | None = None
        async with gateway.client(context) as http:
            async for event in follow(
                http, context, workflow_id, after=after, on_reconnect=output.notice
            ):
                last = event
                if as_json:
                    output.write_json(event.body)
                else:
                    output.write_lines([output.event_line(event)])
                sys.stdout.flush()
            if last is not None and last.terminal:
                return Exit.OK if last.event == COMPLETED else Exit.NOT_COMPLETED
            status, _ = await _outcome(http, context, workflow_id, last)
            return _exit_for(status)

    raise typer.Exit(connections.run(main()))


@app.command("status")
def status_command(ctx: typer.Context, *, workflow_id: WorkflowId, as_json: Json = False) -> None:
    """Show a workflow's state: status, times, error or output, and each step."""
    context = current(ctx)

    async def main() -> dict[str, Any]:
        async with gateway.client(context) as http:
            return await _view(http, context, workflow_id)

    view = connections.run(main())
    if as_json:
        output.write_json(view)
    else:
        output.write_lines(output.status_lines(view))


@app.command("list")
def list_command(
    ctx: typer.Context,
    *,
    status: Annotated[
        str | None, typer.Option(help="only these: running, completed, failed, cancelled, …")
    ] = None,
    workflow: Annotated[str | None, typer.Option(help="only this workflow's runs")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="at most this many")] = 50,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON: one WorkflowSummary per line")
    ] = False,
) -> None:
    """List workflows, newest first."""
    context = current(ctx)

    async def main() -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        params = {"limit": str(min(limit, gateway.MAX_PAGE))}
        if status is not None:
            params["status"] = status
        if workflow is not None:
            params["workflow"] = workflow
        async with gateway.client(context) as http:
            while len(items) < limit:
                page = await gateway.call(
                    http, context, "GET", "/workflows", params=params, what="listing workflows"
                )
                items += page.get("items") or []
                if not page.get("next"):
                    break
                params["before"] = page["next"]
        return items[:limit]

    items = connections.run(main())
    if as_json:
        for item in items:
            output.write_json(item)
        return
    header = ["id", "workflow", "status", "steps", "active", "created", "updated"]
    output.write_lines(output.table(header, output.summary_rows(items)))
    output.write_lines([f"{len(items)} workflow(s)"])


def _act(
    ctx: typer.Context,
    action: str,
    workflow_id: str,
    reason: str,
    key: str | None,
    *,
    broker: bool,
    as_json: bool,
) -> None:
    context = current(ctx)
    if broker:
        if key is not None:
            raise typer.BadParameter(
                "an idempotency key is the gateway's; --broker sends without one",
                param_hint="'--key'",
            )
        model = CancelWorkflow if action == "cancel" else RetryWorkflow
        message = model(message_id=new_message_id(), workflow_id=workflow_id, reason=reason)

        async def publish() -> None:
            async with connections.broker(context.amqp_url) as connection:
                await control(connection, context.topology, message)

        connections.run(publish())
        if as_json:
            output.write_json(
                {"workflowId": workflow_id, "action": action, "messageId": message.message_id}
            )
        else:
            output.write_lines(
                [f"{message.type} for {workflow_id} published ({message.message_id})"]
            )
        return

    async def main() -> dict[str, Any]:
        async with gateway.client(context) as http:
            accepted: dict[str, Any] = await gateway.call(
                http,
                context,
                "POST",
                gateway.path("workflows", workflow_id, action),
                json={},
                params={"reason": reason} if reason else None,
                headers={gateway.IDEMPOTENCY_HEADER: key} if key is not None else None,
                what=f"{action} of {workflow_id}",
            )
            return accepted

    accepted = connections.run(main())
    if as_json:
        output.write_json(accepted)
    else:
        output.write_lines([f"{action} of {workflow_id} accepted ({accepted.get('messageId')})"])


@app.command("cancel")
def cancel_command(
    ctx: typer.Context,
    *,
    workflow_id: WorkflowId,
    reason: Reason = "",
    key: Key = None,
    broker: Broker = False,
    as_json: Json = False,
) -> None:
    """Cancel a running workflow (its compensable steps are undone)."""
    _act(ctx, "cancel", workflow_id, reason, key, broker=broker, as_json=as_json)


@app.command("retry")
def retry_command(
    ctx: typer.Context,
    *,
    workflow_id: WorkflowId,
    reason: Reason = "",
    key: Key = None,
    broker: Broker = False,
    as_json: Json = False,
) -> None:
    """Run a failed or cancelled workflow again from the steps that did not complete."""
    _act(ctx, "retry", workflow_id, reason, key, broker=broker, as_json=as_json)


@app.command("signal")
def signal_command(
    ctx: typer.Context,
    *,
    workflow_id: WorkflowId,
    signal_name: Annotated[str, typer.Argument(metavar="NAME", help="the signal's name")],
    data: Annotated[
        str, typer.Option(metavar="JSON|@FILE", help="the payload, a JSON object (or @file)")
    ],
    by: Annotated[str | None, typer.Option(help="who sends it (recorded as sentBy)")] = None,
    key: Key = None,
    broker: Broker = False,
    as_json: Json = False,
) -> None:
    """Send a named signal to a running workflow."""
    context = current(ctx)
    payload = read_object(data, "--data", "the signal's payload")
    if broker:
        request = SignalRequest(workflow_id, signal_name, payload, by, key)
        _signal_over_broker(context, request, as_json=as_json)
        return
    headers = {}
    if key is not None:
        headers[gateway.IDEMPOTENCY_HEADER] = key
    if by is not None:
        headers[gateway.SENDER_HEADER] = by

    async def main() -> dict[str, Any]:
        async with gateway.client(context) as http:
            accepted: dict[str, Any] = await gateway.call(
                http,
                context,
                "POST",
                gateway.path("workflows", workflow_id, "signals", signal_name),
                json=payload,
                headers=headers,
                what=f"signal {signal_name} to {workflow_id}",
            )
            return accepted

    accepted = connections.run(main())
    if as_json:
        output.write_json(accepted)
    else:
        output.write_lines(
            [f"signal {signal_name} for {workflow_id} accepted ({accepted.get('signalId')})"]
        )


def _signal_over_broker(context: Context, request: SignalRequest, *, as_json: bool) -> None:
    async def main() -> str:
        # Checked before the broker is reached: a refused payload sends nothing.
        signal = await prepare_signal(request, context.database_url, context.settings, output.warn)
        async with connections.broker(context.amqp_url) as connection:
            await send_signal(connection, context.topology, signal)
        return signal.message_id

    message_id = connections.run(main())
    if as_json:
        output.write_json(
            {
                "workflowId": request.workflow_id,
                "signal": request.signal_name,
                "signalId": message_id,
            }
        )
        return
    output.write_lines(
        [f"SignalWorkflow {request.signal_name} for {request.workflow_id} published ({message_id})"]
    )
