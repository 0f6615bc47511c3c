"""What every command may need, from the root options and the environment: where the gateway
is (and the key it wants), and, for the operator commands, the broker, the namespace and the
database."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import httpx
import typer

from relayflow.settings import Settings
from relayflow.topology import Topology

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "RELAYFLOW_URL"
API_KEY_ENV = "RELAYFLOW_API_KEY"


@dataclass
class Context:
    """The root options; what they leave unset comes from the services' own settings
    (`AMQP_URL`, `DATABASE_URL`, `RELAYFLOW_NAMESPACE`), read only when a command needs it."""

    url: str = DEFAULT_URL
    amqp_url_option: str | None = None
    namespace_option: str | None = None
    database_url_option: str | None = None
    # How HTTP requests reach the gateway: the network unless a test hands in another (typer's
    # CliRunner passes `obj=Context(transport=httpx.MockTransport(...))`).
    transport: httpx.AsyncBaseTransport | None = None

    @cached_property
    def settings(self) -> Settings:
        return Settings()

    @property
    def api_key(self) -> str | None:
        """`RELAYFLOW_API_KEY`, sent as `Authorization: Bearer`: an environment variable only,
        so that the key shows in no process list or shell history."""
        return os.environ.get(API_KEY_ENV) or None

    @property
    def amqp_url(self) -> str:
        return self.amqp_url_option or self.settings.amqp_url

    @property
    def namespace(self) -> str:
        return self.namespace_option or self.settings.namespace

    @property
    def database_url(self) -> str:
        return self.database_url_option or self.settings.database_url

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)


def current(ctx: typer.Context) -> Context:
    """The root's context object (a command run without the root callback gets the defaults)."""
    found = ctx.find_object(Context)
    return found if found is not None else Context()
