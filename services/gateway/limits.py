"""What one caller may send and ask of the gateway. Each limit is refused with an error naming
the limit and its setting (`GatewaySettings`):

- a request body over `RELAYFLOW_MAX_BODY_BYTES` is a 413, refused as it arrives: a declared
  Content-Length over it before any of it is read, else at the chunk that crosses it, so that no
  more than the limit is ever held. The workflow input keeps its own limit,
  `RELAYFLOW_MAX_INPUT_BYTES`, applied to the validated input on the HTTP and the broker path;
- JSON nested deeper than `RELAYFLOW_MAX_JSON_DEPTH`, or a string (value or key) longer than
  `RELAYFLOW_MAX_STRING_LENGTH` characters, is a 422 naming where;
- more than `RELAYFLOW_RATE_LIMIT` requests a second (in bursts of up to `RELAYFLOW_RATE_BURST`)
  is a 429 with Retry-After: a token bucket per caller;
- more than `RELAYFLOW_MAX_STREAMS` event streams open at once is a 429; a slot is free again
  when its stream ends, however it ends.

A caller is an API key, by id; while the gateway runs open, a client address. The counts live in
this process, so each gateway replica counts its own. `access.guard` applies the rate limit and
the stream cap after the credentials, on every route that needs them: `/healthz`, `/readyz` and
static assets are exempt from both.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from services.gateway.checks import InputError
from services.gateway.intake import parse_body
from services.gateway.models import FieldError
from services.gateway.responses import error_response
from services.gateway.settings import GatewaySettings

BODY_SETTING: Final = "RELAYFLOW_MAX_BODY_BYTES"
DEPTH_SETTING: Final = "RELAYFLOW_MAX_JSON_DEPTH"
STRING_SETTING: Final = "RELAYFLOW_MAX_STRING_LENGTH"
RATE_SETTING: Final = "RELAYFLOW_RATE_LIMIT"
BURST_SETTING: Final = "RELAYFLOW_RATE_BURST"
STREAMS_SETTING: Final = "RELAYFLOW_MAX_STREAMS"

Endpoint = Callable[[Request], Awaitable[Response]]
Clock = Callable[[], float]
Path = tuple[str | int, ...]

_LENGTH = re.compile(r"[0-9]{1,18}")
# Buckets tracked before full ones (the same as none) are dropped.
_PRUNE_AT: Final = 10_000


async def read_body(request: Request, limit: int, *, source: str = BODY_SETTING) -> bytes:
    """The body, or a 413 as soon as it is known to be over `limit` bytes (`source` says where
    the limit comes from: its setting, or why it is what it is)."""
    declared = request.headers.get("content-length")
    # Only a plausible length is trusted up front; the count below holds whatever was declared.
    if declared is not None and _LENGTH.fullmatch(declared) and int(declared) > limit:
        raise _too_large(limit, source)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit, source)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(limit: int, source: str) -> InputError:
    return InputError(413, f"the request body is larger than the limit of {limit} bytes ({source})")


def check_json(data: Any, *, max_depth: int, max_string: int) -> None:
    """A 422 naming the first place, in document order, where `data` nests deeper than
    `max_depth` objects and arrays or holds a string or key longer than `max_string`
    characters. A loop, not recursion: the parser allows more depth than Python's stack."""
    if isinstance(data, str) and len(data) > max_string:
        raise _too_long((), len(data), max_string)
    pending: list[tuple[Path, Any]] = [((), data)]
    while pending:
        path, value = pending.pop()
        if not isinstance(value, dict | list):
            continue
        if len(path) >= max_depth:
            detail = f"nested deeper than {max_depth} objects and arrays ({DEPTH_SETTING})"
            raise InputError(
                422,
                f"the JSON at {_where(path)} is {detail}",
                [FieldError(loc=list(path), message=detail, type="json_too_deep")],
            )
        children: list[tuple[Path, Any]] = []
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(key, str) and len(key) > max_string:
                raise _too_long(path, len(key), max_string, key=True)
            if isinstance(item, str):
                if len(item) > max_string:
                    raise _too_long((*path, key), len(item), max_string)
            elif isinstance(item, dict | list):
                children.append(((*path, key), item))
        pending.extend(reversed(children))


def _where(path: Path) -> str:
    return ".".join(str(part) for part in path) or "the top level"


def _too_long(path: Path, length: int, limit: int, *, key: bool = False) -> InputError:
    what = f"a key at {_where(path)}" if key else f"the string at {_where(path)}"
    detail = f"at most {limit} characters ({STRING_SETTING}), got {length}"
    return InputError(
        422,
        f"{what} is too long: {detail}",
        [FieldError(loc=list(path), message=detail, type="string_too_long")],
    )


class RateLimiter:
    """A token bucket per caller: each holds up to `burst` tokens, gains `rate` a second, and a
    request takes one. `clock` is in seconds (monotonic; injectable for tests)."""

    def __init__(self, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # caller: (tokens, when counted)
        self._prune_at = _PRUNE_AT

    def take(self, caller: str) -> float:
        """0 if `caller` may go on (a token is taken), else the seconds until a token is there."""
        now = self._clock()
        tokens = self._tokens(caller, now)
        if tokens >= 1:
            self._buckets[caller] = (tokens - 1, now)
            if len(self._buckets) > self._prune_at:
                self._prune(now)
            return 0.0
        self._buckets[caller] = (tokens, now)
        return (1 - tokens) / self.rate

    def _tokens(self, caller: str, now: float) -> float:
        tokens, then = self._buckets.get(caller, (self.burst, now))
        return min(self.burst, tokens + max(0.0, now - then) * self.rate)

    def _prune(self, now: float) -> None:
        """Forget full buckets (a caller back to a full burst is as if never seen), so that many
        callers, one request each, do not hold memory."""
        self._buckets = {
            caller: bucket
            for caller, bucket in self._buckets.items()
            if self._tokens(caller, now) < self.burst
        }
        self._prune_at = max(_PRUNE_AT, 2 * len(self._buckets))


class StreamSlots:
    """How many event streams each caller holds open, up to `cap`."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self._open: dict[str, int] = {}

    def acquire(self, caller: str) -> bool:
        held = self._open.get(caller, 0)
        if held >= self.cap:
            return False
        self._open[caller] = held + 1
        return True

    def release(self, caller: str) -> None:
        held = self._open.pop(caller, 0) - 1
        if held > 0:
            self._open[caller] = held

    def held(self, caller: str) -> int:
        return self._open.get(caller, 0)


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits of one gateway, from its settings; the lifespan makes one per app."""

    max_body_bytes: int
    max_json_depth: int
    max_string_length: int
    rate: RateLimiter | None
    streams: StreamSlots | None

    @classmethod
    def from_settings(cls, settings: GatewaySettings, clock: Clock = time.monotonic) -> Limits:
        return cls(
            max_body_bytes=settings.max_body_bytes,
            max_json_depth=settings.max_json_depth,
            max_string_length=settings.max_string_length,
            rate=(
                RateLimiter(settings.rate_limit, settings.rate_burst, clock)
                if settings.rate_limit > 0
                else None
            ),
            streams=StreamSlots(settings.max_streams) if settings.max_streams > 0 else None,
        )

    async def read_json(self, request: Request, *, expected: str) -> Any:
        """The body as JSON within the body, depth and string limits (400 if it is not JSON)."""
        body = await read_body(request, self.max_body_bytes)
        try:
            data = parse_body(body, expected=expected)
        except InputError as exc:
            # Deeper than orjson goes is deeper than any depth the setting allows.
            cause = exc.__cause__
            if isinstance(cause, orjson.JSONDecodeError) and "depth limit" in str(cause):
                detail = (
                    f"nested deeper than {self.max_json_depth} objects and arrays ({DEPTH_SETTING})"
                )
                raise InputError(
                    422,
                    f"the JSON is {detail}",
                    [FieldError(loc=[], message=detail, type="json_too_deep")],
                ) from None
            raise
        check_json(data, max_depth=self.max_json_depth, max_string=self.max_string_length)
        return data

    async def serve(
        self,
        request: Request,
        caller_id: str | None,
        endpoint: Endpoint,
        *,
        stream: bool,
        by_address: str = "the gateway runs open",
    ) -> Response:
        """`endpoint`'s answer to a caller with credentials (`caller_id`; None when the gateway runs
        open, or on the sign-in routes, which `by_address` then names), or the 429 of a limit
        it is over. `stream`: the answer is an event stream."""
        if caller_id is not None:
            caller, who = f"key {caller_id}", "this API key"
        else:
            address = request.client.host if request.client is not None else "unknown"
            caller, who = f"address {address}", f"this client address ({by_address})"
        if self.rate is not None and (wait := self.rate.take(caller)) > 0:
            return error_response(
                429,
                f"too many requests from {who}: at most {self.rate.rate:g} a second, in bursts "
                f"of {self.rate.burst} ({RATE_SETTING}, {BURST_SETTING}, per gateway replica); "
                "retry after the seconds in Retry-After",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        slots = self.streams
        if not stream or slots is None:
            return await endpoint(request)
        if not slots.acquire(caller):
            return error_response(
                429,
                f"too many event streams open for {who}: at most {slots.cap} at once "
                f"({STREAMS_SETTING}, per gateway replica); close one to open another (or follow "
                "many workflows on one stream, GET /events)",
            )
        try:
            response = await endpoint(request)
        except BaseException:
            slots.release(caller)
            raise
        return _Releasing(response, lambda: slots.release(caller))


class _Releasing(Response):
    """`response`, which calls `release` once it is over: sent to its end, or cut short (the
    client left, the server stopped). Not `Response.__init__`: nothing is rendered here."""

    def __init__(self, response: Response, release: Callable[[], None]) -> None:
        self.status_code = response.status_code
        self.raw_headers = response.raw_headers
        self.background = None
        self._response = response
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._response(scope, receive, send)
        finally:
            self._release()
