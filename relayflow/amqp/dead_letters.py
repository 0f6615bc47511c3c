"""The namespace's dead-letter queue, over AMQP: browsing it without consuming, and re-driving
dead letters to where they came from. One home for what `relayflow dead-letters` and the
gateway's operator pages both do (`relayflow.cli.dead_letters`, `services.gateway.operator`).

Browsing takes the messages unacknowledged, one `basic.get` at a time, and hands every one back
(nack, requeue) once it has seen them. A quorum queue puts a requeued message at its tail, so a
browse takes the whole queue (up to `MAX_BROWSE`) and hands it back in the order it came: the
queue ends as it was. Taking only the first few would move them behind the rest. Two browses at
once (two operators, or the CLI beside a page) each see only what the other does not hold, and
may interleave their hand-backs; nothing is lost either way.

Re-driving republishes a dead letter to the exchange and routing key it was dead-lettered from
(the `x-relayflow-exchange`/`x-relayflow-queue` headers of our consumers, or the broker's
`x-death`), confirmed and mandatory, and acknowledges the dead letter only after the broker
confirmed the copy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import aio_pika
import orjson
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from relayflow.amqp.publisher import broker_user
from relayflow.amqp.settle import DEAD_AT_HEADER, EXCHANGE_HEADER, QUEUE_HEADER, REASON_HEADER
from relayflow.errors import RelayflowError
from relayflow.topology import Topology

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
# Upper bound on one browse: a dead-letter queue larger than this is seen in part (and the part
# seen moves behind the rest, see the module's docstring).
MAX_BROWSE = 10_000
# How long one `basic.get` may take.
_GET_TIMEOUT = 10


class DeadLetterError(RelayflowError):
    """Root of the dead-letter queue's errors."""


class NoSuchDeadLetter(DeadLetterError):
    """No dead letter has the message id(s) asked for; the message names them."""


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
    """One dead letter whole: where from and why, then the message."""

    letter: DeadLetter
    headers: dict[str, Any]
    body: bytes
    content_type: str | None
    correlation_id: str | None

    def body_json(self) -> Any:
        """The body as JSON when it is JSON, else as text (undecodable bytes replaced)."""
        try:
            return orjson.loads(self.body)
        except orjson.JSONDecodeError:
            return self.body.decode(errors="replace")

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self.letter),
            "content_type": self.content_type,
            "correlation_id": self.correlation_id,
            "headers": jsonable(self.headers),
            "body": self.body_json(),
        }


@dataclass(frozen=True, slots=True)
class Browsed:
    """What one browse saw: up to `limit` dead letters after `offset`, and how many it saw in
    all (`seen`; at most `MAX_BROWSE`)."""

    letters: list[DeadLetter]
    seen: int


def jsonable(value: Any) -> Any:
    """`value` with what JSON cannot hold made text (AMQP headers carry bytes and datetimes)."""
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


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


def whole(message: AbstractIncomingMessage) -> DeadLetterMessage:
    return DeadLetterMessage(
        letter=describe(message),
        headers=dict(message.headers or {}),
        body=message.body,
        content_type=message.content_type,
        correlation_id=message.correlation_id,
    )


async def _take_all(channel: AbstractChannel, queue_name: str) -> list[AbstractIncomingMessage]:
    """Take the whole queue (up to `MAX_BROWSE`) unacknowledged; the caller settles every one,
    in this order (`_hand_back`)."""
    queue = await channel.get_queue(queue_name, ensure=True)
    taken: list[AbstractIncomingMessage] = []
    for _ in range(MAX_BROWSE):
        message = await queue.get(no_ack=False, fail=False, timeout=_GET_TIMEOUT)
        if message is None:
            break
        taken.append(message)
    return taken


async def _hand_back(messages: Sequence[AbstractIncomingMessage]) -> None:
    for message in messages:
        await message.nack(requeue=True)


async def browse(
    connection: AbstractConnection, topology: Topology, *, limit: int = 1000, offset: int = 0
) -> Browsed:
    """The dead letters from `offset`, at most `limit`, in queue order; nothing is consumed."""
    channel = await connection.channel()
    try:
        taken = await _take_all(channel, topology.dead_letter_queue)
        try:
            letters = [describe(message) for message in taken[offset : offset + limit]]
        finally:
            await _hand_back(taken)
        return Browsed(letters, len(taken))
    finally:
        await channel.close()


async def list_dead_letters(
    connection: AbstractConnection, topology: Topology, limit: int = 1000
) -> list[DeadLetter]:
    """The first `limit` dead letters, in queue order; nothing is consumed."""
    return (await browse(connection, topology, limit=limit)).letters


async def show_dead_letter(
    connection: AbstractConnection, topology: Topology, message_id: str
) -> DeadLetterMessage:
    """The first dead letter with `message_id`, whole; nothing is consumed. `NoSuchDeadLetter`
    when none has it."""
    channel = await connection.channel()
    try:
        taken = await _take_all(channel, topology.dead_letter_queue)
        try:
            for message in taken:
                if message.message_id == message_id:
                    return whole(message)
        finally:
            await _hand_back(taken)
        raise NoSuchDeadLetter(
            f"no dead letter with message id {message_id} in {topology.dead_letter_queue} "
            f"({len(taken)} there)"
        )
    finally:
        await channel.close()


async def redrive(
    connection: AbstractConnection, topology: Topology, *, message_ids: Sequence[str] | None
) -> list[DeadLetter]:
    """Re-drive the dead letters named (all when `message_ids` is None; every one with a named
    id); returns those sent. A dead letter that names no exchange to go back to stays. Named ids
    that no dead letter has raise `NoSuchDeadLetter` after the others were sent."""
    channel = await connection.channel()
    publish_channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
    wanted = set(message_ids) if message_ids is not None else None
    sent: list[DeadLetter] = []
    try:
        taken = await _take_all(channel, topology.dead_letter_queue)
        for position, message in enumerate(taken):
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
                # This one and every one not yet settled go back, in order.
                await _hand_back(taken[position:])
                raise
            await message.ack()
            sent.append(letter)
        if wanted is not None:
            missing = wanted - {letter.message_id for letter in sent}
            if missing:
                raise NoSuchDeadLetter(
                    f"no dead letter with message id {', '.join(sorted(missing))}"
                )
        return sent
    finally:
        await publish_channel.close()
        await channel.close()
