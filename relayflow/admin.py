"""`relayflow-admin`: operator commands over the broker.

    relayflow-admin dead-letters list [--limit N] [--json]
    relayflow-admin dead-letters redrive (--all | --message-id ID ...)
    relayflow-admin workflows cancel ID [--reason TEXT]
    relayflow-admin workflows retry ID [--reason TEXT]

`AMQP_URL` and `RELAYFLOW_NAMESPACE` say which broker and which set of queues (as for the
services); `--amqp-url` and `--namespace` override them.

Listing browses `<ns>.dead-letters` without consuming: it takes the messages unacknowledged, one
`basic.get` at a time, and hands every one back (nack, requeue) once it has seen them. Re-driving
republishes a dead letter to the exchange and routing key it was dead-lettered from (the
`x-relayflow-exchange`/`x-relayflow-queue` headers of our consumers, or the broker's `x-death`),
confirmed and mandatory, and acknowledges the dead letter only after the broker confirmed the copy.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from relayflow.amqp.consumer import QUEUE_HEADER, REASON_HEADER
from relayflow.contracts import CancelWorkflow, RetryWorkflow, encode, new_message_id
from relayflow.settings import Settings
from relayflow.topology import CONTROL_KEY, Topology

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


class AdminError(Exception):
    """A command that cannot be carried out; the message says why."""


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
                raise AdminError(f"no dead letter with message id {', '.join(sorted(missing))}")
        return sent
    finally:
        await publish_channel.close()
        await channel.close()


async def control(
    connection: AbstractConnection, topology: Topology, message: CancelWorkflow | RetryWorkflow
) -> None:
    """Publish a control message to the orchestrator, confirmed and mandatory."""
    channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    try:
        exchange = await channel.get_exchange(topology.exchange, ensure=False)
        await exchange.publish(
            aio_pika.Message(
                encode(message),
                message_id=message.message_id,
                type=message.type,
                content_type="application/json",
                headers={"x-schema-version": message.schema_version},
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=CONTROL_KEY,
            mandatory=True,
            timeout=10,
        )
    finally:
        await channel.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayflow-admin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--amqp-url", help="default: AMQP_URL")
    parser.add_argument("--namespace", help="default: RELAYFLOW_NAMESPACE")
    areas = parser.add_subparsers(dest="area", required=True)
    dead = areas.add_parser("dead-letters").add_subparsers(dest="command", required=True)
    listing = dead.add_parser("list", help="show dead letters without consuming them")
    listing.add_argument("--limit", type=int, default=1000)
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    again = dead.add_parser("redrive", help="republish dead letters where they came from")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true")
    which.add_argument("--message-id", action="append", dest="message_ids")
    workflows = areas.add_parser("workflows").add_subparsers(dest="command", required=True)
    for name in ("cancel", "retry"):
        command = workflows.add_parser(name)
        command.add_argument("workflow_id")
        command.add_argument("--reason", default="")
    return parser


async def _amain(args: argparse.Namespace) -> int:
    settings = Settings()
    url = args.amqp_url or settings.amqp_url
    topology = Topology(args.namespace or settings.namespace)
    try:
        connection = await aio_pika.connect(url, timeout=10)
    except (OSError, aio_pika.exceptions.AMQPConnectionError) as exc:
        raise AdminError(f"cannot reach RabbitMQ: {exc}") from exc
    out = sys.stdout
    try:
        if args.area == "dead-letters" and args.command == "list":
            letters = await list_dead_letters(connection, topology, args.limit)
            for letter in letters:
                if args.json:
                    out.write(json.dumps(asdict(letter)) + "\n")
                else:
                    out.write(
                        f"{letter.message_id}\t{letter.type or '-'}\t{letter.queue}\t"
                        f"{letter.age_seconds if letter.age_seconds is not None else '?'}s\t"
                        f"{letter.reason}\n"
                    )
            if not args.json:
                out.write(f"{len(letters)} dead letter(s) in {topology.dead_letter_queue}\n")
        elif args.area == "dead-letters":
            sent = await redrive(
                connection, topology, message_ids=None if args.all else args.message_ids
            )
            for letter in sent:
                out.write(
                    f"re-drove {letter.message_id} to {letter.exchange}/{letter.routing_key}\n"
                )
            out.write(f"{len(sent)} dead letter(s) re-driven\n")
        else:
            model = CancelWorkflow if args.command == "cancel" else RetryWorkflow
            message = model(
                message_id=new_message_id(), workflow_id=args.workflow_id, reason=args.reason
            )
            await control(connection, topology, message)
            out.write(f"{message.type} for {args.workflow_id} published ({message.message_id})\n")
    finally:
        await connection.close()
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        code = asyncio.run(_amain(args))
    except (AdminError, aio_pika.exceptions.DeliveryError, aio_pika.exceptions.PublishError) as exc:
        sys.stderr.write(f"relayflow-admin: {exc}\n")
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
