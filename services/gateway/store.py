"""What the gateway reads from and writes to PostgreSQL; the SQL lives in `queries.sql`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from relayflow import signal_keys
from relayflow.contracts import DEFAULT_TENANT
from relayflow.db import Queries
from relayflow.model import ItemState, StepStatus, WorkflowStatus
from relayflow.signal_keys import SignalTarget


@dataclass(frozen=True, slots=True)
class KeyRecord:
    workflow_id: str
    request_hash: str
    created: bool


@dataclass(frozen=True, slots=True)
class WorkflowRow:
    id: str
    name: str
    status: WorkflowStatus  # the column's CHECK allows nothing else
    input: dict[str, Any]
    output: Any
    error: Any
    steps: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    last_seq: int = 0
    parent_workflow_id: str | None = None
    # The signals kept for a later wait: how many of each name.
    mailbox: dict[str, int] = field(default_factory=dict)
    # The definition's version the run is pinned to; None for a run from before versions.
    version: str | None = None
    tenant: str = DEFAULT_TENANT
    # The trace context its start was processed in (`relayflow.tracing`); None: not traced.
    trace_parent: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    status: WorkflowStatus
    last_seq: int


@dataclass(frozen=True, slots=True)
class ListFilter:
    """What the list shows; None means no filter. `id_prefix` is matched literally."""

    status: str | None = None
    name: str | None = None
    id_prefix: str | None = None
    # Keyset cursor: rows strictly older than (created_at, id).
    before: tuple[datetime, str] | None = None
    # The definition's version the runs are pinned to.
    version: str | None = None
    # Whose runs (the caller's tenant; None: every tenant's, while the gateway runs open).
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class SummaryRow:
    id: str
    name: str
    status: WorkflowStatus
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    last_seq: int
    error: Any
    step_statuses: dict[str, str]
    version: str | None = None
    tenant: str = DEFAULT_TENANT


# What live orchestrator replicas load, as (workflow name, version); None: not known (no
# replica announces).
LoadedVersions = frozenset[tuple[str, str]] | None


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class FinishedStats:
    """Runs of one workflow name that finished in the window: how many, how many ended in
    failure or were cancelled, and their durations' p50 and p99 in seconds."""

    name: str
    finished: int
    failed: int
    cancelled: int
    p50: float | None
    p99: float | None


@dataclass(frozen=True, slots=True)
class OverviewRows:
    """What the overview reads from the workflows of one window: runs created by status, runs
    finished per workflow name, and runs finished by minutes ago."""

    statuses: dict[str, int]
    finished: list[FinishedStats]
    per_minute: dict[int, int]


@dataclass(frozen=True, slots=True)
class OutboxLag:
    pending: int
    oldest_seconds: float


@dataclass(frozen=True, slots=True)
class TimelineEvent:
    """A step-level event of a workflow, for its timeline."""

    seq: int
    event: str
    step_name: str | None
    attempt: int | None
    at: datetime


class GatewayStore:
    def __init__(self, pool: asyncpg.Pool[Any], queries: Queries | None = None) -> None:
        self._pool = pool
        self._q = queries or Queries.load("services.gateway")

    async def claim_idempotency_key(
        self, tenant: str, workflow_name: str, key: str, workflow_id: str, request_hash: str
    ) -> KeyRecord:
        """Record the key (in `tenant`'s namespace), or return what it was first used for."""
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(
                self._q.claim_idempotency_key, workflow_name, key, workflow_id, request_hash, tenant
            )
            if row is not None:
                return KeyRecord(row["workflow_id"], row["request_hash"], created=True)
            row = await conn.fetchrow(self._q.get_idempotency_key, workflow_name, key, tenant)
        if row is None:  # pragma: no cover - keys are never deleted while the gateway runs
            raise RuntimeError(f"idempotency key {key!r} conflicted but cannot be read")
        return KeyRecord(row["workflow_id"], row["request_hash"], created=False)

    async def signal_message_id(
        self,
        workflow_id: str,
        signal_name: str,
        key: str | None,
        *,
        payload: dict[str, Any],
        sent_by: str | None,
    ) -> str:
        """`relayflow.signal_keys.signal_message_id` on a pooled connection."""
        async with self._pool.acquire() as conn:
            return await signal_keys.signal_message_id(
                conn, workflow_id, signal_name, key, payload=payload, sent_by=sent_by
            )

    # Every read of a workflow takes `tenant`: the caller's, whose workflows alone it finds;
    # None (the gateway runs open) finds any tenant's.

    async def signal_target(self, workflow_id: str, tenant: str | None) -> SignalTarget | None:
        async with self._pool.acquire() as conn:
            return await signal_keys.signal_target(conn, workflow_id, tenant)

    async def recently_keyed(self, workflow_id: str, tenant: str | None, within: float) -> bool:
        """Whether an Idempotency-Key named `workflow_id` in the last `within` seconds."""
        return bool(await self._pool.fetchval(self._q.recently_keyed, workflow_id, tenant, within))

    async def get_workflow(self, workflow_id: str, tenant: str | None) -> WorkflowRow | None:
        row = await self._pool.fetchrow(self._q.get_workflow, workflow_id, tenant)
        if row is None:
            return None
        return WorkflowRow(
            id=row["id"],
            name=row["name"],
            status=row["status"],
            input=row["input"],
            output=row["output"],
            error=row["error"],
            steps=row["steps"] or {},
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            finished_at=row["finished_at"],
            last_seq=row["last_seq"],
            parent_workflow_id=row["parent_workflow_id"],
            mailbox=row["mailbox_counts"] or {},
            version=row["version"],
            tenant=row["tenant"],
            trace_parent=row["trace_parent"],
        )

    async def workflow_exists(self, workflow_id: str, tenant: str | None) -> bool:
        return bool(await self._pool.fetchval(self._q.workflow_exists, workflow_id, tenant))

    async def events_after(
        self, workflow_id: str, after_seq: int, tenant: str | None, *, limit: int = 1000
    ) -> list[StoredEvent]:
        rows = await self._pool.fetch(self._q.events_after, workflow_id, after_seq, limit, tenant)
        return [StoredEvent(row["seq"], row["event"], row["body"]) for row in rows]

    async def events_after_if_replayed(
        self,
        fence: int,
        workflow_id: str,
        after_seq: int,
        tenant: str | None,
        *,
        limit: int = 1000,
    ) -> list[StoredEvent] | None:
        """`events_after` on a replica that has replayed the primary's WAL up to `fence`
        (`wal_position`), else None. One connection for both: a read pool over several replicas
        must not check one and read another."""
        async with self._pool.acquire() as conn:
            if not await conn.fetchval(self._q.has_replayed, fence):
                return None
            rows = await conn.fetch(self._q.events_after, workflow_id, after_seq, limit, tenant)
        return [StoredEvent(row["seq"], row["event"], row["body"]) for row in rows]

    async def wal_position(self) -> int:
        """On the primary: its WAL write position (asyncpg gives a pg_lsn as an int)."""
        return int(await self._pool.fetchval(self._q.wal_position))

    async def workflow_progress(self, workflow_id: str, tenant: str | None) -> Progress | None:
        row = await self._pool.fetchrow(self._q.workflow_progress, workflow_id, tenant)
        return None if row is None else Progress(row["status"], row["last_seq"])

    async def list_workflows(self, where: ListFilter, *, limit: int) -> list[SummaryRow]:
        pattern = None if where.id_prefix is None else like_prefix(where.id_prefix)
        before_at, before_id = where.before if where.before is not None else (None, None)
        rows = await self._pool.fetch(
            self._q.list_workflows,
            where.status,
            where.name,
            where.version,
            pattern,
            before_at,
            before_id,
            limit,
            where.tenant,
        )
        return [
            SummaryRow(
                id=row["id"],
                name=row["name"],
                status=row["status"],
                created_at=row["created_at"],
                updated_at=row["updated_at"],
                finished_at=row["finished_at"],
                last_seq=row["last_seq"],
                error=row["error"],
                step_statuses=row["step_statuses"] or {},
                version=row["version"],
                tenant=row["tenant"],
            )
            for row in rows
        ]

    async def first_items(
        self, workflow_id: str, step_names: list[str], *, limit: int
    ) -> dict[str, list[ItemState]]:
        """The first `limit` items of each of these map steps, in item order (a step without
        items yet maps to [])."""
        found: dict[str, list[ItemState]] = {name: [] for name in step_names}
        if not step_names:
            return found
        rows = await self._pool.fetch(self._q.first_items, workflow_id, step_names, limit)
        for row in rows:
            found[row["step_name"]].append(_item(workflow_id, row))
        return found

    async def items_after(
        self,
        workflow_id: str,
        step_name: str,
        *,
        after: int,
        status: StepStatus | None,
        limit: int,
    ) -> list[ItemState]:
        """Up to `limit` items of one map step whose index is above `after`, in item order."""
        rows = await self._pool.fetch(
            self._q.items_after, workflow_id, step_name, after, status, limit
        )
        return [_item(workflow_id, row) for row in rows]

    async def loaded_versions(self, stale_after: float) -> LoadedVersions:
        """The (name, version) pairs live orchestrator replicas load; None when no replica
        announces what it loads (not known, rather than nothing loaded)."""
        rows = await self._pool.fetch(self._q.loaded_versions, stale_after)
        return frozenset((row["name"], row["version"]) for row in rows) or None

    async def overview(self, window_seconds: float, tenant: str | None) -> OverviewRows:
        """Three queries, whatever the number of runs (queries.sql, `overview_*`)."""
        async with self._pool.acquire() as conn:
            statuses = await conn.fetch(self._q.overview_statuses, window_seconds, tenant)
            finished = await conn.fetch(self._q.overview_finished, window_seconds, tenant)
            per_minute = await conn.fetch(self._q.overview_per_minute, window_seconds, tenant)
        return OverviewRows(
            statuses={row["status"]: row["runs"] for row in statuses},
            finished=[
                FinishedStats(
                    name=row["name"],
                    finished=row["finished"],
                    failed=row["failed"],
                    cancelled=row["cancelled"],
                    p50=row["p50"],
                    p99=row["p99"],
                )
                for row in finished
            ],
            per_minute={row["minutes_ago"]: row["runs"] for row in per_minute},
        )

    async def outbox_lag(self) -> OutboxLag:
        row = await self._pool.fetchrow(self._q.outbox_lag)
        assert row is not None  # an aggregate always answers one row
        return OutboxLag(pending=row["pending"], oldest_seconds=row["oldest"])

    async def step_timeline(
        self, workflow_id: str, events: list[str], *, limit: int
    ) -> list[TimelineEvent]:
        rows = await self._pool.fetch(self._q.step_timeline, workflow_id, events, limit)
        return [
            TimelineEvent(
                seq=row["seq"],
                event=row["event"],
                step_name=row["step_name"],
                attempt=row["attempt"],
                at=row["created_at"],
            )
            for row in rows
        ]

    async def ping(self) -> None:
        await self._pool.fetchval(self._q.ping)


def _item(workflow_id: str, row: asyncpg.Record) -> ItemState:
    # The item itself (the body's input) is not read: nothing the gateway shows holds it.
    return ItemState(
        workflow_id=workflow_id,
        step_name=row["step_name"],
        key=row["key"],
        index=row["item_index"],
        item=None,
        status=StepStatus(row["status"]),
        attempts=row["attempts"],
        output=row["output"],
        error=row["error"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


def like_prefix(prefix: str) -> str:
    """A LIKE pattern matching strings that start with `prefix` (its `%`, `_` and `\\` escaped)."""
    for char in ("\\", "%", "_"):
        prefix = prefix.replace(char, "\\" + char)
    return prefix + "%"
