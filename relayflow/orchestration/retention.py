"""Retention: what finished runs leave behind, pruned after configurable windows in small batches
that yield to the hot path. What goes when, why those windows keep every duplicate recognised,
and the rule the settings must keep are ARCHITECTURE.md's "Retention"; the statements are
`retention.sql`'s.

One pass takes, in turn, one batch of each kind (finished workflows with everything they own,
inbox ids, invocation records, Idempotency-Keys of runs that never started) until each kind
has caught up (a batch less than full), pausing between rounds. Every batch is its own short
transaction with a low `lock_timeout` and `statement_timeout`; a batch that hits either gives
its kind up until the next pass. Every orchestrator replica may run the loop: the batches take
their rows with SKIP LOCKED, so replicas share the work instead of waiting on each other.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
from asyncpg.exceptions import LockNotAvailableError, QueryCanceledError

from relayflow.amqp.settle import Backoff
from relayflow.db import Connection, Queries

log = logging.getLogger("relayflow.retention")

QUERIES = Queries.load("relayflow.orchestration", "retention.sql")

# A window of 0 keeps its rows forever.
FOREVER: Final = 0.0
WEEK: Final = 7 * 24 * 3600.0
# The longest pause before a delivery is handed back, by a step service after an outage and by
# the orchestrator deferring a signal that overtook its start (`Backoff`'s default cap).
LONGEST_PAUSE: Final = Backoff().longest

# The settings behind each window, for the messages that refuse a configuration.
SETTING: Final = {
    "workflows": "RELAYFLOW_RETENTION_WORKFLOWS_SECONDS",
    "inbox": "RELAYFLOW_RETENTION_INBOX_SECONDS",
    "invocations": "RELAYFLOW_RETENTION_INVOCATIONS_SECONDS",
    "keys": "RELAYFLOW_RETENTION_KEYS_SECONDS",
}


@dataclass(frozen=True, slots=True)
class Horizon:
    """How long after a message was first handled a copy of it can still arrive, in seconds,
    with the terms it is made of (for the message that refuses a configuration)."""

    seconds: float
    terms: str


def redelivery_horizon(
    *,
    delivery_limit: int,
    outbox_stale_after: float,
    outbox_sweep_interval: float,
    defer_first: float,
    defer_limit: int,
) -> Horizon:
    """The broker's redelivery horizon: a delivery comes back at most `delivery_limit` times
    (the quorum queues' x-delivery-limit), each after a pause of at most LONGEST_PAUSE — or,
    for a deferred signal, after the orchestrator's doubling deferrals — and a message whose
    publish was not confirmed is sent again by the outbox sweep once it is `outbox_stale_after`
    old (looked for every `outbox_sweep_interval`). Consumer outages come on top: see
    ARCHITECTURE.md."""
    deferrals = Backoff(first=defer_first, longest=max(defer_first, LONGEST_PAUSE))
    deferred = sum(deferrals.after(n) for n in range(defer_limit))
    handed_back = delivery_limit * LONGEST_PAUSE
    seconds = max(handed_back, deferred) + outbox_stale_after + outbox_sweep_interval
    terms = (
        f"RELAYFLOW_DELIVERY_LIMIT={delivery_limit} deliveries x {LONGEST_PAUSE:g} s"
        + (f" (deferrals: {deferred:g} s)" if deferred > handed_back else "")
        + f" + RELAYFLOW_OUTBOX_STALE_AFTER={outbox_stale_after:g} s"
        + f" + RELAYFLOW_OUTBOX_SWEEP_INTERVAL={outbox_sweep_interval:g} s"
    )
    return Horizon(seconds, terms)


def _longer(value: float) -> float:
    return math.inf if value == FOREVER else value


@dataclass(frozen=True, slots=True)
class Windows:
    """Seconds each kind is kept (FOREVER: 0): workflows after they finished, inbox ids after
    they were received, invocation records after their attempt ended, Idempotency-Keys of runs
    that never started after they were recorded (a run's keys go with the run)."""

    workflows: float = WEEK
    inbox: float = WEEK
    invocations: float = WEEK
    keys: float = WEEK

    def problems(self, horizon: Horizon) -> list[str]:
        """What breaks the rule (empty: nothing): every window covers the redelivery horizon,
        and keys are kept at least as long as workflows."""
        found = []
        for kind in ("inbox", "invocations", "workflows"):
            value = getattr(self, kind)
            if value != FOREVER and value < horizon.seconds:
                found.append(
                    f"{SETTING[kind]}={value:g} is shorter than the broker's redelivery horizon "
                    f"of {horizon.seconds:g} s ({horizon.terms}): a copy of a message could "
                    f"arrive after its {kind} record is gone; set it to at least "
                    f"{math.ceil(horizon.seconds)}, or 0 to keep them forever"
                )
        if _longer(self.keys) < _longer(self.workflows):
            found.append(
                f"{SETTING['keys']}={self.keys:g} is shorter than "
                f"{SETTING['workflows']}={self.workflows:g} (0 is forever): a key whose run "
                "is kept must not be looked for in every batch; make it at least as long"
            )
        return found


@dataclass(frozen=True, slots=True)
class Retention:
    """The windows, and how the loop goes about them: rows per statement, the pause between
    rounds of batches and between passes, and each batch's lock and statement timeouts."""

    windows: Windows = field(default_factory=Windows)
    batch_size: int = 500
    pause: float = 0.05
    interval: float = 60.0
    lock_timeout_ms: int = 100
    statement_timeout_ms: int = 2000


@dataclass
class PassReport:
    """What one pass deleted: for each table, the rows each statement deleted, in order (a
    statement that deleted nothing is listed too); and the kinds that gave up on a timeout."""

    deleted: dict[str, list[int]] = field(default_factory=dict)
    yielded: list[str] = field(default_factory=list)

    def record(self, table: str, rows: int) -> int:
        self.deleted.setdefault(table, []).append(rows)
        return rows

    def total(self, table: str) -> int:
        return sum(self.deleted.get(table, ()))

    def summary(self) -> str:
        parts = [f"{table} {sum(rows)}" for table, rows in self.deleted.items() if sum(rows)]
        return ", ".join(parts) or "nothing"


def _rows(status: str) -> int:
    """The row count of a command tag (`DELETE 12`)."""
    return int(status.rsplit(" ", 1)[-1])


# One batch of a kind: deletes, and returns whether there is more to do in this pass.
Batch = Callable[[Connection, float, int, PassReport], Awaitable[bool]]

_OWNED = (
    ("workflow_events", QUERIES.delete_events),
    ("step_items", QUERIES.delete_items),
    ("step_invocations", QUERIES.delete_invocations),
    ("signal_keys", QUERIES.delete_signal_keys),
    ("idempotency_keys", QUERIES.delete_idempotency_keys),
)


async def _workflows(conn: Connection, window: float, n: int, report: PassReport) -> bool:
    rows = await conn.fetch(QUERIES.pick_finished, window, n)
    ids = sorted(row["id"] for row in rows)
    if not ids:
        return False
    owned = 0
    for table, query in _OWNED:
        owned += report.record(table, _rows(await conn.execute(query, ids, n)))
    runs = report.record("workflows", _rows(await conn.execute(QUERIES.delete_emptied, ids)))
    # More to do while the pick was full or some picked runs still own rows; but picked and
    # nothing deleted means what is left is held by others (SKIP LOCKED): the next pass.
    return (len(ids) == n or runs < len(ids)) and owned + runs > 0


def _simple(table: str, query: str) -> Batch:
    async def batch(conn: Connection, window: float, n: int, report: PassReport) -> bool:
        # A batch that was not full has caught up: rows crossing the window meanwhile wait for
        # the next pass (a kind that never caught up under a steady inflow would keep the pass,
        # and the kinds already done, from ending).
        return report.record(table, _rows(await conn.execute(query, window, n))) == n

    return batch


# Each kind's batch, by the name of its window in `Windows`.
KINDS: Final[dict[str, Batch]] = {
    "workflows": _workflows,
    "inbox": _simple("inbox", QUERIES.prune_inbox),
    "invocations": _simple("step_invocations", QUERIES.prune_invocations),
    "keys": _simple("idempotency_keys", QUERIES.prune_orphan_keys),
}


async def prune_once(pool: asyncpg.Pool[Any], retention: Retention) -> PassReport:
    """One pass: batches of every kind kept for less than forever, each kind until a batch
    finds less than a full batch past its window (it has caught up) or gives up on a
    timeout."""
    report = PassReport()
    windows = retention.windows
    active = {
        kind: (getattr(windows, kind), batch)
        for kind, batch in KINDS.items()
        if getattr(windows, kind) != FOREVER
    }
    limits = (f"{retention.lock_timeout_ms}ms", f"{retention.statement_timeout_ms}ms")
    while active:
        for kind, (window, batch) in list(active.items()):
            try:
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute(QUERIES.batch_limits, *limits)
                    more = await batch(conn, window, retention.batch_size, report)
            except (LockNotAvailableError, QueryCanceledError) as exc:
                log.info("retention of %s yielded (%s); next pass", kind, type(exc).__name__)
                report.yielded.append(kind)
                more = False
            if not more:
                del active[kind]
        if active:
            await asyncio.sleep(retention.pause)
    return report


async def run(pool: asyncpg.Pool[Any], retention: Retention) -> None:
    """Prune every `retention.interval` seconds, for ever (cancel to stop)."""
    while True:
        try:
            started = asyncio.get_running_loop().time()
            report = await prune_once(pool, retention)
            if report.summary() != "nothing" or report.yielded:
                took = asyncio.get_running_loop().time() - started
                log.info(
                    "retention pass removed %s in %.1fs%s",
                    report.summary(),
                    took,
                    f"; yielded: {', '.join(report.yielded)}" if report.yielded else "",
                )
        except Exception:
            log.exception("retention pass failed")
        await asyncio.sleep(retention.interval)
