"""Large workflow inputs kept in memory, so that locking a workflow does not read them again.

A workflow's input never changes after its start, but every batch that locks the workflow used
to read it: for a map over 10,000 items in its input that is 330 kB detoasted, sent and decoded
per result, and the cost of an item grew with the size of the map. The lock query leaves out an
input this cache holds (matched on workflow id *and* input hash, so a workflow deleted and
started again under the same id with another input is read afresh). Small inputs are cheap to
read and are not kept; the cache is bounded by the JSON size of what it holds, least recently
used first out. Each orchestrator process has its own: nothing is shared, so nothing can be
stale across replicas.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

# Inputs stored in fewer bytes than this (PostgreSQL's size of the column, compressed) are read
# with the row every time.
DEFAULT_MIN_BYTES = 2 * 1024
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CachedInput:
    input_hash: str
    value: Any
    size: int


class InputCache:
    def __init__(
        self, *, max_bytes: int = DEFAULT_MAX_BYTES, min_bytes: int = DEFAULT_MIN_BYTES
    ) -> None:
        self._max_bytes = max_bytes
        self._min_bytes = min_bytes
        self._entries: OrderedDict[str, CachedInput] = OrderedDict()
        self._bytes = 0
        # Rows locked with their input left out.
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """JSON bytes held."""
        return self._bytes

    def pin(self, workflow_ids: Iterable[str]) -> dict[str, CachedInput]:
        """The entries held for these workflows, as of now: the caller keeps them while its
        query runs, whatever another batch evicts meanwhile."""
        pinned: dict[str, CachedInput] = {}
        for workflow_id in workflow_ids:
            entry = self._entries.get(workflow_id)
            if entry is not None:
                self._entries.move_to_end(workflow_id)
                pinned[workflow_id] = entry
        return pinned

    def offer(self, workflow_id: str, input_hash: str, value: Any, stored_size: int) -> None:
        """Keep an input read from the database (or just stored) if it is worth keeping: one
        stored in at least the minimum. What it holds is counted in JSON bytes."""
        if stored_size < self._min_bytes:
            return
        size = len(orjson.dumps(value))
        if size > self._max_bytes:
            return
        old = self._entries.pop(workflow_id, None)
        if old is not None:
            self._bytes -= old.size
        self._entries[workflow_id] = CachedInput(input_hash, value, size)
        self._bytes += size
        while self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= evicted.size

    def forget(self, workflow_ids: Iterable[str]) -> None:
        for workflow_id in workflow_ids:
            old = self._entries.pop(workflow_id, None)
            if old is not None:
                self._bytes -= old.size

    @staticmethod
    def hashes(pinned: Mapping[str, CachedInput]) -> tuple[list[str], list[str]]:
        """The (ids, input hashes) query parameters naming the inputs the rows may leave out."""
        ids = sorted(pinned)
        return ids, [pinned[i].input_hash for i in ids]
