"""`relayflow dead-letters list|show|redrive`: the namespace's dead-letter queue, over the broker.

What browsing and re-driving do (nothing is consumed by a look; a re-driven dead letter is acked
only once the broker confirmed its copy) is `relayflow.amqp.dead_letters`, which the gateway's
operator pages use too; this module is the commands around it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import asdict
from typing import Annotated, TypeVar

import orjson
import typer

from relayflow.amqp.dead_letters import (
    MAX_BROWSE,
    DeadLetter,
    DeadLetterMessage,
    NoSuchDeadLetter,
    list_dead_letters,
    redrive,
    show_dead_letter,
)
from relayflow.cli import connections, output
from relayflow.cli.context import current
from relayflow.cli.errors import CliError

T = TypeVar("T")


async def _said(work: Awaitable[T]) -> T:
    """`work`, a missing dead letter said as the CLI says what went wrong."""
    try:
        return await work
    except NoSuchDeadLetter as exc:
        raise CliError(str(exc)) from None


app = typer.Typer(help="The namespace's dead letters, over the broker (nothing is lost).")

Json = Annotated[bool, typer.Option("--json", help="JSON: one object per line")]


@app.command("list")
def list_command(
    ctx: typer.Context,
    *,
    limit: Annotated[int, typer.Option(min=1, max=MAX_BROWSE)] = 1000,
    as_json: Json = False,
) -> None:
    """Show dead letters (id, type, queue, age, reason) without consuming them."""
    context = current(ctx)

    async def main() -> list[DeadLetter]:
        async with connections.broker(context.amqp_url) as connection:
            return await _said(list_dead_letters(connection, context.topology, limit))

    letters = connections.run(main())
    if as_json:
        for letter in letters:
            output.write_json(asdict(letter))
        return
    output.write_lines(
        f"{letter.message_id}\t{letter.type or '-'}\t{letter.queue}\t"
        f"{letter.age_seconds if letter.age_seconds is not None else '?'}s\t{letter.reason}"
        for letter in letters
    )
    output.write_lines([f"{len(letters)} dead letter(s) in {context.topology.dead_letter_queue}"])


@app.command("show")
def show_command(
    ctx: typer.Context,
    *,
    message_id: Annotated[str, typer.Argument(metavar="ID", help="the message id")],
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object")] = False,
) -> None:
    """Show one dead letter whole: where it came from, why, its headers and its body."""
    context = current(ctx)

    async def main() -> DeadLetterMessage:
        async with connections.broker(context.amqp_url) as connection:
            return await _said(show_dead_letter(connection, context.topology, message_id))

    shown = connections.run(main())
    if as_json:
        output.write_json(shown.to_json())
        return
    letter = shown.letter
    age = f" ({letter.age_seconds} s ago)" if letter.age_seconds is not None else ""
    lines = [
        f"message id      {letter.message_id}",
        f"type            {letter.type or '-'}",
        f"reason          {letter.reason}",
        f"queue           {letter.queue or '-'}",
        f"from            {letter.exchange or '-'} / {letter.routing_key or '-'}",
        f"dead-lettered   {letter.dead_lettered_at or '?'}{age}",
        f"content type    {shown.content_type or '-'}",
        f"correlation id  {shown.correlation_id or '-'}",
        "headers:",
        *(f"  {key}: {output.compact(value, 500)}" for key, value in shown.headers.items()),
        "body:",
    ]
    body = shown.to_json()["body"]
    if isinstance(body, str):
        lines.append(body)
    else:
        lines.append(orjson.dumps(body, option=orjson.OPT_INDENT_2).decode())
    output.write_lines(lines)


@app.command("redrive")
def redrive_command(
    ctx: typer.Context,
    *,
    every: Annotated[bool, typer.Option("--all", help="every dead letter")] = False,
    message_ids: Annotated[
        list[str] | None,
        typer.Option("--message-id", metavar="ID", help="this one (repeat for more)"),
    ] = None,
    as_json: Json = False,
) -> None:
    """Republish dead letters where they came from (after the cause is fixed)."""
    if every == bool(message_ids):
        raise typer.BadParameter(
            "name the dead letters with --message-id ID (repeatable), or give --all",
            param_hint="'--all' / '--message-id'",
        )
    context = current(ctx)

    async def main() -> list[DeadLetter]:
        async with connections.broker(context.amqp_url) as connection:
            return await _said(
                redrive(connection, context.topology, message_ids=None if every else message_ids)
            )

    sent = connections.run(main())
    if as_json:
        for letter in sent:
            output.write_json(asdict(letter))
        return
    output.write_lines(
        f"re-drove {letter.message_id} to {letter.exchange}/{letter.routing_key}" for letter in sent
    )
    output.write_lines([f"{len(sent)} dead letter(s) re-driven"])
