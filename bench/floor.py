"""The machine's floor for one remote step (issue 12), measured in the same run as our figures.

A step of ours is, at the least, a command and its result through the broker and two commits
(the orchestrator's and the step service's). This part measures what those cost on this broker
and this database with nothing of ours in the way, using the same libraries (aio-pika, asyncpg):

- **the round trip**: the bench publishes a persistent message, mandatory, with publisher
  confirms, on a durable quorum queue (the default `RELAYFLOW_QUEUE_TYPE`); a consumer in
  another process (`python -m bench.floor REQUEST REPLY`, started by the bench) receives it,
  publishes a reply the same way on a second quorum queue, waits for that publish's confirm and
  only then acks the request (as our step service acks a command after its result is
  confirmed); the bench has the round trip once it holds both its own confirm and the reply.
  At 1 in flight: median and p99.
- **a commit**: a small INSERT on PostgreSQL, committed (synchronous_commit as the server has
  it), at 1 in flight: median and p99, once as a single autocommit statement (one round trip
  and the WAL flush: the floor) and once as BEGIN / INSERT / COMMIT, as asyncpg's
  `transaction()` sends it (three round trips: shown beside).

The floor of a step is the round trip's median plus two autocommit commits' medians. Our
marginal cost of a step and our p50 at 1 in flight are reported as multiples of it
(`bench.report.with_floor`).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

import aio_pika
import asyncpg
from aio_pika.abc import AbstractIncomingMessage
from pamqp.common import FieldTable

from bench.infra import Infra, Processes, unique, wait_until
from bench.measure import percentile

QUEUE_ARGUMENTS: FieldTable = {"x-queue-type": "quorum"}


class Floor(TypedDict):
    """What one floor run measured, ms; `load` is the 1-, 5- and 15-minute load average then."""

    n: int
    runs: int  # repetitions this is the median of
    when: str  # when in the run it was measured
    queue_type: str
    round_trip_p50_ms: float
    round_trip_p99_ms: float
    confirm_p50_ms: float  # the bench's publish → its confirm, within the round trip
    commit_p50_ms: float
    commit_p99_ms: float
    transaction_p50_ms: float  # BEGIN / INSERT / COMMIT
    step_floor_ms: float  # round trip p50 + 2 commits p50
    load: tuple[float, float, float]


def _ms(seconds: list[float], q: float) -> float:
    return round(percentile(seconds, q) * 1000, 3)


async def round_trips(amqp_url: str, request: str, reply: str, n: int) -> tuple[list[float], ...]:
    """`n` confirmed publishes on `request`, each answered on `reply` by the consumer process:
    (round trips, confirms) in seconds."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        replies = await channel.declare_queue(reply, durable=True, arguments=QUEUE_ARGUMENTS)
        waiting: dict[str, asyncio.Future[None]] = {}

        async def on_reply(message: AbstractIncomingMessage) -> None:
            await message.ack()
            future = waiting.pop(message.correlation_id or "", None)
            if future is not None and not future.done():
                future.set_result(None)

        await replies.consume(on_reply)
        loop = asyncio.get_running_loop()
        trips: list[float] = []
        confirms: list[float] = []
        for i in range(n):
            key = str(i)
            waiting[key] = answered = loop.create_future()
            t0 = time.perf_counter()
            await channel.default_exchange.publish(
                aio_pika.Message(
                    b'{"n": %d}' % i,
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    correlation_id=key,
                    content_type="application/json",
                ),
                routing_key=request,
                mandatory=True,
            )
            confirmed = time.perf_counter()
            async with asyncio.timeout(30):
                await answered
            trips.append(time.perf_counter() - t0)
            confirms.append(confirmed - t0)
        return trips, confirms
    finally:
        await connection.close()


async def commits(database_url: str, n: int) -> tuple[list[float], list[float]]:
    """`n` autocommit INSERTs and `n` BEGIN / INSERT / COMMIT, alternating: seconds each."""
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "CREATE TABLE floor_rows (id bigserial PRIMARY KEY, step text NOT NULL, "
            "output jsonb NOT NULL)"
        )
        insert = "INSERT INTO floor_rows (step, output) VALUES ($1, $2::jsonb)"
        single: list[float] = []
        transaction: list[float] = []
        for i in range(n):
            t0 = time.perf_counter()
            await conn.execute(insert, f"s{i}", '{"ok": true}')
            t1 = time.perf_counter()
            async with conn.transaction():
                await conn.execute(insert, f"t{i}", '{"ok": true}')
            t2 = time.perf_counter()
            single.append(t1 - t0)
            transaction.append(t2 - t1)
        return single, transaction
    finally:
        await conn.close()


async def run_floor(
    infra: Infra, log_dir: Path, *, n: int, warmup: int = 20, when: str = "on its own"
) -> Floor:
    """Start the consumer process, measure `n` round trips and `n` commits of each kind (after
    `warmup` of each, not counted), stop it and remove its queues and database."""
    request, reply = unique("benchfloor.req."), unique("benchfloor.reply.")
    database = unique("bench_floor_")
    processes = Processes(log_dir / "floor", {**os.environ, "AMQP_URL": infra.amqp_url})
    try:
        connection = await aio_pika.connect(infra.amqp_url)
        try:
            channel = await connection.channel()
            for name in (request, reply):
                await channel.declare_queue(name, durable=True, arguments=QUEUE_ARGUMENTS)
        finally:
            await connection.close()
        await processes.python("floor-consumer", "-m", "bench.floor", request, reply)

        async def consuming() -> bool:
            processes.check_alive()
            return await infra.consumers(request) >= 1

        await wait_until(consuming, timeout=30, what="floor consumer")
        trips, confirms = await round_trips(infra.amqp_url, request, reply, warmup + n)
        url = await infra.create_database(database)
        single, transaction = await commits(url, warmup + n)
    finally:
        await processes.stop()
        await infra.delete_amqp([request, reply], [])
        await infra.drop_database(database)
    trips, confirms = trips[warmup:], confirms[warmup:]
    single, transaction = single[warmup:], transaction[warmup:]
    rtt, commit = _ms(trips, 50), _ms(single, 50)
    return Floor(
        n=n,
        runs=1,
        when=when,
        queue_type="quorum",
        round_trip_p50_ms=rtt,
        round_trip_p99_ms=_ms(trips, 99),
        confirm_p50_ms=_ms(confirms, 50),
        commit_p50_ms=commit,
        commit_p99_ms=_ms(single, 99),
        transaction_p50_ms=_ms(transaction, 50),
        step_floor_ms=round(rtt + 2 * commit, 3),
        load=os.getloadavg(),
    )


def median_floor(floors: list[Floor]) -> Floor:
    """The median of each figure over repetitions (the floor of a step recomputed from the
    medians, so that it stays the round trip plus two commits)."""

    def mid(values: Iterable[float]) -> float:
        return round(statistics.median(values), 3)

    rtt = mid(f["round_trip_p50_ms"] for f in floors)
    commit = mid(f["commit_p50_ms"] for f in floors)
    return Floor(
        n=floors[0]["n"],
        runs=len(floors),
        when=floors[0]["when"],
        queue_type=floors[0]["queue_type"],
        round_trip_p50_ms=rtt,
        round_trip_p99_ms=mid(f["round_trip_p99_ms"] for f in floors),
        confirm_p50_ms=mid(f["confirm_p50_ms"] for f in floors),
        commit_p50_ms=commit,
        commit_p99_ms=mid(f["commit_p99_ms"] for f in floors),
        transaction_p50_ms=mid(f["transaction_p50_ms"] for f in floors),
        step_floor_ms=round(rtt + 2 * commit, 3),
        load=floors[-1]["load"],
    )


async def _consume(request: str, reply: str) -> None:
    """The other process: answer each request on `reply` (persistent, mandatory, confirmed),
    then ack the request."""
    connection = await aio_pika.connect(os.environ["AMQP_URL"])
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        queue = await channel.declare_queue(request, durable=True, arguments=QUEUE_ARGUMENTS)
        async with queue.iterator() as messages:
            async for message in messages:
                await channel.default_exchange.publish(
                    aio_pika.Message(
                        message.body,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        correlation_id=message.correlation_id,
                        content_type="application/json",
                    ),
                    routing_key=reply,
                    mandatory=True,
                )
                await message.ack()


if __name__ == "__main__":
    asyncio.run(_consume(sys.argv[1], sys.argv[2]))
