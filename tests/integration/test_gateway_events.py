"""Event streams over SSE: every seq exactly once and in order, whether the client connects
before, during or after the run, with live events duplicated, reordered or missing."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import aio_pika
import asyncpg
import httpx
import pytest
from hypothesis import given
from hypothesis import settings as settings_
from hypothesis import strategies as st

from relayflow.amqp import OutgoingMessage, Publisher
from relayflow.contracts import EventType, WorkflowEvent, new_message_id, new_workflow_id
from relayflow.settings import Settings
from relayflow.topology import Topology
from services.gateway.events import EventHub, LiveEvent, Signal
from services.gateway.stream import Outgoing, Sequencer
from tests.integration.gateway_harness import (
    RunningGateway,
    SseEvent,
    SseStream,
    event_schema,
    running_gateway,
    seed_document,
)
from tests.support import get_messages, raw_headers, wait_for

STEPS = ["validate", "persist", "publishToMQ", "awaitResponse", "finalize"]


class Run:
    """Plays the orchestrator's part: commit the event, then publish it on the fanout."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        publisher: Publisher,
        topology: Topology,
        last: int = 6,
        name: str = "formSubmission",
    ) -> None:
        self.workflow_id = new_workflow_id()
        self.name = name
        self.last = last  # the seq of the terminal event
        self.kinds: dict[int, EventType] = {}  # overrides of the default event per seq
        self.padding = 0  # bytes of filler in each event's data
        self.pool = pool
        self.publisher = publisher
        self.topology = topology
        self.events: dict[int, WorkflowEvent] = {}

    def event(self, seq: int) -> WorkflowEvent:
        if seq not in self.events:
            kind, step = EventType.WORKFLOW_STARTED, None
            if seq in self.kinds:
                kind = self.kinds[seq]
                if kind.value.startswith("step."):
                    step = STEPS[0]
            elif seq == self.last:
                kind = EventType.WORKFLOW_COMPLETED
            elif seq > 1:
                kind = EventType.STEP_STARTED if seq % 2 == 0 else EventType.STEP_COMPLETED
                step = STEPS[(seq // 2 - 1) % len(STEPS)]
            self.events[seq] = WorkflowEvent(
                message_id=new_message_id(),
                workflow_id=self.workflow_id,
                workflow_name=self.name,
                seq=seq,
                event=kind,
                step_name=step,
                data={"n": seq, "filler": "x" * self.padding},
            )
        return self.events[seq]

    def body(self, seq: int) -> dict[str, Any]:
        return self.event(seq).model_dump(mode="json", by_alias=True, exclude_none=True)

    async def store(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            event = self.event(seq)
            await self.pool.execute(
                "INSERT INTO workflow_events (workflow_id, seq, event, body, created_at) "
                "VALUES ($1, $2, $3, $4, now())",
                self.workflow_id,
                seq,
                str(event.event),
                self.body(seq),
            )

    async def publish(self, seqs: Iterable[int]) -> None:
        for seq in seqs:
            await self.publisher.publish(
                OutgoingMessage.of(
                    self.event(seq),
                    exchange=self.topology.events_exchange,
                    routing_key="",
                    mandatory=False,
                )
            )

    async def burst(self, seqs: Iterable[int]) -> None:
        """Publish concurrently (confirms pipelined), so events arrive back to back."""
        messages = [
            OutgoingMessage.of(
                self.event(seq),
                exchange=self.topology.events_exchange,
                routing_key="",
                mandatory=False,
            )
            for seq in seqs
        ]
        assert not any(await self.publisher.publish_many(messages))

    async def emit(self, seqs: Iterable[int]) -> None:
        seqs = list(seqs)
        await self.store(seqs)
        await self.publish(seqs)

    def url(self) -> str:
        return f"/workflows/{self.workflow_id}/events"

    async def save_state(self, status: str, last_seq: int) -> None:
        """The workflow row as the orchestrator commits it with its events."""
        await self.pool.execute(
            """
            INSERT INTO workflows (id, name, status, input, input_hash, steps, last_seq,
                                   created_at, updated_at)
            VALUES ($1, $2, $3, '{}', 'h', '{}', $4, now(), now())
            ON CONFLICT (id) DO UPDATE SET status = $3, last_seq = $4, updated_at = now()
            """,
            self.workflow_id,
            self.name,
            status,
            last_seq,
        )


@pytest.fixture
async def publisher(
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> AsyncIterator[Publisher]:
    publisher = await Publisher.open(amqp_connection)
    yield publisher
    await publisher.close()


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, gateway_unknown_workflow_wait=30.0) as gateway:
        yield gateway


@pytest.fixture
def run(pool: asyncpg.Pool[Any], publisher: Publisher, topology: Topology) -> Run:
    return Run(pool, publisher, topology)


def assert_exactly(events: list[SseEvent], run: Run, seqs: Iterable[int]) -> None:
    expected = list(seqs)
    assert [e.seq for e in events] == expected
    assert [e.event for e in events] == [str(run.event(s).event) for s in expected]
    assert [e.data for e in events] == [run.body(s) for s in expected]


async def connected(
    gateway: RunningGateway,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    resume: asyncio.Event | None = None,
) -> tuple[SseStream, asyncio.Task[list[SseEvent]]]:
    stream = SseStream(gateway.client, url, headers=headers or {}, resume=resume)
    task = stream.start()
    await asyncio.wait_for(stream.connected.wait(), 10)
    assert stream.status_code == 200
    assert stream.content_type is not None
    assert stream.content_type.startswith("text/event-stream")
    return stream, task


async def test_clients_before_during_and_after_see_every_event_once_in_order(
    gateway: RunningGateway, run: Run
) -> None:
    """The stream's contract: subscribe, replay, follow, fill gaps — whenever the client
    connects, with live events duplicated, out of order, or never delivered live at all."""
    _, before = await connected(gateway, run.url())  # not even the workflow exists yet
    await run.emit([1, 2])
    _, during = await connected(gateway, run.url())
    await run.store([3, 4])
    await run.publish([4, 2, 1])  # 3 is never published live: a gap, filled from PostgreSQL
    await run.emit([5])
    await run.store([6])
    await run.publish([6, 3, 6])  # terminal first, then a late 3, then a duplicate
    async with asyncio.timeout(20):
        seen_before, seen_during = await asyncio.gather(before, during)
    _, after = await connected(gateway, run.url())
    async with asyncio.timeout(20):
        seen_after = await after
    for seen in (seen_before, seen_during, seen_after):
        assert_exactly(seen, run, range(1, 7))
    documented_events = event_schema(seed_document(), "/workflows/{workflowId}/events")
    assert all(documented_events.is_valid(event.data) for event in seen_after)


async def test_last_event_id_resumes_after_that_seq(gateway: RunningGateway, run: Run) -> None:
    """A reconnecting EventSource sends Last-Event-ID; it must get only what it has not seen,
    first from PostgreSQL, then live, until the terminal event."""
    await run.emit([1, 2, 3])
    _, task = await connected(gateway, run.url(), headers={"Last-Event-ID": "2"})
    await run.emit([4, 5])
    await run.emit([6])
    async with asyncio.timeout(20):
        assert_exactly(await task, run, [3, 4, 5, 6])
    _, by_query = await connected(gateway, f"{run.url()}?lastEventId=4")
    async with asyncio.timeout(20):
        assert_exactly(await by_query, run, [5, 6])


@pytest.mark.parametrize(
    ("headers", "query", "named"),
    [
        pytest.param({"Last-Event-ID": "abc"}, "", "Last-Event-ID", id="letters"),
        pytest.param({"Last-Event-ID": "2147483648"}, "", "Last-Event-ID", id="over-int4"),
        pytest.param({"Last-Event-ID": "9" * 5000}, "", "Last-Event-ID", id="5000-digits"),
        pytest.param({"Last-Event-ID": b"\xb2"}, "", "Last-Event-ID", id="superscript"),
        pytest.param({}, "?lastEventId=", "lastEventId", id="empty-query"),
        pytest.param({}, "?lastEventId=%D9%A1", "lastEventId", id="arabic-indic-query"),
        pytest.param({"Last-Event-ID": "3"}, "?lastEventId=x", "lastEventId", id="bad-unused"),
    ],
)
async def test_a_last_event_id_that_is_no_seq_is_400_before_any_stream(
    gateway: RunningGateway,
    run: Run,
    headers: dict[str, str | bytes],
    query: str,
    named: str,
) -> None:
    """Resuming needs a seq the integer column can hold: anything else was a 200 stream that
    PostgreSQL then cut (over 2^31-1), a 500 (digits int() refuses), or a silent replay of
    everything. The workflow is not stored yet, so only the check can answer."""
    response = await gateway.client.get(run.url() + query, headers=raw_headers(headers))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert named in response.json()["error"]


async def test_the_largest_seq_is_a_valid_last_event_id(settings: Settings, run: Run) -> None:
    """2^31-1 is a seq like any other: for a workflow not stored yet the stream stays open past
    its replay (pings arrive), and once the workflow has finished the answer is 204."""
    headers = {"Last-Event-ID": str(2**31 - 1)}
    async with running_gateway(settings, gateway_ping_interval=0.1) as gateway:
        stream, task = await connected(gateway, run.url(), headers=headers)
        await until(lambda: stream.pings >= 2)
        assert not task.done()
        task.cancel()
        await run.emit(range(1, 7))
        await run.save_state("completed", 6)
        finished = await gateway.client.get(run.url(), headers=headers)
    assert finished.status_code == 204
    assert stream.events == []


async def test_unknown_workflow_stream_ends_with_an_unknown_event(
    settings: Settings, run: Run
) -> None:
    """A stream for an id that never starts must not hang forever: after the bounded wait it
    says so with one `workflow.unknown` event and closes; meanwhile pings keep proxies open."""
    async with running_gateway(
        settings, gateway_unknown_workflow_wait=1.0, gateway_ping_interval=0.2
    ) as gateway:
        stream, task = await connected(gateway, run.url())
        async with asyncio.timeout(10):
            (event,) = await task
    assert stream.pings >= 1  # keep-alive comments while nothing happens
    assert event.event == "workflow.unknown"
    assert event.id is None
    assert event.data["workflowId"] == run.workflow_id
    documented_events = event_schema(seed_document(), "/workflows/{workflowId}/events")
    assert documented_events.is_valid(event.data), event.data


async def test_unreadable_events_are_dead_lettered_and_the_hub_keeps_going(
    gateway: RunningGateway,
    run: Run,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    """A garbage message on the events fanout must neither kill the one consumer every stream
    depends on nor vanish: like every consumer's, it goes to the dead letters with its reason."""
    _, task = await connected(gateway, run.url())
    channel = await amqp_connection.channel()
    exchange = await channel.get_exchange(topology.events_exchange)
    garbage = {"not-json": b"{not json", "not-an-event": b'{"type": "WorkflowEvent"}'}
    for message_id, body in garbage.items():
        await exchange.publish(aio_pika.Message(body, message_id=message_id), routing_key="")
    await run.emit(range(1, 7))
    async with asyncio.timeout(20):
        assert_exactly(await task, run, range(1, 7))
    letters = [
        message
        async for message in get_messages(channel, topology.dead_letter_queue, count=len(garbage))
    ]
    await channel.close()
    assert {letter.message_id: letter.body for letter in letters} == garbage
    for letter in letters:
        reason = (letter.headers or {}).get("x-relayflow-reason")
        assert isinstance(reason, str)
        assert reason.startswith("invalid workflow event: "), reason


async def test_a_slow_stream_neither_stalls_others_nor_loses_events(
    settings: Settings, run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that stops reading fills its socket, then its subscriber queue: the hub must
    keep serving the other streams, and the slow one must resync from PostgreSQL once it reads
    again, still with every seq once."""
    caplog.set_level(logging.DEBUG, logger="services.gateway.events")
    run.last, run.padding = 200, 100_000  # ~20 MB: more than the server's send buffer holds
    # The slow client's receive buffer is pinned small, so loopback auto-tuning (up to tens of
    # MB here) cannot absorb the burst and hide the back-pressure this test is about.
    small_buffer = httpx.AsyncHTTPTransport(
        socket_options=[(socket.SOL_SOCKET, socket.SO_RCVBUF, 16_384)]
    )
    async with (
        running_gateway(settings, gateway_subscriber_buffer=4) as gateway,
        httpx.AsyncClient(
            transport=small_buffer, base_url=gateway.client.base_url, timeout=30
        ) as slow_client,
    ):
        resume = asyncio.Event()
        slow_stream = SseStream(slow_client, run.url(), headers={}, resume=resume)
        slow = slow_stream.start()
        await asyncio.wait_for(slow_stream.connected.wait(), 10)
        _, fast = await connected(gateway, run.url())
        await run.store(range(1, 201))
        await run.burst(range(1, 201))
        async with asyncio.timeout(30):
            assert_exactly(await fast, run, range(1, 201))
        assert not slow.done()
        resume.set()
        async with asyncio.timeout(30):
            assert_exactly(await slow, run, range(1, 201))
    assert any("fell behind" in record.getMessage() for record in caplog.records)


async def test_stopping_gateway_ends_open_streams(settings: Settings, run: Run) -> None:
    """uvicorn waits for open connections before it shuts down; a stopping gateway must end its
    event streams (clients resume elsewhere with Last-Event-ID) instead of hanging."""
    async with running_gateway(settings) as gateway:
        await run.emit([1])
        _, task = await connected(gateway, run.url())
        loop = asyncio.get_running_loop()
        began = loop.time()
        gateway.stop.set()
        async with asyncio.timeout(10):
            seen = await task
            await gateway.serving
        assert loop.time() - began < 5
    assert_exactly(seen, run, [1])


async def test_hub_drops_a_full_subscriber_to_a_resync_marker() -> None:
    """The hub never blocks on a slow stream: a full queue is emptied and left with RESYNC,
    while other subscribers of the same workflow keep every event."""
    hub = EventHub(buffer=2)
    slow = hub.subscribe("wf_x")
    fast = hub.subscribe("wf_x")
    other = hub.subscribe("wf_y")
    for seq in (1, 2, 3):
        event = LiveEvent("wf_x", seq, "step.started", {"seq": seq}, terminal=False)
        hub.dispatch(event)
        if seq < 3:
            got = await fast.get(1)
            assert isinstance(got, LiveEvent)
            assert got.seq == seq
    assert await slow.get(1) is Signal.RESYNC
    assert await slow.get(0.01) is None
    assert await other.get(0.01) is None
    hub.close()
    assert await fast.get(1) is not None  # seq 3, then CLOSED
    assert await fast.get(1) is Signal.CLOSED
    assert hub.subscribe("wf_z") is not None
    assert hub.subscriber_count == 0


@settings_(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=12),
    data=st.data(),
)
def test_sequencer_emits_each_seq_once_in_order_whatever_the_arrival_order(
    n: int, data: st.DataObject
) -> None:
    """Live events arrive duplicated and out of order; the sequencer alone must turn any arrival
    order that eventually holds every seq into 1..n exactly once, ending at the terminal one."""
    arrivals = data.draw(
        st.lists(st.integers(min_value=1, max_value=n), max_size=3 * n).map(
            lambda extra: [*range(1, n + 1), *extra]
        )
    )
    order = data.draw(st.permutations(arrivals))
    sequencer = Sequencer()
    sent: list[int] = []
    for seq in order:
        kind = "workflow.completed" if seq == n else "step.started"
        sent.extend(event.seq for event in sequencer.accept([Outgoing(seq, kind, {})]))
    assert sent == list(range(1, n + 1))
    assert sequencer.finished
    assert not sequencer.has_gap


async def test_a_client_that_saw_the_end_gets_204_and_a_retried_workflow_streams_on(
    gateway: RunningGateway, run: Run
) -> None:
    """Browsers reconnect whenever a stream ends; only a 204 stops them. Once a client has seen
    the terminal event of a finished workflow it gets 204 — but a failed workflow can be retried,
    and then the same reconnect must stream the new events (and a fresh client must not stop at
    the old terminal event)."""
    run.last = 7
    run.kinds = {4: EventType.WORKFLOW_FAILED, 5: EventType.WORKFLOW_RETRIED}
    await run.emit([1, 2, 3, 4])
    await run.save_state("failed", 4)
    _, first = await connected(gateway, run.url())
    async with asyncio.timeout(20):
        assert_exactly(await first, run, [1, 2, 3, 4])
    for headers in ({"Last-Event-ID": "4"}, {"Last-Event-ID": "9"}):
        ended = await gateway.client.get(run.url(), headers=headers)
        assert ended.status_code == 204
        assert ended.content == b""

    await run.emit([5])  # workflow.retried: running again
    await run.save_state("running", 5)
    _, resumed = await connected(gateway, run.url(), headers={"Last-Event-ID": "4"})
    _, fresh = await connected(gateway, run.url())
    await run.emit([6, 7])
    await run.save_state("completed", 7)
    async with asyncio.timeout(20):
        assert_exactly(await resumed, run, [5, 6, 7])
        assert_exactly(await fresh, run, range(1, 8))
    assert (await gateway.client.get(run.url(), headers={"Last-Event-ID": "7"})).status_code == 204


async def test_every_gateway_replica_delivers_every_event_to_its_own_clients(
    settings: Settings, run: Run
) -> None:
    """Behind a load balancer each browser talks to one replica: each replica's queue on the
    events fanout must see every event, not a share of them."""
    async with running_gateway(settings) as one, running_gateway(settings) as two:
        _, on_one = await connected(one, run.url())
        _, on_two = await connected(two, run.url())
        feeds = [await connected(gateway, "/events") for gateway in (one, two)]
        await run.emit(range(1, 7))
        async with asyncio.timeout(20):
            assert_exactly(await on_one, run, range(1, 7))
            assert_exactly(await on_two, run, range(1, 7))
        for stream, task in feeds:
            await until_events(stream, lambda events: len(events) >= 7)
            task.cancel()
            assert [e.event for e in stream.events] == [
                "reset",
                *(run.body(s)["event"] for s in range(1, 7)),
            ]


async def until(done: Callable[[], bool], timeout: float = 20) -> None:
    async def check() -> bool:
        return done()

    await wait_for(check, timeout=timeout)


async def until_events(stream: SseStream, done: Any, timeout: float = 20) -> list[SseEvent]:
    async def check() -> bool:
        return bool(done(stream.events))

    await wait_for(check, timeout=timeout)
    return stream.events


def seqs_of(events: Iterable[SseEvent], run: Run) -> list[int]:
    return [
        e.data["seq"]
        for e in events
        if e.event != "reset" and e.data["workflowId"] == run.workflow_id
    ]


async def test_feed_starts_with_reset_filters_and_resumes_without_gap(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    publisher: Publisher,
    topology: Topology,
) -> None:
    """The dashboard's feed: a new client is told to load the list (`reset`), filters keep to a
    workflow name or a status, and a client that reconnects to the same gateway with its
    Last-Event-ID gets exactly what it missed; an id it cannot resume from gets a reset."""
    mine = Run(pool, publisher, topology, name="feedTest")
    other = Run(pool, publisher, topology, name="otherFlow")
    all_stream, all_task = await connected(gateway, "/events")
    named, named_task = await connected(gateway, "/events?workflow=feedTest")
    done_stream, done_task = await connected(gateway, "/events?status=completed")
    await mine.emit([1, 2, 3])
    await other.emit([1, 2])
    events = await until_events(all_stream, lambda ev: len(ev) >= 6)
    assert events[0].event == "reset"
    assert events[0].data == {"reason": "connected"}
    documented_events = event_schema(seed_document(), "/events")
    for event in events:
        assert documented_events.is_valid(event.data), event.data
    await until_events(named, lambda ev: len(ev) >= 4)
    assert seqs_of(named.events, mine) == [1, 2, 3]
    assert {e.data["workflowName"] for e in named.events[1:]} == {"feedTest"}
    resume_from = named.events[2].id  # seen up to mine's seq 2
    named_task.cancel()

    await mine.emit([4, 5])
    await mine.emit([6])  # the terminal event
    await other.emit([3, 4, 5, 6])
    await until_events(all_stream, lambda ev: len(ev) >= 13)  # the hub has them all
    stream_r, task_r = await connected(
        gateway, "/events?workflow=feedTest", headers={"Last-Event-ID": str(resume_from)}
    )
    await until_events(stream_r, lambda ev: len(ev) >= 4)
    assert stream_r.events[0].event != "reset"
    assert seqs_of(stream_r.events, mine) == [3, 4, 5, 6]
    task_r.cancel()

    await until_events(done_stream, lambda ev: len(ev) >= 3)
    assert [e.event for e in done_stream.events] == [
        "reset",
        "workflow.completed",
        "workflow.completed",
    ]
    done_task.cancel()

    stale, stale_task = await connected(gateway, "/events", headers={"Last-Event-ID": "nope.3"})
    await until_events(stale, lambda ev: len(ev) >= 1)
    assert stale.events[0].event == "reset"
    stale_task.cancel()
    await until_events(all_stream, lambda ev: len(ev) >= 13)
    ids = [e.id for e in all_stream.events]
    assert len(set(ids)) == len(ids)
    all_task.cancel()


async def test_feed_and_list_parameters_are_checked(gateway: RunningGateway) -> None:
    """A filter the gateway cannot apply is refused, not silently ignored."""
    assert (await gateway.client.get("/events?status=sleeping")).status_code == 400
    assert (await gateway.client.get("/events?workflow=no%20such")).status_code == 400
