"""The orchestrator's settings (environment, prefix `RELAYFLOW_ORCHESTRATOR_` for its own)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from relayflow.orchestration.retention import WEEK, Horizon, Retention, Windows, redelivery_horizon
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
    # Retention (relayflow.orchestration.retention; ARCHITECTURE.md, "Retention"), seconds, 0:
    # forever. Finished workflows with all they own, after they finished; applied message ids
    # (the inbox), after they were received; step invocation records, after their attempt
    # ended; Idempotency-Keys whose run never started, after they were recorded (a run's keys
    # go with it). Refused at start-up unless every window covers the redelivery horizon and
    # keys are kept at least as long as workflows.
    retention_workflows_seconds: float = Field(default=WEEK, ge=0)
    retention_inbox_seconds: float = Field(default=WEEK, ge=0)
    retention_invocations_seconds: float = Field(default=WEEK, ge=0)
    retention_keys_seconds: float = Field(default=WEEK, ge=0)
    # Rows per statement, the pause between rounds of batches, and between passes.
    retention_batch_size: int = Field(default=500, ge=1, le=10_000)
    retention_pause_seconds: float = Field(default=0.05, ge=0)
    retention_interval_seconds: float = Field(default=60.0, gt=0)

    @property
    def redelivery_horizon(self) -> Horizon:
        return redelivery_horizon(
            delivery_limit=self.delivery_limit,
            outbox_stale_after=self.outbox_stale_after,
            outbox_sweep_interval=self.outbox_sweep_interval,
            defer_first=self.orchestrator_defer_first,
            defer_limit=self.orchestrator_defer_limit,
        )

    @property
    def retention(self) -> Retention:
        return Retention(
            Windows(
                workflows=self.retention_workflows_seconds,
                inbox=self.retention_inbox_seconds,
                invocations=self.retention_invocations_seconds,
                keys=self.retention_keys_seconds,
            ),
            batch_size=self.retention_batch_size,
            pause=self.retention_pause_seconds,
            interval=self.retention_interval_seconds,
        )

    @model_validator(mode="after")
    def _retention_rule(self) -> Self:
        problems = self.retention.windows.problems(self.redelivery_horizon)
        if problems:
            raise ValueError("; ".join(problems))
        return self
