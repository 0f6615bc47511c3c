"""The gateway's settings: the shared ones plus where to listen, how long to wait, and its limits.

A workflow input's limit is the shared `max_input_bytes` (`RELAYFLOW_MAX_INPUT_BYTES`), the same
on the HTTP and the broker path; the request body has its own (`max_body_bytes`), with the other
limits of what one caller may send and ask (`services.gateway.limits`).

Every field here is read from `RELAYFLOW_<FIELD>`, e.g. `RELAYFLOW_GATEWAY_HOST` and
`RELAYFLOW_GATEWAY_PORT`; `AMQP_URL` and `DATABASE_URL` keep their names.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from pydantic import Field, field_validator

from relayflow.db.urls import check_database_url
from relayflow.errors import ConfigurationError
from relayflow.settings import Settings
from relayflow.workflow import WorkflowRegistry


class AuthMode(StrEnum):
    """`RELAYFLOW_AUTH`: when the gateway asks for API keys (`services.gateway.access`)."""

    # Open on a loopback bind while no key could authenticate (checked at start-up);
    # otherwise required.
    AUTO = "auto"
    REQUIRED = "required"
    # Open on a loopback bind even if keys exist (a development database holding keys, the
    # tests); refused on any other bind.
    OFF = "off"


class GatewaySettings(Settings):
    # Where the read-only pages and lists, the details and the event streams' replay may read
    # (a replica; RELAYFLOW_READ_DATABASE_URL); unset: DATABASE_URL. What still reads the
    # primary, and why the streams stay gapless, is in `services.gateway.reads`.
    read_database_url: str | None = None
    gateway_host: str = "127.0.0.1"
    gateway_port: int = Field(default=8000, ge=0, le=65535)
    # How long a publish may wait for the broker's confirm before the request gets a 503.
    gateway_publish_timeout: float = Field(default=5.0, gt=0)
    # How long an event stream for a workflow nobody has heard of waits for it to appear (its
    # start may still be in flight) before it sends an `error` event and closes.
    gateway_unknown_workflow_wait: float = Field(default=30.0, gt=0)
    # Keep-alive comment interval on event streams, for proxies that cut idle connections.
    gateway_ping_interval: float = Field(default=15.0, gt=0)
    # Live events buffered per stream; a stream that falls further behind replays from the DB.
    gateway_subscriber_buffer: int = Field(default=256, ge=1)
    # Recent events each gateway keeps so that a reconnecting `GET /events` client resumes
    # without a gap (an older Last-Event-ID gets a `reset`).
    gateway_recent_events: int = Field(default=1000, ge=1)
    # How often a live stream re-reads PostgreSQL in case a live event was lost (broker outage).
    gateway_catch_up_interval: float = Field(default=10.0, gt=0)
    gateway_access_log: bool = False
    # RELAYFLOW_AUTH; the secret keys are hashed under is RELAYFLOW_AUTH_SECRET (AuthSettings).
    auth: AuthMode = AuthMode.AUTO
    # How long a dashboard sign-in lasts (services.gateway.sessions); the key is re-checked on
    # every request regardless, so a revocation ends it at once.
    session_seconds: int = Field(default=12 * 3600, ge=60, le=30 * 24 * 3600)
    # How long a stream token (services.gateway.stream_tokens) may be used to open an event
    # stream; one already open goes on until it ends.
    stream_token_seconds: int = Field(default=300, ge=10, le=24 * 3600)
    # The workflow `POST /submit` (and the dashboard's contact form, which posts there) starts:
    # an alias of `POST /workflows/{name}`. Empty turns the alias off: `/submit` answers 404 and
    # the dashboard shows no form. Unset, it is `formSubmission` when that workflow is served
    # (else off); set, it must name a served workflow (`submit_workflow`).
    gateway_submit_workflow: str | None = None
    # Limits (services.gateway.limits), named without `gateway_` like `auth`: RELAYFLOW_RATE_LIMIT…
    # The largest request body, checked as it arrives (the input's own limit is max_input_bytes).
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)
    # How deep JSON may nest (objects and arrays); orjson itself refuses more than 1024.
    max_json_depth: int = Field(default=32, ge=1, le=1024)
    # The longest string, value or key, in characters.
    max_string_length: int = Field(default=64 * 1024, ge=1)
    # Requests per second per API key (per client address when open), with bursts of
    # rate_burst; 0: no rate limit.
    rate_limit: float = Field(default=100.0, ge=0)
    rate_burst: int = Field(default=200, ge=1)
    # Event streams one API key (one client address when open) may hold open; 0: no cap.
    max_streams: int = Field(default=100, ge=0)

    @field_validator("read_database_url")
    @classmethod
    def _read_database_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        return check_database_url(value, writes=False)

    def submit_workflow(self, registry: WorkflowRegistry) -> str | None:
        """The workflow `/submit` starts, or None when it is off; `ConfigurationError` when the
        setting names a workflow `registry` does not serve."""
        return resolve_submit_workflow(self.gateway_submit_workflow, registry)


SUBMIT_SETTING: Final = "RELAYFLOW_GATEWAY_SUBMIT_WORKFLOW"
# What `/submit` starts when the setting is unset: the seed application's contact form.
DEFAULT_SUBMIT_WORKFLOW: Final = "formSubmission"


def resolve_submit_workflow(setting: str | None, registry: WorkflowRegistry) -> str | None:
    """What `gateway_submit_workflow` (`setting`) means for `registry`: see the field."""
    if setting is None:
        served = registry.get(DEFAULT_SUBMIT_WORKFLOW) is not None
        return DEFAULT_SUBMIT_WORKFLOW if served else None
    if not setting:
        return None
    if registry.get(setting) is None:
        raise ConfigurationError(
            f"{SUBMIT_SETTING}={setting!r} names no workflow this gateway serves; the "
            f"workflows of RELAYFLOW_WORKFLOWS are: {', '.join(registry.names()) or 'none'} "
            f"(set {SUBMIT_SETTING} to one of them, or to empty to turn POST /submit off)"
        )
    return setting


def submit_off_reason(setting: str | None) -> str:
    """Why `/submit` is off, for a setting that turns it off."""
    if setting is None:
        return f"{SUBMIT_SETTING} is unset and no {DEFAULT_SUBMIT_WORKFLOW} workflow is served"
    return f"{SUBMIT_SETTING} is empty"
