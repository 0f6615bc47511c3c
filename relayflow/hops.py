"""Hop tracing, a debug aid: when each message reached each hop of its way through the services,
for the bench's per-hop breakdown of a step (`python -m bench --only hops`).

`RELAYFLOW_HOP_TRACE` names a directory (unset or `off`, the default: nothing is recorded). Each
service process opens one `HopTrace` in its lifespan, passes it to the parts that record, and
closes it when it stops. A record is (`time.time_ns()`, hop, key, workflow id, step), kept in
memory and written at close, one JSON line each, to `<dir>/<role>-<pid>.jsonl`: nothing is
written on the hot path (a process killed with SIGKILL loses its records; past `limit` records a
process stops recording, with a warning). The clock is the wall clock, so that records of
different processes on one machine can be joined.

Off, a call is one attribute check and allocates nothing — so what a caller passes must cost
nothing to build either: attributes and constants, never an f-string or a list.

The key is a message id, or for the event hops an event type (`step` then carries its seq).
The hops, in the order one step meets them (`bench/hops.py` joins them):

    gw.received gw.publish gw.confirmed      the gateway's start: handler entered, StartWorkflow
                                             sent, confirmed (the 202 follows)
    orch.delivered orch.locked               a batch handed to the orchestrator; its messages
    orch.written orch.committed              claimed and workflows locked; its statements done
                                             (commit pending); committed
    relay.publish relay.confirmed            the outbox relay sends the commit's rows; confirmed
    step.handed                              (eager dispatch) a step service's commit's command
                                             handed to its own worker instead of published
    step.delivered step.claimed              a batch handed to the step worker; claimed
    step.body.start step.body.end            the body
    step.recorded step.committed             outcomes written (commit pending); committed
    step.advanced                            (a step service that advances workflows) the
                                             results applied to them, before the commit
    step.publish step.confirmed              the StepResult sent; confirmed (the ack follows)
    gw.event gw.sse                          an event reached the gateway's hub; written to an
                                             SSE stream
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import orjson

log = logging.getLogger(__name__)

# (time.time_ns(), hop, key, workflow id, step or event seq)
Record = tuple[int, str, str, str, str | int]

DEFAULT_LIMIT = 1_000_000


class Identified(Protocol):
    """A message, delivery or outbox row: anything with a message id."""

    @property
    def message_id(self) -> str | None: ...


class HopTrace:
    """One process's hop records. `HopTrace()` records nothing."""

    __slots__ = ("_limit", "_path", "_records", "on")

    def __init__(self, path: Path | None = None, *, limit: int = DEFAULT_LIMIT) -> None:
        self.on = path is not None
        self._path = path
        self._limit = limit
        self._records: list[Record] = []

    @classmethod
    def open(cls, directory: Path | None, role: str) -> HopTrace:
        """The trace of a process in `role`, writing under `directory` (None: off)."""
        if directory is None:
            return cls()
        directory.mkdir(parents=True, exist_ok=True)
        return cls(directory / f"{role}-{os.getpid()}.jsonl")

    @property
    def path(self) -> Path | None:
        return self._path

    def now(self) -> int:
        """The time to pass as `at` to a later `record` (0 when off)."""
        return time.time_ns() if self.on else 0

    def record(
        self, hop: str, key: str | None, workflow_id: str = "", step: str | int = "", *, at: int = 0
    ) -> None:
        """`key` reached `hop` now (or at `at`, from `now`)."""
        if self.on:
            self._records.append((at or time.time_ns(), hop, key or "", workflow_id, step))
            if len(self._records) >= self._limit:
                self._full()

    def record_each(self, hop: str, items: Iterable[str | Identified]) -> None:
        """Each of `items` (message ids, or things with one) reached `hop` now."""
        if self.on:
            now = time.time_ns()
            for item in items:
                key = item if isinstance(item, str) else item.message_id
                self._records.append((now, hop, key or "", "", ""))
            if len(self._records) >= self._limit:
                self._full()

    def _full(self) -> None:
        log.warning("hop trace: %d records kept, recording no more", len(self._records))
        self.on = False

    def close(self) -> None:
        """Write the records kept so far to the file (appending) and forget them."""
        if self._path is None or not self._records:
            return
        records, self._records = self._records, []
        with self._path.open("ab") as out:
            for t, hop, key, workflow_id, step in records:
                out.write(
                    orjson.dumps({"t": t, "hop": hop, "key": key, "wf": workflow_id, "step": step})
                )
                out.write(b"\n")


def read(directory: Path) -> list[Record]:
    """Every record written under `directory`, by every process, in time order."""
    records: list[Record] = []
    for path in sorted(directory.glob("*.jsonl")):
        with path.open("rb") as lines:
            for line in lines:
                row = orjson.loads(line)
                records.append((row["t"], row["hop"], row["key"], row["wf"], row["step"]))
    records.sort(key=lambda record: record[0])
    return records
