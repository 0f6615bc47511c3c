"""Settings shared by every service, read from the environment.

`AMQP_URL` and `DATABASE_URL` keep their conventional names; everything else is prefixed
`RELAYFLOW_`. Defaults work on a machine with RabbitMQ and PostgreSQL running locally.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relayflow.amqp.connection import DEFAULT_HEARTBEAT, broker_addresses
from relayflow.amqp.senders import Senders
from relayflow.applications import DEFAULT_APPS, step_modules, workflow_modules
from relayflow.contracts.storable import DEFAULT_MAX_INPUT_BYTES
from relayflow.db.urls import check_database_url
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
    # Errors leave the value out: DATABASE_URL and AMQP_URL carry passwords, and these errors
    # reach the terminal before logging (and its redaction) is set up. Each check names what
    # is wrong itself.
    model_config = SettingsConfigDict(
        env_prefix="RELAYFLOW_", extra="ignore", frozen=True, hide_input_in_errors=True
    )

    # One broker, or several nodes of one cluster comma-separated (`relayflow.amqp.connection`).
    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/", validation_alias="AMQP_URL")
    # One host, or several (a primary and its standbys) with ?target_session_attrs=read-write:
    # `relayflow.db.urls`.
    # Seconds between AMQP heartbeats: a node silent for about three of them (a hang, a link
    # that died without a FIN) is left for another.
    amqp_heartbeat: int = Field(default=DEFAULT_HEARTBEAT, ge=2, le=600)
    database_url: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/relayflow", validation_alias="DATABASE_URL"
    )
    # Prefix of every exchange and queue name, so that test runs and tenants can share a broker.
    namespace: str = "relayflow"
    # The applications served, by package (`relayflow.applications`): each gives its
    # `<package>.workflows` to `workflows` and its `<package>.steps` to `step_modules` below.
    apps: Annotated[list[str], NoDecode] = list(DEFAULT_APPS)
    # Modules that define workflows with `define_workflow`; importing them registers nothing
    # globally, each must expose `WORKFLOWS`. Unset: those of `apps`; set, it replaces them.
    workflows: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Modules whose `steps` registries hold step bodies: what a step service serves, and where
    # the orchestrator finds the bodies of local tasks (it imports them only if it has some).
    # Unset: those of `apps`; set, it replaces them.
    step_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # The applications' own processes that the run command (`relayflow-run`) starts beside the
    # core services, as name=module (run with `python -m`), comma-separated:
    # RELAYFLOW_APP_PROCESSES=external=apps.form_submission.external; empty: none. Unset (None):
    # what the applications declare (`PROCESSES` in their packages).
    app_processes: Annotated[dict[str, str] | None, NoDecode] = None
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

    @model_validator(mode="before")
    @classmethod
    def _modules_of_apps(cls, data: object) -> object:
        # Fills what is not set from the applications; a value set (even to the same modules)
        # is taken as it is. Before field validation, so that `apps` is still raw here.
        if not isinstance(data, dict):
            return data
        apps = split_csv(data.get("apps", DEFAULT_APPS))
        if not isinstance(apps, (list, tuple)):
            return data  # the field's own validation says what is wrong
        filled = dict(data)
        if "workflows" not in filled:
            filled["workflows"] = workflow_modules(apps)
        if "step_modules" not in filled:
            filled["step_modules"] = step_modules(apps)
        return filled

    @field_validator("apps", "workflows", "step_modules", mode="before")
    @classmethod
    def _csv(cls, value: object) -> object:
        return split_csv(value)

    @field_validator("apps", "workflows", "step_modules")
    @classmethod
    def _module_names(cls, value: list[str]) -> list[str]:
        wrong = [name for name in value if not _MODULE.match(name)]
        if wrong:
            raise ValueError(f"expected dotted module names, comma-separated; got {wrong}")
        return value

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

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return check_database_url(value)

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
