"""A real gateway on a loopback port for the gateway tests (in-process ASGI transports buffer SSE
streams, so these tests speak HTTP to uvicorn), an SSE reader, the workflows the seed form cannot
stand for, and the OpenAPI document's schemas as validators."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import orjson
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field

from relayflow.auth import (
    AuthSettings,
    CreatedKey,
    KeyHasher,
    OidcSettings,
    Role,
    create_key,
    revoke_key,
)
from relayflow.settings import Settings
from relayflow.workflow import WorkflowRegistry, define_workflow, task, wait
from services.gateway.app import create_app
from services.gateway.openapi import build_openapi
from services.gateway.server import build_server, serve_until
from services.gateway.settings import AuthMode, GatewaySettings
from tests.support import unique_name, wait_for

MakeKey = Callable[[Role], Awaitable[CreatedKey]]


class Freeform(BaseModel):
    """An input that takes any JSON object: where a NUL can hide in a key, or deep inside."""

    model_config = ConfigDict(extra="forbid")

    data: dict[str, Any]


class Padded(BaseModel):
    """An input its model makes larger than the body that carried it (a default)."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="n" * 1500)


class Subject(BaseModel):
    """What a review is about."""

    model_config = ConfigDict(extra="forbid")

    subject: str = Field(max_length=200)


class Decision(BaseModel):
    """A person's answer: the shape the dashboard turns into an Approve/Reject pair."""

    model_config = ConfigDict(extra="forbid")

    approved: bool
    by: str = Field(min_length=1, max_length=100)


class Note(BaseModel):
    """A second signal with a number and an optional field, for the generated forms."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(max_length=500)
    priority: int = Field(default=1, ge=1, le=5)


# Their one step is the seed's `validate`, so that they add no queue a test must remove.
WORKFLOWS = [
    *(
        define_workflow(
            name, input_model=model, steps=[task("validate", timeout=timedelta(seconds=5))]
        )
        for name, model in (("freeform", Freeform), ("padded", Padded))
    ),
    # Only a wait for a signal: it runs without any step service, until a decision comes.
    define_workflow(
        "review",
        input_model=Subject,
        steps=[wait("decide", signal="decision", timeout=timedelta(minutes=10))],
        signals={"decision": Decision, "note": Note},
        output_from="decide",
    ),
]
WITH_TEST_WORKFLOWS = ["apps.form_submission.workflows", __name__]


def documented(document: dict[str, Any], schema: dict[str, Any] | str) -> Draft202012Validator:
    """A validator for a component (by name) or a schema of the OpenAPI document, its component
    refs resolved by embedding the components as $defs."""
    target = {"$ref": f"#/components/schemas/{schema}"} if isinstance(schema, str) else schema
    raw = json.dumps({"$defs": document["components"]["schemas"], **target})
    return Draft202012Validator(json.loads(raw.replace("#/components/schemas/", "#/$defs/")))


def seed_document() -> dict[str, Any]:
    return build_openapi(WorkflowRegistry.from_modules(["apps.form_submission.workflows"]))


def event_schema(document: dict[str, Any], path: str) -> Draft202012Validator:
    """What the document says the `data` of each SSE event on `path` is."""
    content = document["paths"][path]["get"]["responses"]["200"]["content"]
    return documented(document, content["text/event-stream"]["x-event-schema"])


def failures(records: Iterable[logging.LogRecord]) -> list[str]:
    """Log records that show a bug: a traceback, or an error."""
    return [
        record.getMessage()
        for record in records
        if record.exc_info is not None or record.levelno >= logging.ERROR
    ]


@dataclass
class RunningGateway:
    base_url: str
    settings: GatewaySettings
    client: httpx.AsyncClient
    stop: asyncio.Event
    serving: asyncio.Task[None]


def gateway_settings(settings: Settings, **overrides: Any) -> GatewaySettings:
    """Open unless `auth` says otherwise: the gateway tests are about the API, and a key another
    test left in the run's database must not switch them to required (test_gateway_auth.py)."""
    return GatewaySettings(
        AMQP_URL=settings.amqp_url,
        DATABASE_URL=settings.database_url,
        namespace=settings.namespace,
        queue_type=settings.queue_type,
        db_pool_min=1,
        db_pool_max=4,
        **{"auth": AuthMode.OFF, **overrides},
    )


@contextlib.asynccontextmanager
async def running_gateway(
    settings: Settings,
    auth_settings: AuthSettings | None = None,
    oidc: OidcSettings | None = None,
    **overrides: Any,
) -> AsyncIterator[RunningGateway]:
    """`auth_settings`: the server secret (default none, whatever the environment holds);
    `oidc`: the identity provider (default none, likewise)."""
    config = gateway_settings(settings, **overrides)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    app = create_app(
        config,
        stopping=stop,
        auth=auth_settings or AuthSettings(secret=None),
        oidc=oidc or OidcSettings(issuer=None),
    )
    server = build_server(app, config)
    serving = asyncio.create_task(serve_until(server, stop, sockets=[sock]))

    async def started() -> bool:
        if serving.done():
            serving.result()  # raises what went wrong
            raise AssertionError("the gateway exited during start-up")
        return bool(server.started)

    try:
        await wait_for(started, timeout=30)
        base_url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
            yield RunningGateway(base_url, config, client, stop, serving)
    finally:
        stop.set()
        try:
            await serving
        finally:
            sock.close()  # also when the gateway failed to start


@dataclass
class SseEvent:
    id: str | None = None
    event: str | None = None
    data_lines: list[str] = field(default_factory=list)

    @property
    def data(self) -> Any:
        return orjson.loads("\n".join(self.data_lines))

    @property
    def seq(self) -> int:
        assert self.id is not None
        return int(self.id)


@dataclass
class SseStream:
    """Reads one event stream to its end; `connected` is set once the headers arrived (the
    gateway subscribes to the live hub before it answers)."""

    client: httpx.AsyncClient
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    events: list[SseEvent] = field(default_factory=list)
    pings: int = 0
    status_code: int | None = None
    content_type: str | None = None
    # When given, the reader stops reading after the headers until it is set (a slow client).
    resume: asyncio.Event | None = None

    async def run(self) -> list[SseEvent]:
        async with self.client.stream("GET", self.url, headers=self.headers) as response:
            self.status_code = response.status_code
            self.content_type = response.headers.get("content-type")
            self.connected.set()
            if self.resume is not None:
                await self.resume.wait()
            current = SseEvent()
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    self.pings += 1  # a comment: the keep-alive ping
                    continue
                if not line:
                    if current.id is not None or current.event is not None or current.data_lines:
                        self.events.append(current)
                    current = SseEvent()
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "id":
                    current.id = value
                elif name == "event":
                    current.event = value
                elif name == "data":
                    current.data_lines.append(value)
        return self.events

    def start(self) -> asyncio.Task[list[SseEvent]]:
        return asyncio.create_task(self.run())


@contextlib.asynccontextmanager
async def made_keys(pool: asyncpg.Pool[Any], hasher: KeyHasher) -> AsyncIterator[MakeKey]:
    """Makes keys of one tenant, revoked afterwards so that no other test's `auto` gateway
    finds them."""
    made: list[CreatedKey] = []
    tenant = unique_name("t-")

    async def make(role: Role) -> CreatedKey:
        async with pool.acquire() as conn:
            created = await create_key(conn, hasher, tenant=tenant, role=role)
        made.append(created)
        return created

    try:
        yield make
    finally:
        async with pool.acquire() as conn:
            for created in made:
                await revoke_key(conn, created.record.id)
