"""The private RabbitMQ node and PostgreSQL cluster: restartable, and gone afterwards."""

from __future__ import annotations

import asyncio

import aio_pika
import asyncpg
import pytest

from tests.tools.private_services import PrivatePostgres, PrivateRabbit

pytestmark = pytest.mark.e2e


async def test_private_rabbit_restart_keeps_durable_messages_and_cleans_up() -> None:
    """A broker restart must close clients but keep persistent messages in durable queues, and the
    node must be gone (port closed) after the context exits, leaving the shared node alone."""
    async with PrivateRabbit() as rabbit:
        connection = await aio_pika.connect(rabbit.url)
        channel = await connection.channel()
        queue = await channel.declare_queue("durable-q", durable=True)
        await channel.default_exchange.publish(
            aio_pika.Message(b"kept", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key="durable-q",
        )
        await rabbit.restart()
        with pytest.raises(
            (aio_pika.exceptions.AMQPError, aio_pika.exceptions.ChannelInvalidStateError)
        ):
            await channel.declare_queue("durable-q", durable=True)
        # Close the cut connection now: left to the garbage collector, aio-pika schedules its close
        # on whatever loop is current then, which may be another test's or a closed one.
        await connection.close()
        connection = await aio_pika.connect(rabbit.url)
        channel = await connection.channel()
        queue = await channel.declare_queue("durable-q", durable=True)
        message = await queue.get(no_ack=True)
        assert message.body == b"kept"
        await connection.close()
        host, port = rabbit.address
    # Its port is closed. (Asked over TCP, not with aio_pika.connect: a failed connect leaves a
    # half-made Connection whose close coroutine the garbage collector drops unawaited, later,
    # in whichever test runs then.)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(host, port)


async def test_private_postgres_restart_cuts_sessions_and_keeps_data() -> None:
    """A database restart must cut open sessions but keep committed rows."""
    async with PrivatePostgres() as postgres:
        url = await postgres.create_database("probe")
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        await postgres.restart()
        with pytest.raises(
            (asyncpg.PostgresConnectionError, ConnectionError, asyncpg.InterfaceError)
        ):
            await conn.fetchval("SELECT 1")
        conn.terminate()
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT x FROM t") == 1
        await conn.close()
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(url, timeout=2)
