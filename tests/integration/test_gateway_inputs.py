"""Probing every gateway route from outside with what a client can send but no route can use:
NUL and other bytes PostgreSQL refuses, ids longer than any id, integers over the seq column,
digits that are not ASCII, bodies that are not JSON. Each gets its own 4xx at once, naming what is
wrong — never a 500, never a traceback in the log, never an event stream that opens and is cut or
that waits for an id that cannot appear."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

import httpx
import pytest

from relayflow.contracts import new_workflow_id
from relayflow.settings import Settings
from services.gateway.workflows import encode_cursor
from tests.integration.gateway_harness import RunningGateway, failures, running_gateway
from tests.integration.test_gateway_workflows import T0
from tests.support import raw_headers

FORM = {"name": "Ada", "email": "ada@example.com", "message": "hi"}
JSON = {"content-type": "application/json"}
KNOWN_NOWHERE = new_workflow_id()  # a valid id nobody has started
# Ids no workflow can have, as they appear in a URL.
IMPOSSIBLE_IDS = {
    "nul": "wf_x%00y",
    "60kb": "w" * 60_000,
    "129": "w" * 129,
    "space": "wf%20x",
    "newline": "wf_x%0A",
    "slash-free-percent": "wf%25x",
    "non-ascii": "wf_%C3%A9",
}
NUL_CURSOR = encode_cursor(T0, "wf_\x00x")


@dataclass(frozen=True)
class Probe:
    method: str
    url: str
    status: int
    headers: Mapping[str, str | bytes] = field(default_factory=dict)
    content: bytes | None = None

    def __str__(self) -> str:
        return f"{self.method} {self.url[:80]} {self.headers} -> {self.status}"


def _by_id() -> list[Probe]:
    probes: list[Probe] = []
    for bad in IMPOSSIBLE_IDS.values():
        probes += [
            Probe("GET", f"/workflows/{bad}", 400),
            Probe("GET", f"/workflows/{bad}/events", 400),
            Probe("HEAD", f"/workflows/{bad}/events", 400),
            Probe("POST", f"/workflows/{bad}/cancel", 400, JSON, b"{}"),
            Probe("POST", f"/workflows/{bad}/retry", 400, JSON, b"{}"),
            Probe("GET", f"/ui/workflows/{bad}", 400),
            Probe("GET", f"/ui/workflows/{bad}/panel", 400),
            # As a workflow name: no workflow has it, so the path is an id's, which takes GET.
            Probe("POST", f"/workflows/{bad}", 405, JSON, b"{}"),
        ]
    return probes


def _resuming() -> list[Probe]:
    events = f"/workflows/{KNOWN_NOWHERE}/events"
    bad_seqs: list[str | bytes] = ["9" * 5000, "2147483648", "-1", "1.0", "", b"\xb2", b"\xd9\xa1"]
    return [
        *(Probe("GET", events, 400, {"Last-Event-ID": seq}) for seq in bad_seqs),
        *(
            Probe("GET", f"{events}?lastEventId={seq}", 400)
            for seq in ("", "%00", "abc", "9" * 5000, "%C2%B2", "%D9%A1")
        ),
    ]


def _listing() -> list[Probe]:
    return [
        *(
            Probe("GET", f"/workflows?{query}", 400)
            for query in (
                "id=%00",
                f"id={'w' * 129}",
                "id=",
                "workflow=%00",
                "workflow=",
                "status=%00",
                f"before={NUL_CURSOR}",
                "before=%00",
                "limit=%C2%B2",
                f"limit={'9' * 5000}",
            )
        ),
        Probe("GET", "/ui/list?limit=%C2%B2", 400),
        Probe("GET", f"/ui/list?before={NUL_CURSOR}", 400),
        Probe("GET", "/ui/list?workflow=%00", 400),
        # The home page shows the problem above the unfiltered list.
        Probe("GET", f"/?before={NUL_CURSOR}&limit=%C2%B2", 200),
        Probe("GET", "/events?workflow=%00", 400),
        Probe("GET", "/events?status=%00", 400),
        Probe("GET", "/events?workflow=", 400),
    ]


def _posting() -> list[Probe]:
    action = f"/workflows/{KNOWN_NOWHERE}/cancel"
    return [
        *(
            Probe("POST", "/submit", 400, {**JSON, "Idempotency-Key": key}, b"{}")
            for key in (b"a\tb", b"\xe9", b"\x85", b"k" * 201)
        ),
        Probe("POST", action, 400, {**JSON, "Idempotency-Key": b"\x85"}, b"{}"),
        Probe("POST", f"{action}?reason={'r' * 1001}", 422, JSON, b"{}"),
        Probe("POST", f"{action}?reason=a%00b", 422, JSON, b"{}"),
        Probe("POST", "/submit", 400, JSON, b'{"name": "\\ud800"}'),  # a lone surrogate
        Probe("POST", "/submit", 422, JSON, b"[" * 5000 + b"]" * 5000),  # RELAYFLOW_MAX_JSON_DEPTH
        Probe("POST", "/submit", 422, JSON, b'{"name": "a\\u0000", "email": "a@b.co", "m": 1}'),
        *(
            Probe("POST", path, 415, {"content-type": "text/plain"}, b"{}")
            for path in (
                "/submit",
                "/workflows/formSubmission",
                action,
                f"/workflows/{KNOWN_NOWHERE}/retry",
            )
        ),
    ]


PROBES = [*_by_id(), *_resuming(), *_listing(), *_posting()]


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings) as gateway:
        yield gateway


async def test_every_route_refuses_what_it_cannot_use_at_once_and_cleanly(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """The external probe found 500s, streams cut after a 200 and a 30 s wait for a 60 KB id:
    each of those inputs must get its own status straight away, with a JSON error (or, on the
    dashboard's pages, HTML) that says what is wrong, and leave no traceback behind."""
    caplog.set_level(logging.WARNING)
    wrong: list[str] = []
    # A stream that opened would hold the request far past this.
    async with httpx.AsyncClient(base_url=gateway.base_url, timeout=5) as client:
        for probe in PROBES:
            response = await client.request(
                probe.method, probe.url, headers=raw_headers(probe.headers), content=probe.content
            )
            if response.status_code != probe.status:
                wrong.append(f"{probe}: got {response.status_code} {response.text[:200]}")
            elif probe.method != "HEAD" and probe.status >= 400 and not _explained(response):
                wrong.append(f"{probe}: no explanation in {response.text[:200]!r}")
    assert wrong == []
    assert failures(caplog.records) == []


def _explained(response: httpx.Response) -> bool:
    if response.headers["content-type"].startswith("text/html"):
        return 'class="form-error"' in response.text
    body = response.json()
    return isinstance(body.get("error"), str) and len(body["error"]) < 1000


async def test_a_feed_id_it_cannot_resume_from_is_a_reset_not_an_error(
    gateway: RunningGateway, caplog: pytest.LogCaptureFixture
) -> None:
    """`GET /events` documents any Last-Event-ID: one it cannot resume from (huge, not ASCII,
    not its form) starts the stream with `reset` — it must not crash it."""
    caplog.set_level(logging.WARNING)
    for last in ("9" * 5000, b"\xb2", "x." + "9" * 5000, b"ab.\xb2"):
        async with gateway.client.stream(
            "GET", "/events", headers=raw_headers({"Last-Event-ID": last})
        ) as response:
            assert response.status_code == 200
            lines = response.aiter_lines()
            first = [await anext(lines) for _ in range(4)]
        assert "event: reset" in first, first
    assert failures(caplog.records) == []
