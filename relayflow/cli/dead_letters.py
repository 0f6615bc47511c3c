"""`relayflow dead-letters list|show|redrive`: the namespace's dead-letter queue, over the broker.

Listing and showing browse `<ns>.dead-letters` without consuming: they take the messages
unacknowledged, one `basic.get` at a time, and hand every one back (nack, requeue) once they
have seen them. Re-driving republishes a dead letter to the exchange and routing key it was
dead-lettered from (the `x-relayflow-exchange`/`x-relayflow-queue` headers of our consumers, or
the broker's `x-death`), confirmed and mandatory, and acknowledges the dead letter only after the
broker confirmed the copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import aio_pika
import orjson
import typer
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from relayflow.amqp.publisher import broker_user
from relayflow.amqp.settle import QUEUE_HEADER, REASON_HEADER
from relayflow.cli import connections, output
from relayflow.cli.context import current
from relayflow.cli.errors import CliError
from relayflow.topology import Topology

EXCHANGE_HEADER = "x-relayflow-exchange"
DEAD_AT_HEADER = "x-relayflow-dead-lettered-at"
# Headers that describe the dead-lettering, not the message: dropped from a re-driven copy.
_DEAD_LETTER_HEADERS = (
    REASON_HEADER,
    QUEUE_HEADER,
    EXCHANGE_HEADER,
    DEAD_AT_HEADER,
    "x-death",
    "x-first-death-exchange",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-delivery-count",
)
# Upper bound on one browse: a dead-letter queue larger than this is listed in part.
MAX_BROWSE = 10_000


@dataclass(frozen=True, slots=True)
class DeadLetter:
    message_id: str
    type: str
    reason: str
    queue: str
    exchange: str
    routing_key: str
    dead_lettered_at: str | None
    age_seconds: float | None


@dataclass(frozen=True, slots=True)
class DeadLetterMessage:
    """One dead letter whole, as `show` prints it: where from and why, then the message."""

    letter: DeadLetter
    headers: dict[str, Any]
    body: bytes
    content_type: str | None
    correlation_id: str | None

    def to_json(self) -> dict[str, Any]:
        try:
            body: Any = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            body = self.body.decode(errors="replace")
        return {
            **asdict(self.letter),
            "content_type": self.content_type,
            "correlation_id": self.correlation_id,
            "headers": output.jsonable(self.headers),
            "body": body,
        }


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


def describe(message: AbstractIncomingMessage, now: datetime | None = None) -> DeadLetter:
    """Where a dead letter came from and why, from our headers or the broker's `x-death`."""
    headers: Mapping[str, Any] = message.headers or {}
    now = now or datetime.now(UTC)
    deaths = headers.get("x-death")
    death: Mapping[str, Any] = deaths[0] if isinstance(deaths, list) and deaths else {}
    if REASON_HEADER in headers:
        reason = _text(headers[REASON_HEADER])
        exchange = _text(headers.get(EXCHANGE_HEADER))
        routing_key = _text(headers.get(QUEUE_HEADER))
        queue = routing_key
        at = _text(headers.get(DEAD_AT_HEADER)) or None
    else:
        reason = f"broker: {_text(death.get('reason')) or 'unknown'}"
        exchange = _text(death.get("exchange"))
        keys = death.get("routing-keys") or []
        routing_key = _text(keys[0]) if keys else ""
        queue = _text(death.get("queue"))
        time = death.get("time")
        at = (
            time.replace(tzinfo=time.tzinfo or UTC).isoformat()
            if isinstance(time, datetime)
            else None
        )
    age = None
    if at:
        try:
            age = round((now - datetime.fromisoformat(at)).total_seconds(), 1)
        except ValueError:
            age = None
    return DeadLetter(
        message_id=message.message_id or "",
        type=message.type or "",
        reason=reason,
        queue=queue,
        exchange=exchange,
        routing_key=routing_key,
        dead_lettered_at=at,
        age_seconds=age,
    )


async def _browse(
    channel: AbstractChannel, queue_name: str, limit: int
) -> list[AbstractIncomingMessage]:
    """Take up to `limit` messages unacknowledged; the caller settles every one."""
    queue = await channel.get_queue(queue_name, ensure=True)
    taken: list[AbstractIncomingMessage] = []
    for _ in range(min(limit, MAX_BROWSE)):
        message = await queue.get(no_ack=False, fail=False, timeout=10)
        if message is None:
            break
        taken.append(message)
    return taken


async def list_dead_letters(
    connection: AbstractConnection, topology: Topology, limit: int = 1000
) -> list[DeadLetter]:
    channel = await connection.channel()
    try:
        taken = await _browse(channel, topology.dead_letter_queue, limit)
        letters = [describe(message) for message in taken]
        for message in taken:
            await message.nack(requeue=True)
        return letters
    finally:
        await channel.close()


async def show_dead_letter(
    connection: AbstractConnection, topology: Topology, message_id: str
) -> DeadLetterMessage:
    """The first dead letter with `message_id`, whole; nothing is consumed."""
    channel = await connection.channel()
    try:
        taken = await _browse(channel, topology.dead_letter_queue, MAX_BROWSE)
        try:
            for message in taken:
                if message.message_id == message_id:
                    return DeadLetterMessage(
                        letter=describe(message),
                        headers=dict(message.headers or {}),
                        body=message.body,
                        content_type=message.content_type,
                        correlation_id=message.correlation_id,
                    )
        finally:
            for message in taken:
                await message.nack(requeue=True)
        raise CliError(
            f"no dead letter with message id {message_id} in {topology.dead_letter_queue} "
            f"({len(taken)} there)"
        )
    finally:
        await channel.close()


async def redrive(
    connection: AbstractConnection, topology: Topology, *, message_ids: Sequence[str] | None
) -> list[DeadLetter]:
    """Re-drive the dead letters named (all when `message_ids` is None); returns those sent."""
    channel = await connection.channel()
    publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    wanted = set(message_ids) if message_ids is not None else None
    sent: list[DeadLetter] = []
    try:
        taken = await _browse(channel, topology.dead_letter_queue, MAX_BROWSE)
        for message in taken:
            letter = describe(message)
            if (wanted is not None and letter.message_id not in wanted) or not letter.exchange:
                await message.nack(requeue=True)
                continue
            headers = {
                k: v for k, v in (message.headers or {}).items() if k not in _DEAD_LETTER_HEADERS
            }
            exchange = await publish_channel.get_exchange(letter.exchange, ensure=False)
            try:
                await exchange.publish(
                    aio_pika.Message(
                        message.body,
                        message_id=message.message_id,
                        type=message.type,
                        content_type=message.content_type,
                        correlation_id=message.correlation_id,
                        headers=headers,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        # Sent again by us: consumers that check senders see this user.
                        user_id=broker_user(connection),
                    ),
                    routing_key=letter.routing_key,
                    mandatory=True,
                    timeout=10,
                )
            except Exception:
                await message.nack(requeue=True)
                raise
            await message.ack()
            sent.append(letter)
        if wanted is not None:
            missing = wanted - {letter.message_id for letter in sent}
            if missing:
                raise CliError(f"no dead letter with message id {', '.join(sorted(missing))}")
        return sent
    finally:
        await publish_channel.close()
        await channel.close()


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
            return await list_dead_letters(connection, context.topology, limit)

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
            return await show_dead_letter(connection, context.topology, message_id)

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
            return await redrive(
                connection, context.topology, message_ids=None if every else message_ids
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
