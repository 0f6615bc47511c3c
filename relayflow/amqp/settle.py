"""Settling a delivery, the one way every consumer does it: ack it, hand it back after a backoff,
or dead-letter it with a reason.

- **ack** once its effect is durable (commit, then ack). A failed ack is only logged: the broker
  redelivers, and every consumer deduplicates by message id.
- **hand back** (nack with requeue) when this process cannot handle it *now* — an outage, a stop.
  After an error it waits first (`Backoff`), so that an outage does not spin; on a stop it hands
  back at once, so that another consumer can take it.
- **dead-letter** what can never be handled (invalid, unroutable, refused), on its first delivery,
  with the reason in the headers: it neither loops back into the consumer nor is dropped.

`Settler.settling(message)` wraps the handling of one delivery, as aio-pika's `message.process()`
does: whatever the block leaves unsettled is acked when it returns, handed back after the backoff
when it raises, and handed back at once when it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from aio_pika.abc import AbstractIncomingMessage

from relayflow import metrics
from relayflow.amqp.publisher import OutgoingMessage, Publisher

log = logging.getLogger(__name__)

REASON_HEADER = "x-relayflow-reason"
QUEUE_HEADER = "x-relayflow-queue"
EXCHANGE_HEADER = "x-relayflow-exchange"
DEAD_AT_HEADER = "x-relayflow-dead-lettered-at"

_MAX_REASON = 4000


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long to hold a delivery that could not be handled before handing it back: `first`
    seconds, doubling with each redelivery the queue has counted, up to `longest`. The doubling
    matters: a long outage must not use up the quorum queue's delivery limit, which would
    dead-letter good messages."""

    first: float = 1.0
    longest: float = 30.0

    def after(self, deliveries: int) -> float:
        return float(min(self.first * 2 ** min(deliveries, 16), self.longest))


def delivery_count(message: AbstractIncomingMessage) -> int:
    """How often the broker delivered `message` before (quorum queues count it)."""
    count = (message.headers or {}).get("x-delivery-count", 0)
    return count if isinstance(count, int) else 0


async def hand_back(message: AbstractIncomingMessage) -> None:
    """Requeue `message` now. If the channel is gone the broker requeues it anyway."""
    with contextlib.suppress(Exception):
        await message.nack(requeue=True)


async def ack(message: AbstractIncomingMessage) -> None:
    try:
        await message.ack()
    except Exception:
        log.warning("could not ack %s; it will be redelivered", message.message_id)


async def dead_letter(
    publisher: Publisher,
    dead_letter_exchange: str,
    message: AbstractIncomingMessage,
    reason: str,
) -> None:
    """Move `message` to the dead-letter exchange with `reason`, then ack it. If that publish
    fails, reject it instead: the queue's own dead-letter exchange still keeps it."""
    headers = dict(message.headers or {})
    headers[REASON_HEADER] = reason[:_MAX_REASON]
    headers[QUEUE_HEADER] = message.routing_key or ""
    headers[EXCHANGE_HEADER] = message.exchange or ""
    headers[DEAD_AT_HEADER] = datetime.now(UTC).isoformat()
    log.warning(
        "dead-lettering message %s from %r: %s", message.message_id, message.routing_key, reason
    )
    metrics.count_dead_letter(message.routing_key or "", reason)
    try:
        await publisher.publish(
            OutgoingMessage(
                exchange=dead_letter_exchange,
                routing_key=message.routing_key or "",
                body=message.body,
                message_id=message.message_id or "",
                type=message.type or "",
                headers=headers,
                correlation_id=message.correlation_id,
            )
        )
    except Exception:
        log.exception("could not publish dead letter; rejecting to the queue's DLX instead")
        await message.reject(requeue=False)
    else:
        await message.ack()


class Settler:
    """How one consumer settles its deliveries: where dead letters go, and how long to back off
    before handing a delivery back."""

    def __init__(
        self, publisher: Publisher, dead_letter_exchange: str, *, backoff: Backoff | None = None
    ) -> None:
        self._publisher = publisher
        self._dead_letter_exchange = dead_letter_exchange
        self.backoff = backoff or Backoff()

    async def ack(self, message: AbstractIncomingMessage) -> None:
        await ack(message)

    async def hand_back(self, message: AbstractIncomingMessage) -> None:
        await hand_back(message)

    async def retry_later(self, message: AbstractIncomingMessage) -> None:
        """Hand `message` back after the backoff its delivery count calls for (at once if
        cancelled meanwhile)."""
        try:
            await asyncio.sleep(self.backoff.after(delivery_count(message)))
        finally:
            await hand_back(message)

    async def dead_letter(self, message: AbstractIncomingMessage, reason: str) -> None:
        await dead_letter(self._publisher, self._dead_letter_exchange, message, reason)

    @contextlib.asynccontextmanager
    async def settling(self, message: AbstractIncomingMessage) -> AsyncIterator[None]:
        """Settle what the block leaves unsettled: ack when it returns; when it raises, log and
        hand back after the backoff (the error goes no further: the delivery is the retry);
        when it is cancelled, hand back at once and let the cancellation go on."""
        try:
            yield
        except asyncio.CancelledError:
            await hand_back(message)
            raise
        except Exception:
            if message.processed:  # settled before it failed: nothing to hand back
                log.exception("failed after settling %s", message.message_id)
                return
            log.exception(
                "could not handle %s; handing it back in %.1fs",
                message.message_id,
                self.backoff.after(delivery_count(message)),
            )
            await self.retry_later(message)
            return
        if not message.processed:
            await ack(message)
