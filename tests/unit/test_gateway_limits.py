"""The gateway's limits (`services.gateway.limits`) without a server: the body read that stops at
its limit, the JSON depth and string checks, the token bucket on an injected clock, and the
stream slots that a finished or failed response gives back."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from services.gateway.checks import InputError
from services.gateway.limits import (
    Limits,
    RateLimiter,
    StreamSlots,
    check_json,
    read_body,
)
from services.gateway.settings import GatewaySettings

MIB = 1024 * 1024
CHUNK = 64 * 1024


class Clock:
    """Seconds that pass only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Body:
    """A request body sent in chunks, counting how many the server asked for."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pulled = 0

    async def receive(self) -> Message:
        sent = self.pulled * CHUNK
        self.pulled += 1
        chunk = b"x" * min(CHUNK, self.size - sent)
        return {"type": "http.request", "body": chunk, "more_body": sent + CHUNK < self.size}


def request(
    headers: dict[str, str] | None = None, body: Body | None = None, client: str = "10.1.2.3"
) -> Request:
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/workflows/x",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "client": (client, 5000),
    }
    return Request(scope, body.receive if body is not None else Body(0).receive)


def limits(**overrides: Any) -> tuple[Limits, Clock]:
    clock = Clock()
    settings = GatewaySettings.model_validate({"rate_limit": 0, "max_streams": 0, **overrides})
    return Limits.from_settings(settings, clock), clock


# -- body size ---------------------------------------------------------------------------------


async def test_a_50_mib_body_is_refused_after_reading_little_more_than_the_limit() -> None:
    """The memory a request may take is its limit: a 50 MiB body sent in chunks (no length
    declared) is refused at the chunk that crosses 1 MiB, and the rest is never asked for."""
    body = Body(50 * MIB)
    with pytest.raises(InputError) as caught:
        await read_body(request(body=body), MIB)
    assert caught.value.status == 413
    assert "1048576 bytes (RELAYFLOW_MAX_BODY_BYTES)" in caught.value.message
    assert body.pulled == MIB // CHUNK + 1


async def test_a_declared_length_over_the_limit_is_refused_before_reading() -> None:
    """No byte of a body declared too large is read."""
    body = Body(50 * MIB)
    with pytest.raises(InputError) as caught:
        await read_body(request({"Content-Length": str(50 * MIB)}, body), MIB)
    assert caught.value.status == 413
    assert body.pulled == 0


async def test_a_body_at_the_limit_is_read_whole() -> None:
    """The limit is inclusive, and a lying (small) Content-Length does not cut the count."""
    body = Body(MIB)
    assert len(await read_body(request({"Content-Length": "10"}, body), MIB)) == MIB


def test_the_default_body_limit_is_one_mib() -> None:
    """Issue 10: 1 MiB by default, on its own setting, apart from the input limit."""
    settings = GatewaySettings()
    assert settings.max_body_bytes == MIB
    assert settings.max_json_depth == 32
    assert settings.max_string_length == 64 * 1024
    assert (settings.rate_limit, settings.rate_burst, settings.max_streams) == (100, 200, 100)


def test_settings_are_read_from_their_documented_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README names them so; a typo in a field name would silently ignore the variable."""
    for name, value in {
        "RELAYFLOW_MAX_BODY_BYTES": "2048",
        "RELAYFLOW_MAX_JSON_DEPTH": "5",
        "RELAYFLOW_MAX_STRING_LENGTH": "7",
        "RELAYFLOW_RATE_LIMIT": "0.5",
        "RELAYFLOW_RATE_BURST": "3",
        "RELAYFLOW_MAX_STREAMS": "0",
    }.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert (settings.max_body_bytes, settings.max_json_depth, settings.max_string_length) == (
        2048,
        5,
        7,
    )
    assert (settings.rate_limit, settings.rate_burst, settings.max_streams) == (0.5, 3, 0)


# -- JSON shape --------------------------------------------------------------------------------


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for level in range(depth):
        value = {"k": value} if level % 2 else [value]
    return value


def test_depth_at_the_limit_passes_and_one_more_is_422_naming_the_path() -> None:
    """32 containers deep is fine by default; the 33rd is named by its path."""
    check_json(nested(32), max_depth=32, max_string=100)
    with pytest.raises(InputError) as caught:
        check_json({"a": [{"b": [[1]]}]}, max_depth=4, max_string=100)
    assert caught.value.status == 422
    assert "a.0.b.0" in caught.value.message
    assert "RELAYFLOW_MAX_JSON_DEPTH" in caught.value.message
    assert caught.value.fields is not None
    assert (caught.value.fields[0].loc, caught.value.fields[0].type) == (
        ["a", 0, "b", 0],
        "json_too_deep",
    )


def test_a_document_as_deep_as_the_parser_allows_does_not_exhaust_the_stack() -> None:
    """orjson parses 1024 levels; Python's recursion limit is 1000: the check must loop."""
    with pytest.raises(InputError):
        check_json(nested(1024), max_depth=1024 - 1, max_string=100)
    check_json(nested(1024), max_depth=1024, max_string=100)


@pytest.mark.parametrize(
    ("data", "loc", "where"),
    [
        pytest.param("x" * 11, [], "the string at the top level", id="top-level"),
        pytest.param({"a": [1, {"b": "x" * 11}]}, ["a", 1, "b"], "the string at a.1.b", id="deep"),
        pytest.param({"a": {"k" * 11: 1}}, ["a"], "a key at a", id="key"),
    ],
)
def test_a_long_string_or_key_is_422_naming_where(data: Any, loc: list[Any], where: str) -> None:
    """A value or a key: the client is told which, where, the limit and the setting."""
    with pytest.raises(InputError) as caught:
        check_json(data, max_depth=10, max_string=10)
    assert caught.value.status == 422
    assert caught.value.message.startswith(f"{where} is too long")
    assert "at most 10 characters (RELAYFLOW_MAX_STRING_LENGTH), got 11" in caught.value.message
    assert caught.value.fields is not None
    assert (caught.value.fields[0].loc, caught.value.fields[0].type) == (loc, "string_too_long")


def test_the_first_problem_in_document_order_is_named() -> None:
    """A client fixing errors one by one fixes them top to bottom."""
    with pytest.raises(InputError) as caught:
        check_json({"a": "x" * 11, "b": [[["deep"]]]}, max_depth=2, max_string=10)
    assert caught.value.fields is not None
    assert caught.value.fields[0].loc == ["a"]


@given(st.recursive(st.text(max_size=5) | st.integers(), st.lists))
def test_depth_is_counted_as_nested_arrays(data: Any) -> None:
    """The check refuses exactly what nests deeper than the limit."""

    def depth(value: Any) -> int:
        return 1 + max(map(depth, value), default=0) if isinstance(value, list) else 0

    try:
        check_json(data, max_depth=3, max_string=10)
    except InputError:
        assert depth(data) > 3
    else:
        assert depth(data) <= 3


async def test_json_deeper_than_the_parser_goes_is_422_not_400() -> None:
    """orjson stops at 1024 levels with its own error; that is the depth limit too."""
    built, _ = limits()
    deep = b"[" * 1100 + b"]" * 1100

    async def receive() -> Message:
        return {"type": "http.request", "body": deep, "more_body": False}

    scope = request().scope
    with pytest.raises(InputError) as caught:
        await built.read_json(Request(scope, receive), expected="the input")
    assert caught.value.status == 422
    assert "RELAYFLOW_MAX_JSON_DEPTH" in caught.value.message


# -- rate limit --------------------------------------------------------------------------------


def test_a_burst_then_one_request_per_refill() -> None:
    """The bucket holds `burst`; then a request waits for a token, and the wait is told."""
    clock = Clock()
    limiter = RateLimiter(rate=2, burst=3, clock=clock)
    assert [limiter.take("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.take("a") == pytest.approx(0.5)
    clock.now += 0.25
    assert limiter.take("a") == pytest.approx(0.25)  # a refused request takes no token
    clock.now += 0.25
    assert limiter.take("a") == 0
    assert limiter.take("a") > 0
    clock.now += 100  # a long pause refills no more than the burst
    assert [limiter.take("a") for _ in range(4)][-1] > 0


def test_callers_have_buckets_of_their_own() -> None:
    """One key using up its burst does not slow another."""
    limiter = RateLimiter(rate=1, burst=1, clock=Clock())
    assert limiter.take("key a") == 0
    assert limiter.take("key a") > 0
    assert limiter.take("key b") == 0


def test_full_buckets_are_forgotten_so_many_callers_hold_no_memory() -> None:
    """A caller back to a full burst is as if never seen: dropping it changes nothing."""
    clock = Clock()
    limiter = RateLimiter(rate=1, burst=2, clock=clock)
    for index in range(10_000):
        limiter.take(f"address {index}")
    clock.now += 10
    limiter.take("one more")
    assert len(limiter._buckets) == 1
    assert limiter.take("address 0") == 0


async def ok(request: Request) -> Response:
    return Response("ok")


async def test_over_the_rate_is_429_with_retry_after_per_key_or_address() -> None:
    """Open mode counts per client address; with keys, per key id, whatever the address."""
    built, clock = limits(rate_limit=0.1, rate_burst=1)
    first = await built.serve(request(), None, ok, stream=False)
    refused = await built.serve(request(), None, ok, stream=False)
    assert (first.status_code, refused.status_code) == (200, 429)
    assert refused.headers["Retry-After"] == "10"
    assert b"RELAYFLOW_RATE_LIMIT" in bytes(refused.body)
    assert b"client address" in bytes(refused.body)
    other = await built.serve(request(client="10.9.9.9"), None, ok, stream=False)
    assert other.status_code == 200
    keyed = await built.serve(request(), "k1", ok, stream=False)
    assert keyed.status_code == 200
    again = await built.serve(request(client="10.9.9.9"), "k1", ok, stream=False)
    assert again.status_code == 429
    assert b"this API key" in bytes(again.body)
    clock.now += 10
    assert (await built.serve(request(), "k1", ok, stream=False)).status_code == 200


# -- stream slots ------------------------------------------------------------------------------


async def send_nothing(message: Message) -> None:
    pass


async def no_message() -> Message:
    raise AssertionError("not read")


async def test_a_stream_slot_is_held_until_its_response_is_over() -> None:
    """The slot is taken when the stream is answered and given back once it ends — also when
    it ends by an error or a cancel (the client left)."""
    built, _ = limits(max_streams=2)
    assert built.streams is not None
    first = await built.serve(request(), "k", ok, stream=True)
    second = await built.serve(request(), "k", ok, stream=True)
    refused = await built.serve(request(), "k", ok, stream=True)
    assert refused.status_code == 429
    assert b"RELAYFLOW_MAX_STREAMS" in bytes(refused.body)
    assert built.streams.held("key k") == 2
    await first(request().scope, no_message, send_nothing)
    assert built.streams.held("key k") == 1

    async def failing(message: Message) -> None:
        raise OSError("gone")

    with pytest.raises(OSError, match="gone"):
        await second(request().scope, no_message, failing)
    assert built.streams.held("key k") == 0


async def test_a_stream_endpoint_that_fails_gives_its_slot_back() -> None:
    """A 400 raised before any response exists must not leak the slot."""
    built, _ = limits(max_streams=1)
    assert built.streams is not None

    async def bad(request: Request) -> Response:
        raise InputError(400, "not a workflow id")

    with pytest.raises(InputError):
        await built.serve(request(), "k", bad, stream=True)
    assert built.streams.held("key k") == 0
    assert (await built.serve(request(), "k", ok, stream=True)).status_code == 200


async def test_other_routes_take_no_stream_slot() -> None:
    """Only event streams count against the cap."""
    built, _ = limits(max_streams=1)
    assert built.streams is not None
    for _ in range(3):
        assert (await built.serve(request(), "k", ok, stream=False)).status_code == 200
    assert built.streams.held("key k") == 0


def test_stream_slots_count_per_caller() -> None:
    """One caller at its cap does not stop another; a release makes room for one more."""
    slots = StreamSlots(cap=1)
    assert slots.acquire("a")
    assert not slots.acquire("a")
    assert slots.acquire("b")
    slots.release("a")
    assert slots.acquire("a")


async def test_zero_turns_the_rate_limit_and_the_stream_cap_off() -> None:
    """RELAYFLOW_RATE_LIMIT=0 and RELAYFLOW_MAX_STREAMS=0: nothing is counted or refused."""
    built, _ = limits(rate_limit=0, max_streams=0)
    assert built.rate is None
    assert built.streams is None
    for _ in range(500):
        assert (await built.serve(request(), "k", ok, stream=True)).status_code == 200
