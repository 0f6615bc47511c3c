"""Settings shared by every service, read from the environment.

`AMQP_URL` and `DATABASE_URL` keep their conventional names; everything else is prefixed
`RELAYFLOW_`. Defaults work on a machine with RabbitMQ and PostgreSQL running locally.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relayflow.amqp.connection import DEFAULT_HEARTBEAT, broker_addresses
from relayflow.amqp.senders import Senders
from relayflow.contracts.storable import DEFAULT_MAX_INPUT_BYTES
from relayflow.logs import LogFormat

_NAMESPACE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_PROCESS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
# A replica's announcement of what it loads lapses after this many missed refreshes.
ANNOUNCE_STALE_INTERVALS = 3


def split_csv(value: object) -> object:
    """Accept `a,b,c` from the environment for list settings."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAYFLOW_", extra="ignore", frozen=True)

    # One broker, or several nodes of one cluster comma-separated (`relayflow.amqp.connection`).
    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/", validation_alias="AMQP_URL")
    # Seconds between AMQP heartbeats: a node silent for about three of them (a hang, a link
    # that died without a FIN) is left for another.
    amqp_heartbeat: int = Field(default=DEFAULT_HEARTBEAT, ge=2, le=600)
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/relayflow", validation_alias="DATABASE_URL"
    )
    # Prefix of every exchange and queue name, so that test runs and tenants can share a broker.
    namespace: str = "relayflow"
    # Modules that define workflows with `define_workflow`; importing them registers nothing
    # globally, each must expose `WORKFLOWS`.
    workflows: Annotated[list[str], NoDecode] = [
        "apps.form_submission.workflows",
        "apps.batch_import.workflows",
        "apps.approval.workflows",
    ]
    # Modules whose `steps` registries hold step bodies: what a step service serves, and where
    # the orchestrator finds the bodies of local tasks (it imports them only if it has some).
    step_modules: Annotated[list[str], NoDecode] = [
        "apps.form_submission.steps",
        "apps.batch_import.steps",
        "apps.approval.steps",
    ]
    # The applications' own processes that the run command (`relayflow-run`) starts beside the
    # core services, as name=module (run with `python -m`), comma-separated:
    # RELAYFLOW_APP_PROCESSES=external=apps.form_submission.external; empty: none.
    app_processes: Annotated[dict[str, str], NoDecode] = {
        "external": "apps.form_submission.external",
    }
    queue_type: str = "quorum"
    # How many nodes hold a replica of each quorum queue (x-quorum-initial-group-size); the
    # broker takes at most as many as the cluster has, so 3 also suits a single node.
    quorum_size: int = Field(default=3, ge=1)
    # The roles of the broker users, checked on every message received
    # (`relayflow.amqp.senders`): engine=u1,u2;step=u3;start=u4;external=u5. Empty: not checked.
    broker_senders: str = ""
    # Broker users restricted to some tenants (`relayflow.amqp.senders`): user=t1,t2;user2=t3.
    broker_tenants: str = ""
    # Backstop against poison messages that crash a consumer before it can dead-letter them.
    delivery_limit: int = Field(default=20, ge=1)
    log_level: str = "INFO"
    # text (for a terminal) or json (one object per line, for a log pipeline): relayflow.logs.
    log_format: LogFormat = LogFormat.TEXT
    # Where the orchestrator, step service and external system serve Prometheus metrics
    # (http://host:port/metrics); 0: not served. The gateway serves /metrics on its own port.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # False: this process counts nothing and serves no metrics (the gateway's /metrics then shows
    # only the process's own); what counting costs is measured so (README, "Metrics").
    metrics_enabled: bool = True
    db_pool_min: int = Field(default=2, ge=1)
    db_pool_max: int = Field(default=10, ge=1)
    # The largest workflow input (compact JSON), on the HTTP path and the broker path alike.
    max_input_bytes: int = Field(default=DEFAULT_MAX_INPUT_BYTES, ge=1024)
    # Debug: a directory where each process writes, when it stops, when each message reached
    # each hop (`relayflow.hops`, for the bench's per-hop breakdown); unset or `off`: nothing.
    hop_trace: Path | None = None
    # How often each orchestrator replica refreshes its row of what it loads
    # (`loaded_definitions`); a row not refreshed for ANNOUNCE_STALE_INTERVALS of these no longer
    # counts. The gateway reads the same setting to tell which runs no live replica can apply.
    announce_interval: float = Field(default=30.0, gt=0)

    @property
    def senders(self) -> Senders:
        return Senders.parse(self.broker_senders, self.broker_tenants)

    @field_validator("workflows", "step_modules", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("amqp_url")
    @classmethod
    def _amqp_url(cls, value: str) -> str:
        broker_addresses(value)
        return value

    @field_validator("hop_trace", mode="before")
    @classmethod
    def _hop_trace(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "off"):
            return None
        return value

    @field_validator("app_processes", mode="before")
    @classmethod
    def _processes(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        processes: dict[str, str] = {}
        for part in filter(None, (part.strip() for part in value.split(","))):
            name, _, module = (side.strip() for side in part.partition("="))
            if not _PROCESS.match(name) or not _MODULE.match(module):
                raise ValueError(
                    f"expected name=module (a module run with python -m), got {part!r}"
                )
            processes[name] = module
        return processes

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not _NAMESPACE.match(value):
            raise ValueError(
                "must start with a lowercase letter and hold only a-z, 0-9, '_' or '-' "
                f"(at most 63 characters), got {value!r}"
            )
        return value

    @field_validator("queue_type")
    @classmethod
    def _queue_type(cls, value: str) -> str:
        if value not in ("quorum", "classic"):
            raise ValueError(f"must be 'quorum' or 'classic', got {value!r}")
        return value

    @property
    def announce_stale_after(self) -> float:
        """Seconds after which a replica's row of what it loads no longer counts (it died)."""
        return self.announce_interval * ANNOUNCE_STALE_INTERVALS
