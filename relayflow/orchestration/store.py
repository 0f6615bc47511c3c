"""Workflow state, events, inbox, outbox and timers in PostgreSQL, a batch at a time."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from relayflow.amqp import OutgoingMessage
from relayflow.contracts import ParentRef, WorkflowEvent, encode
from relayflow.db import Connection, Queries
from relayflow.machine import (
    CancelItems,
    CreateItems,
    ItemsClaimed,
    ItemsCollected,
    ResetItems,
    SaveItem,
    Timer,
    TimerFired,
    TimerKind,
)
from relayflow.model import ItemState, StepState, StepStatus, WorkflowState, WorkflowStatus
from relayflow.orchestration.inputs import CachedInput, InputCache

QUERIES = Queries.load("relayflow.orchestration")


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    message: OutgoingMessage


def _state_from_row(row: Any, pinned: Mapping[str, CachedInput]) -> WorkflowState:
    return WorkflowState(
        id=row["id"],
        name=row["name"],
        status=WorkflowStatus(row["status"]),
        input=pinned[row["id"]].value if row["input_cached"] else row["input"],
        input_hash=row["input_hash"],
        idempotency_key=row["idempotency_key"],
        steps={name: StepState.from_json(step) for name, step in row["steps"].items()},
        signals=row["signals"],
        output=row["output"],
        error=row["error"],
        last_seq=row["last_seq"],
        run=row["run"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        parent=ParentRef.model_validate(row["parent"]) if row["parent"] else None,
        mailbox=row["mailbox"],
        version=row["version"],
        tenant=row["tenant"],
        trace_parent=row["trace_parent"],
    )


async def claim_and_lock(
    conn: Connection,
    message_ids: Sequence[str],
    workflow_ids: Iterable[str],
    inputs: InputCache | None = None,
) -> tuple[set[str], dict[str, WorkflowState]]:
    """Record the message ids in the inbox and lock the workflows they are about, in one round
    trip: returns the ids not seen before, and the workflows, locked and loaded (their inputs
    from `inputs` where it holds them; without one, every input is read)."""
    wanted = sorted(set(workflow_ids))
    pinned = inputs.pin(wanted) if inputs is not None else {}
    rows = await conn.fetch(
        QUERIES.claim_and_lock, list(message_ids), wanted, *InputCache.hashes(pinned)
    )
    fresh = set(rows[0]["fresh"] or ()) if rows else set()
    return fresh, _states(rows, pinned, inputs)


async def lock_workflows(
    conn: Connection, ids: Iterable[str], inputs: InputCache | None = None
) -> dict[str, WorkflowState]:
    """Lock the rows (in id order, so concurrent batches cannot deadlock) and load them."""
    wanted = set(ids)
    if not wanted:
        return {}
    _, states = await claim_and_lock(conn, (), wanted, inputs)
    return states


def _states(
    rows: Sequence[Any], pinned: Mapping[str, CachedInput], inputs: InputCache | None
) -> dict[str, WorkflowState]:
    states: dict[str, WorkflowState] = {}
    for row in rows:
        if row["id"] is None:
            continue
        state = _state_from_row(row, pinned)
        if inputs is not None and row["input_cached"]:
            inputs.hits += 1
        elif inputs is not None:
            inputs.offer(state.id, state.input_hash, state.input, row["input_size"])
        states[state.id] = state
    return states


async def insert_workflows(conn: Connection, states: Sequence[WorkflowState]) -> set[str]:
    """Insert new workflows; returns the ids inserted (an existing id is left alone)."""
    if not states:
        return set()
    rows = await conn.fetch(
        QUERIES.insert_workflows,
        [s.id for s in states],
        [s.name for s in states],
        [s.status.value for s in states],
        [s.input for s in states],
        [s.input_hash for s in states],
        [s.idempotency_key for s in states],
        [s.steps_json() for s in states],
        [s.signals for s in states],
        [s.output for s in states],
        [s.error for s in states],
        [s.last_seq for s in states],
        [s.run for s in states],
        [s.created_at for s in states],
        [s.updated_at for s in states],
        [s.finished_at for s in states],
        [s.parent.model_dump(mode="json", by_alias=True) if s.parent else None for s in states],
        [s.mailbox for s in states],
        [s.version for s in states],
        [s.tenant for s in states],
        [s.trace_parent for s in states],
    )
    return {row["id"] for row in rows}


async def write_batch(
    conn: Connection,
    states: Sequence[WorkflowState],
    events: Sequence[WorkflowEvent],
    timers: Sequence[Timer],
    messages: Sequence[OutgoingMessage],
    *,
    sent: Sequence[int] = (),
) -> list[OutboxRow]:
    """Write a batch's changed workflows, events, timers and outgoing messages, and delete the
    outbox rows `sent` (already confirmed by the broker), in one round trip; returns the new
    outbox rows to hand to the relay."""
    rows = await conn.fetch(
        QUERIES.write_batch,
        [s.id for s in states],
        [s.status.value for s in states],
        [s.steps_json() for s in states],
        [s.signals for s in states],
        [s.output for s in states],
        [s.error for s in states],
        [s.last_seq for s in states],
        [s.run for s in states],
        [s.updated_at for s in states],
        [s.finished_at for s in states],
        [e.workflow_id for e in events],
        [e.seq for e in events],
        [e.event.value for e in events],
        # Already JSON: a Fragment goes into the jsonb parameter as is, not parsed and re-dumped.
        [orjson.Fragment(encode(e)) for e in events],
        [e.created_at for e in events],
        [t.workflow_id for t in timers],
        [t.kind.value for t in timers],
        [t.step_name for t in timers],
        [t.attempt for t in timers],
        [t.fire_at for t in timers],
        [m.exchange for m in messages],
        [m.routing_key for m in messages],
        [m.message_id for m in messages],
        [m.type for m in messages],
        [m.body for m in messages],
        [m.mandatory for m in messages],
        list(sent),
        [t.step_key for t in timers],
        [s.mailbox for s in states],
        [m.correlation_id for m in messages],
        [m.traceparent for m in messages],
    )
    by_message_id = {m.message_id: m for m in messages}
    return [OutboxRow(row["id"], by_message_id[row["message_id"]]) for row in rows]


async def claim_due_timers(conn: Connection, limit: int) -> list[TimerFired]:
    rows = await conn.fetch(QUERIES.claim_due_timers, limit)
    return [
        TimerFired(
            row["workflow_id"],
            TimerKind(row["kind"]),
            row["attempt"],
            step_name=row["step_name"],
            step_key=row["step_key"],
        )
        for row in rows
    ]


async def forget_messages(conn: Connection, message_ids: Sequence[str]) -> None:
    """Remove message ids from the inbox (inputs handed back to come again)."""
    if message_ids:
        await conn.execute(QUERIES.forget_messages, list(message_ids))


async def delete_outbox(conn: Connection, ids: Sequence[int]) -> None:
    if ids:
        await conn.execute(QUERIES.delete_outbox, list(ids))


async def claim_stale_outbox(conn: Connection, older_than: float, limit: int) -> list[OutboxRow]:
    rows = await conn.fetch(QUERIES.claim_stale_outbox, older_than, limit)
    return [
        OutboxRow(
            row["id"],
            OutgoingMessage(
                exchange=row["exchange"],
                routing_key=row["routing_key"],
                body=bytes(row["body"]),
                message_id=row["message_id"],
                type=row["type"],
                headers={"x-schema-version": _schema_version(bytes(row["body"]))},
                mandatory=row["mandatory"],
                correlation_id=row["correlation_id"],
                traceparent=row["traceparent"],
            ),
        )
        for row in rows
    ]


def _schema_version(body: bytes) -> int:
    """The header's value is the body's `schemaVersion` (absent: 1), as when it was first sent:
    a stale row may hold a message of another version than today's."""
    try:
        fields = orjson.loads(body)
    except orjson.JSONDecodeError:
        return 1
    version = fields.get("schemaVersion", 1) if isinstance(fields, dict) else 1
    return version if isinstance(version, int) else 1


async def backlog(conn: Connection) -> tuple[int, float, int]:
    """Outbox rows waiting for the broker's confirm, the oldest one's age in seconds, and the
    timers past their due time."""
    row = await conn.fetchrow(QUERIES.backlog)
    assert row is not None
    return int(row["pending"]), max(float(row["oldest"]), 0.0), int(row["timers_due"])


# --- map items ---

ItemKey = tuple[str, str, str]
# The item writes of a batch, applied in the order the machine made them.
ItemWrite = CreateItems | SaveItem | ResetItems | CancelItems


def _item_from_row(row: Any) -> ItemState:
    return ItemState(
        workflow_id=row["workflow_id"],
        step_name=row["step_name"],
        key=row["key"],
        index=row["item_index"],
        item=row["item"],
        status=StepStatus(row["status"]),
        attempts=row["attempts"],
        output=row["output"],
        error=row["error"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
    )


async def load_items(conn: Connection, keys: Iterable[ItemKey]) -> dict[ItemKey, ItemState]:
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    rows = await conn.fetch(
        QUERIES.load_items,
        [k[0] for k in wanted],
        [k[1] for k in wanted],
        [k[2] for k in wanted],
    )
    items = (_item_from_row(row) for row in rows)
    return {(i.workflow_id, i.step_name, i.key): i for i in items}


async def write_items(conn: Connection, writes: Sequence[ItemWrite], now: datetime) -> None:
    """Apply item writes in order, a run of writes of one type in one statement."""
    start = 0
    while start < len(writes):
        end = start
        while end < len(writes) and type(writes[end]) is type(writes[start]):
            end += 1
        await _write_run(conn, writes[start:end], now)
        start = end


async def _write_run(conn: Connection, run: Sequence[ItemWrite], now: datetime) -> None:
    first = run[0]
    if isinstance(first, CreateItems):
        items = [item for op in run if isinstance(op, CreateItems) for item in op.items]
        await conn.execute(
            QUERIES.create_items,
            [i.workflow_id for i in items],
            [i.step_name for i in items],
            [i.key for i in items],
            [i.index for i in items],
            [i.item for i in items],
        )
    elif isinstance(first, SaveItem):
        await conn.execute(QUERIES.save_and_claim_items, *_save_parameters(run), *_claims({}, now))
    else:
        steps = [
            (op.workflow_id, op.step_name)
            for op in run
            if not isinstance(op, (CreateItems, SaveItem))
        ]
        if isinstance(first, ResetItems):
            await conn.execute(QUERIES.reset_items, [s[0] for s in steps], [s[1] for s in steps])
        else:
            await conn.execute(
                QUERIES.cancel_items, [s[0] for s in steps], [s[1] for s in steps], now
            )


def _save_parameters(run: Sequence[ItemWrite]) -> list[list[Any]]:
    # One row per item (the last state wins): an UPDATE joining two rows of one item would
    # apply an arbitrary one.
    latest = {
        (op.item.workflow_id, op.item.step_name, op.item.key): op.item
        for op in run
        if isinstance(op, SaveItem)
    }
    saved = list(latest.values())
    return [
        [i.workflow_id for i in saved],
        [i.step_name for i in saved],
        [i.key for i in saved],
        [i.status.value for i in saved],
        [i.attempts for i in saved],
        [i.output for i in saved],
        [i.error for i in saved],
        [i.started_at for i in saved],
        [i.finished_at for i in saved],
    ]


async def write_and_claim(
    conn: Connection,
    writes: Sequence[ItemWrite],
    requests: dict[tuple[str, str], int],
    now: datetime,
) -> list[ItemsClaimed]:
    """`write_items`, then `claim_items`: in one statement when the writes are saves that free
    no item to be claimed (the usual batch of a running map), else one after the other."""
    one_statement = (
        writes
        and requests
        and all(isinstance(w, SaveItem) and w.item.status is not StepStatus.PENDING for w in writes)
    )
    if not one_statement:
        await write_items(conn, writes, now)
        return await claim_items(conn, requests, now)
    rows = await conn.fetch(
        QUERIES.save_and_claim_items, *_save_parameters(writes), *_claims(requests, now)
    )
    return _claimed(requests, rows)


async def claim_items(
    conn: Connection, requests: dict[tuple[str, str], int], now: datetime
) -> list[ItemsClaimed]:
    """Move the next pending items of each map (requests: count by (workflow, step)) to their
    next attempt, and answer each request with its items in item order."""
    if not requests:
        return []
    rows = await conn.fetch(QUERIES.claim_items, *_claims(requests, now))
    return _claimed(requests, rows)


def _claims(requests: dict[tuple[str, str], int], now: datetime) -> list[Any]:
    """The parameters of a claim: workflows, steps and counts in (workflow, step) order."""
    wanted = sorted(requests)
    return [[w[0] for w in wanted], [w[1] for w in wanted], [requests[w] for w in wanted], now]


def _claimed(requests: dict[tuple[str, str], int], rows: Sequence[Any]) -> list[ItemsClaimed]:
    wanted = sorted(requests)
    claimed: dict[tuple[str, str], list[ItemState]] = {w: [] for w in wanted}
    for row in rows:
        item = _item_from_row(row)
        claimed[(item.workflow_id, item.step_name)].append(item)
    return [
        ItemsClaimed(
            workflow_id=w[0],
            step_name=w[1],
            requested=requests[w],
            items=tuple(sorted(claimed[w], key=lambda item: item.index)),
        )
        for w in wanted
    ]


async def collect_items(conn: Connection, steps: Iterable[tuple[str, str]]) -> list[ItemsCollected]:
    wanted = sorted(set(steps))
    if not wanted:
        return []
    rows = await conn.fetch(QUERIES.collect_items, [w[0] for w in wanted], [w[1] for w in wanted])
    found = {(row["workflow_id"], row["step_name"]): tuple(row["outputs"]) for row in rows}
    return [ItemsCollected(w[0], w[1], found.get(w, ())) for w in wanted]
