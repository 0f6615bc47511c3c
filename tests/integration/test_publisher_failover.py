"""A publisher opened on a connection outlasts what a failover does to its channel: a lost
connection and a nacking channel are both retried until the publish's timeout, on the real
broker (the shared node: only our own queues and a proxied link of our own are touched)."""

from __future__ import annotations

import asyncio
import logging

import aio_pika
import pytest

from relayflow.amqp import OutgoingMessage, Publisher, connect, quietly
from relayflow.amqp.connection import redact
from tests.support import unique_name
from tests.tools.fault_proxy import FaultProxy


def message(queue: str, n: int) -> OutgoingMessage:
    return OutgoingMessage(
        exchange="", routing_key=queue, body=b"{}", message_id=f"m{n}", type="Probe"
    )


async def test_a_nacked_publish_is_retried_on_a_fresh_channel_until_taken(
    amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A full queue that rejects publishes nacks them, like a quorum queue after its leader's
    node died; once it has room again, the retry (on a new channel) is confirmed."""
    connection = await connect(amqp_url, name="test-publisher-nack")
    queue = unique_name("nacks-")
    channel = await connection.channel()
    full = await channel.declare_queue(
        queue, auto_delete=True, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
    )
    publisher = await Publisher.open(connection, confirm_timeout=10)
    try:
        await publisher.publish(message(queue, 1))
        caplog.set_level(logging.WARNING, "relayflow.amqp.publisher")
        second = asyncio.create_task(publisher.publish(message(queue, 2)))

        async def nacked() -> bool:
            return "the broker nacked a publish" in caplog.text

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not await nacked():
            assert loop.time() < deadline, "never nacked"
            await asyncio.sleep(0.05)
        assert not second.done()
        await full.purge()
        await asyncio.wait_for(second, 10)
        taken = await full.get(no_ack=True, fail=False)
        assert taken is not None
        assert taken.message_id == "m2"
    finally:
        await publisher.close()
        await quietly("closing", connection.close)


async def test_a_nacked_publish_fails_after_its_timeout(amqp_url: str) -> None:
    connection = await connect(amqp_url, name="test-publisher-nack-timeout")
    queue = unique_name("nacks-")
    channel = await connection.channel()
    await channel.declare_queue(
        queue, auto_delete=True, arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    publisher = await Publisher.open(connection, confirm_timeout=1.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(aio_pika.exceptions.DeliveryError):
            await publisher.publish(message(queue, 1))
        assert 1.4 < loop.time() - started < 5
    finally:
        await publisher.close()
        await quietly("closing", connection.close)


async def test_a_publish_across_a_cut_link_is_retried_after_the_reconnection(
    amqp_url: str,
) -> None:
    host, _, port = redact(amqp_url).split("//")[1].split("/")[0].partition(":")
    async with FaultProxy((host, int(port or 5672))) as proxy:
        proxied = amqp_url.replace(f"{host}:{port or 5672}", f"127.0.0.1:{proxy.port}")
        connection = await connect(proxied, name="test-publisher-cut")
        queue = unique_name("cut-")
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, auto_delete=False, durable=True)
        publisher = await Publisher.open(connection, confirm_timeout=15)
        try:
            proxy.blackhole()
            publishing = asyncio.create_task(publisher.publish(message(queue, 1)))
            await asyncio.sleep(0.3)
            assert not publishing.done()
            proxy.pass_through()  # closes the links that lost bytes: the client reconnects
            await asyncio.wait_for(publishing, 15)
        finally:
            await publisher.close()
            await quietly("closing", connection.close)
    direct = await aio_pika.connect(amqp_url)
    try:
        check = await direct.channel()
        queue_now = await check.declare_queue(queue, passive=True)
        assert queue_now.declaration_result.message_count in (1, 2)  # a retry may copy it
        await check.queue_delete(queue)
    finally:
        await direct.close()
    assert declared.name == queue
