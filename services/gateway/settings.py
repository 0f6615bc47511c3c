"""The gateway's settings: the shared ones plus where to listen and how long to wait.

The largest request body is the shared `max_input_bytes` (`RELAYFLOW_MAX_INPUT_BYTES`), the
input limit of both the HTTP and the broker path.

Every field here is read from `RELAYFLOW_<FIELD>`, e.g. `RELAYFLOW_GATEWAY_HOST` and
`RELAYFLOW_GATEWAY_PORT`; `AMQP_URL` and `DATABASE_URL` keep their names.
"""

from __future__ import annotations

from pydantic import Field

from relayflow.settings import Settings


class GatewaySettings(Settings):
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
    # The workflow `POST /submit` (and the dashboard's contact form, which posts there) starts:
    # an alias of `POST /workflows/{name}`. Empty turns the alias off: `/submit` answers 404.
    gateway_submit_workflow: str = "formSubmission"
