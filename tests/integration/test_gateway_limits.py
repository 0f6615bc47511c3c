"""The gateway's limits (`services.gateway.limits`) against a real gateway, PostgreSQL and
RabbitMQ: a 50 MiB body refused without being held, JSON too deep or with too long a string
refused naming where, the rate limit per client address and per key, and the cap on open event
streams, whose slot comes back when a stream ends."""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from relayflow.auth import AuthSettings, CreatedKey, KeyHasher, Role
from relayflow.settings import Settings
from tests.integration.gateway_harness import (
    WITH_TEST_WORKFLOWS,
    RunningGateway,
    SseStream,
    made_keys,
    running_gateway,
)
from tests.support import wait_for

SECRET = SecretStr("gateway-limits-integration-test-secret-0123456789")
AUTH = AuthSettings(secret=SECRET)
HASHER = KeyHasher.from_secret(SECRET)
MIB = 1024 * 1024
JSON = {"content-type": "application/json"}
MakeKey = Callable[[Role], Awaitable[CreatedKey]]


def bearer(created: CreatedKey) -> dict[str, str]:
    return {"Authorization": f"Bearer {created.key}"}


@pytest.fixture
async def make_key(pool: asyncpg.Pool[Any]) -> AsyncIterator[MakeKey]:
    async with made_keys(pool, HASHER) as make:
        yield make


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, workflows=WITH_TEST_WORKFLOWS) as gateway:
        yield gateway


async def test_a_50_mib_body_is_413_without_the_gateway_holding_it(
    gateway: RunningGateway,
) -> None:
    """Issue 10: a 50 MiB body gets 413 without the gateway's memory growing by it. Sent in
    chunks (no length declared, so the size is known only as it arrives), through uvicorn; the
    process's peak allocation stays a few MiB above where it was, not 50."""
    chunk = b" " * (64 * 1024)  # whitespace: as JSON it would be valid until the end

    async def fifty_mib() -> AsyncIterator[bytes]:
        for _ in range(50 * MIB // len(chunk)):
            yield chunk

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        response = await gateway.client.post("/submit", content=fifty_mib(), headers=JSON)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert response.status_code == 413, response.text
    assert response.json()["error"] == (
        "the request body is larger than the limit of 1048576 bytes (RELAYFLOW_MAX_BODY_BYTES)"
    )
    assert peak - before < 8 * MIB
    # The connection still serves: what was sent after the refusal was read and dropped.
    assert (await gateway.client.get("/healthz")).status_code == 200


async def test_a_declared_length_over_the_limit_is_refused_before_any_byte_is_sent(
    gateway: RunningGateway,
) -> None:
    """A client that announces 50 MiB hears 413 at once, without sending the body (nor waiting
    for the gateway to read it)."""
    host, port = gateway.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"POST /submit HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {50 * MIB}\r\n\r\n".encode()
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    assert head.startswith(b"HTTP/1.1 413"), head


async def test_the_body_limit_has_its_own_setting(settings: Settings) -> None:
    """RELAYFLOW_MAX_BODY_BYTES moves the body's limit; the input limit stays its own."""
    async with running_gateway(settings, max_body_bytes=2048) as gateway:
        message = {"name": "Ada", "email": "ada@example.com", "message": "m" * 3000}
        response = await gateway.client.post("/submit", json=message)
    assert response.status_code == 413, response.text
    assert "2048 bytes (RELAYFLOW_MAX_BODY_BYTES)" in response.json()["error"]


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    ("data", "loc", "kind", "setting"),
    [
        pytest.param(
            {"data": {"a": nested(31)}},
            ["data", "a", *[0] * 30],
            "json_too_deep",
            "RELAYFLOW_MAX_JSON_DEPTH",
            id="deep",
        ),
        pytest.param(
            # As bytes: a JSON encoder would recurse too deep for Python, as orjson's parser would.
            b'{"data": {"a": ' + b"[" * 2000 + b"]" * 2000 + b"}}",
            [],
            "json_too_deep",
            "RELAYFLOW_MAX_JSON_DEPTH",
            id="deeper-than-the-parser",
        ),
        pytest.param(
            {"data": {"notes": ["ok", "x" * (64 * 1024 + 1)]}},
            ["data", "notes", 1],
            "string_too_long",
            "RELAYFLOW_MAX_STRING_LENGTH",
            id="long-string",
        ),
        pytest.param(
            {"data": {"k" * (64 * 1024 + 1): 1}},
            ["data"],
            "string_too_long",
            "RELAYFLOW_MAX_STRING_LENGTH",
            id="long-key",
        ),
    ],
)
async def test_json_too_deep_or_with_too_long_a_string_is_422_naming_where(
    gateway: RunningGateway, data: Any, loc: list[Any], kind: str, setting: str
) -> None:
    """Before the input's model sees it: `fields` points at the place, the error at the
    setting (a model taking any JSON object, as `freeform`'s does, would take it otherwise)."""
    sent = {"content": data, "headers": JSON} if isinstance(data, bytes) else {"json": data}
    response = await gateway.client.post("/workflows/freeform", **sent)
    assert response.status_code == 422, response.text
    body = response.json()
    assert setting in body["error"]
    assert [(field["loc"], field["type"]) for field in body["fields"]] == [(loc, kind)]
    fits = await gateway.client.post("/workflows/freeform", json={"data": {"a": nested(30)}})
    assert fits.status_code == 202, fits.text


async def test_a_signal_payload_is_held_to_the_same_limits(gateway: RunningGateway) -> None:
    """Every JSON body goes through the same read: a signal's payload too."""
    started = await gateway.client.post("/workflows/review", json={"subject": "s"})
    assert started.status_code == 202, started.text
    workflow_id = started.json()["workflowId"]
    response = await gateway.client.post(
        f"/workflows/{workflow_id}/signals/note", json={"text": nested(40)}
    )
    assert response.status_code == 422, response.text
    assert "RELAYFLOW_MAX_JSON_DEPTH" in response.json()["error"]


async def test_open_mode_limits_the_rate_per_client_address(settings: Settings) -> None:
    """Open (no keys): the burst passes, the next request is 429 with Retry-After, and the
    probes and static assets are never limited."""
    # One token per 1000 s: no refill during the test, whatever the clock does.
    async with running_gateway(settings, rate_limit=0.001, rate_burst=3) as gateway:
        answers = [(await gateway.client.get("/workflows")).status_code for _ in range(3)]
        refused = await gateway.client.get("/workflows")
        exempt = [
            (await gateway.client.get(path)).status_code
            for path in ("/healthz", "/readyz", "/static/style.css")
        ]
    assert answers == [200, 200, 200]
    assert refused.status_code == 429, refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 1000
    assert "RELAYFLOW_RATE_LIMIT" in refused.json()["error"]
    assert "client address" in refused.json()["error"]
    assert exempt == [200, 200, 200]


async def test_with_keys_each_key_has_its_own_rate(settings: Settings, make_key: MakeKey) -> None:
    """One busy key cannot slow another; a request without a valid key is a 401, not counted."""
    first, second = await make_key(Role.READ), await make_key(Role.READ)
    async with running_gateway(
        settings, AUTH, auth="required", rate_limit=0.001, rate_burst=2
    ) as gateway:
        client = gateway.client
        answers = [
            (await client.get("/workflows", headers=bearer(first))).status_code for _ in range(2)
        ]
        refused = await client.get("/workflows", headers=bearer(first))
        other = await client.get("/workflows", headers=bearer(second))
        anonymous = await client.get("/workflows")
    assert answers == [200, 200]
    assert refused.status_code == 429, refused.text
    assert "this API key" in refused.json()["error"]
    assert "Retry-After" in refused.headers
    assert other.status_code == 200
    assert anonymous.status_code == 401


@contextlib.asynccontextmanager
async def streams_of(gateway: RunningGateway) -> AsyncIterator[list[asyncio.Task[Any]]]:
    """Stream tasks a test opens; cancelled (their connections closed) at the end."""
    tasks: list[asyncio.Task[Any]] = []
    try:
        yield tasks
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def open_stream(
    gateway: RunningGateway, tasks: list[asyncio.Task[Any]], headers: dict[str, str] | None = None
) -> int:
    """Opens `/events`; its status. A stream that opened stays open, in `tasks`."""
    stream = SseStream(gateway.client, "/events", headers=headers or {})
    task = stream.start()
    await stream.connected.wait()
    assert stream.status_code is not None
    if stream.status_code == 200:
        tasks.append(task)
    else:
        await task
    return stream.status_code


async def test_streams_over_the_cap_are_429_until_one_closes(settings: Settings) -> None:
    """Open mode: N streams per client address; the N+1th is refused; once one ends (the
    client left), its slot is free and a new stream is accepted."""
    async with running_gateway(settings, max_streams=2) as gateway, streams_of(gateway) as tasks:
        assert [await open_stream(gateway, tasks) for _ in range(2)] == [200, 200]
        refused = await gateway.client.get("/events")
        assert refused.status_code == 429, refused.text
        assert "RELAYFLOW_MAX_STREAMS" in refused.json()["error"]
        assert (await gateway.client.get("/workflows")).status_code == 200  # not a stream
        closing = tasks.pop(0)
        closing.cancel()
        await asyncio.gather(closing, return_exceptions=True)

        async def reopened() -> bool:
            return await open_stream(gateway, tasks) == 200

        await wait_for(reopened, timeout=10, what="a stream accepted after one closed")
        assert len(tasks) == 2
        assert (await gateway.client.get("/events")).status_code == 429


async def test_with_keys_the_stream_cap_is_per_key(settings: Settings, make_key: MakeKey) -> None:
    """A key at its cap does not stop another key's streams."""
    first, second = await make_key(Role.READ), await make_key(Role.READ)
    async with (
        running_gateway(settings, AUTH, auth="required", max_streams=1) as gateway,
        streams_of(gateway) as tasks,
    ):
        assert await open_stream(gateway, tasks, bearer(first)) == 200
        assert await open_stream(gateway, tasks, bearer(first)) == 429
        assert await open_stream(gateway, tasks, bearer(second)) == 200
