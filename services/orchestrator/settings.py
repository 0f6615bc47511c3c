"""The orchestrator's settings (environment, prefix `RELAYFLOW_ORCHESTRATOR_` for its own)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from relayflow.settings import Settings


class OrchestratorSettings(Settings):
    model_config = SettingsConfigDict(env_prefix="RELAYFLOW_", extra="ignore", frozen=True)

    # Deliveries the broker may hand over before we ack; bounds memory and batch size.
    orchestrator_prefetch: int = Field(default=256, ge=1)
    orchestrator_batch_size: int = Field(default=128, ge=1)
    # Batches handled at once; each locks only its own workflows. One is best on a 2-core
    # machine (bench: larger batches, fewer commits); more helps where PostgreSQL has cores to
    # spare for concurrent transactions.
    orchestrator_workers: int = Field(default=1, ge=1)
    # A signal that overtook its workflow's start is handed back after this many seconds,
    # doubling (up to 30 s), and dead-lettered after `orchestrator_defer_limit` returns.
    orchestrator_defer_first: float = Field(default=1.0, gt=0)
    orchestrator_defer_limit: int = Field(default=6, ge=0, le=15)
    outbox_stale_after: float = Field(default=5.0, gt=0)
    outbox_sweep_interval: float = Field(default=1.0, gt=0)
    timer_poll_interval: float = Field(default=0.25, gt=0)
    # How often the backlog gauges (relayflow_outbox_pending, _oldest_seconds and
    # relayflow_timers_due) are read, in one query, when metrics are served
    # (RELAYFLOW_METRICS_PORT).
    outbox_gauge_interval: float = Field(default=5.0, gt=0)
    # How long applied message ids are kept for deduplication.
    inbox_retention_seconds: float = Field(default=7 * 24 * 3600, gt=0)
