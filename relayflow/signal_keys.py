"""Signals sent from outside: what the gateway's `POST /workflows/{id}/signals/{name}` and
`relayflow workflows signal --broker` share, so that a key means the same through either.

A signal sent without an idempotency key gets a random message id. With one, its id is the one
the key names (`ids.signal_id`), and the key's first use is recorded in `signal_keys` with the
hash of the request (the validated payload and the sender): the same key with the same request
is the same message again, which the orchestrator's inbox counts once; the same key with another
request is refused (`SignalKeyConflict`), whichever of the two sent it first.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from relayflow.contracts import new_message_id
from relayflow.db import Connection, Queries
from relayflow.errors import RelayflowError
from relayflow.model import WorkflowStatus, ids


@functools.cache
def _queries() -> Queries:
    return Queries.load("relayflow", "signal_keys.sql")


class SignalKeyConflict(RelayflowError):
    """The idempotency key was first used for this signal of this workflow with another
    payload or sender."""

    def __init__(self, key: str, signal_name: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used for signal {signal_name!r} of this "
            "workflow with a different payload or sender; use a new key for a different signal"
        )
        self.key = key
        self.signal_name = signal_name


@dataclass(frozen=True, slots=True)
class SignalTarget:
    """What the database says of the workflow a signal is for."""

    name: str
    # The definition's version the run is pinned to; None for a run from before versions.
    version: str | None
    status: WorkflowStatus


async def signal_target(
    conn: Connection, workflow_id: str, tenant: str | None = None
) -> SignalTarget | None:
    """The workflow's definition name, version and status; None if there is no such workflow
    (of `tenant`, if given)."""
    row = await conn.fetchrow(_queries().signal_target, workflow_id, tenant)
    if row is None:
        return None
    return SignalTarget(row["name"], row["version"], WorkflowStatus(row["status"]))


def request_hash(payload: dict[str, Any], sent_by: str | None) -> str:
    """What a signal's idempotency key is bound to: the validated payload and the sender."""
    request = {"payload": payload, "sentBy": sent_by}
    return hashlib.sha256(orjson.dumps(request, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def signal_message_id(
    conn: Connection,
    workflow_id: str,
    signal_name: str,
    key: str | None,
    *,
    payload: dict[str, Any],
    sent_by: str | None,
) -> str:
    """The message id to send this signal with: random without a key; with one, the id the key
    names, once its first use is recorded. Raises `SignalKeyConflict` when the key was first
    used with another request."""
    if key is None:
        return new_message_id()
    signal_id = ids.signal_id(workflow_id, signal_name, key)
    wanted = request_hash(payload, sent_by)
    row = await conn.fetchrow(
        _queries().claim_signal_key, workflow_id, signal_name, key, signal_id, wanted
    )
    if row is None:
        row = await conn.fetchrow(_queries().get_signal_key, workflow_id, signal_name, key)
        if row is None:  # pragma: no cover - keys are never deleted
            raise RuntimeError(f"signal key {key!r} conflicted but cannot be read")
    if row["request_hash"] != wanted:
        raise SignalKeyConflict(key, signal_name)
    # The id recorded with the key's first use (the same scheme, unless it changed since).
    recorded: str = row["signal_id"]
    return recorded
