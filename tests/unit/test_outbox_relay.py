"""The outbox relay's bookkeeping of confirmed rows, which transactions take to delete them."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

import pytest

from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.orchestration.relay import OutboxRelay
from relayflow.orchestration.store import OutboxRow


class SlowPublisher:
    """Confirms everything, once `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.publishing = asyncio.Event()

    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        self.publishing.set()
        await self.release.wait()
        return [None] * len(messages)


def row(row_id: int) -> OutboxRow:
    message = OutgoingMessage(
        exchange="x", routing_key="k", body=b"{}", message_id=f"m{row_id}", type="T"
    )
    return OutboxRow(row_id, message)


def taken(relay: OutboxRelay) -> list[int]:
    with relay.take_sent() as sent:
        return list(sent)


async def test_rows_confirmed_while_a_transaction_took_the_list_are_kept_for_the_next() -> None:
    """A transaction may take the confirmed ids while a publish is awaiting its confirms; the ids
    confirmed after that must land in the relay's new list, not in the one already taken."""
    publisher = SlowPublisher()
    relay = OutboxRelay(cast(Any, None), cast(Publisher, publisher))
    publisher.release.set()
    await relay.publish([row(1)])
    publisher.release.clear()
    publisher.publishing.clear()
    publishing = asyncio.create_task(relay.publish([row(2), row(3)]))
    await publisher.publishing.wait()
    assert taken(relay) == [1]
    publisher.release.set()
    await publishing
    assert taken(relay) == [2, 3]
    assert taken(relay) == []


async def test_ids_taken_by_a_failed_transaction_go_back_to_the_relay() -> None:
    publisher = SlowPublisher()
    publisher.release.set()
    relay = OutboxRelay(cast(Any, None), cast(Publisher, publisher))
    await relay.publish([row(4), row(5)])

    def roll_back() -> None:
        with relay.take_sent():
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        roll_back()
    assert taken(relay) == [4, 5]


class FailingPublisher:
    async def publish_many(self, messages: Sequence[OutgoingMessage]) -> list[BaseException | None]:
        raise ConnectionError("broker gone")


async def test_what_submit_returns_is_done_once_the_broker_answered_for_the_rows() -> None:
    """The orchestrator acks a batch's inputs when it is done: not before the batch's own
    messages are confirmed, and never not at all (a refused publish is the sweep's)."""
    publisher = SlowPublisher()
    relay = OutboxRelay(cast(Any, None), cast(Publisher, publisher), sweep_interval=3600)
    relay.start()
    try:
        assert relay.submit([]).done()
        published = relay.submit([row(6)])
        await publisher.publishing.wait()
        assert not published.done()
        publisher.release.set()
        await asyncio.wait_for(published, 5)
        assert taken(relay) == [6]
    finally:
        await relay.stop(grace=0)

    failing = OutboxRelay(cast(Any, None), cast(Publisher, FailingPublisher()), sweep_interval=3600)
    failing.start()
    try:
        await asyncio.wait_for(failing.submit([row(7)]), 5)
        assert taken(failing) == []
    finally:
        await failing.stop(grace=0)
