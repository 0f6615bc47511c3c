"""What this orchestrator replica loads, announced in PostgreSQL (`loaded_definitions`), so that
the gateway can show which runs no live replica can apply (ARCHITECTURE.md, "Versions").

A replica upserts one row per (workflow, version) it loads at start-up and refreshes them every
`announce_interval`; a clean stop deletes them. A replica that dies leaves rows that stop
counting once not seen for `announce_stale_after`, and that the next refresh of another replica
deletes.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Iterable
from typing import Any

import asyncpg

from relayflow.db import Queries
from relayflow.workflow import WorkflowDefinition

log = logging.getLogger(__name__)

QUERIES = Queries.load("services.orchestrator", "announce.sql")


def replica_id() -> str:
    """Unique per process, and readable: the host and pid say where it runs, the suffix tells a
    restarted process that reused a pid (in a container, often 1) from its predecessor."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


class Announcer:
    """Announces `definitions` as replica `replica` until stopped."""

    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        definitions: Iterable[WorkflowDefinition],
        *,
        replica: str,
        interval: float,
        stale_after: float,
    ) -> None:
        loaded = sorted({(d.name, d.version) for d in definitions})
        self._pool = pool
        self._names = [name for name, _ in loaded]
        self._versions = [version for _, version in loaded]
        self.replica = replica
        self._interval = interval
        self._stale_after = stale_after

    async def announce(self) -> None:
        """Upsert this replica's rows as seen now (and delete those of lapsed replicas)."""
        await self._pool.execute(
            QUERIES.announce, self.replica, self._names, self._versions, self._stale_after
        )

    async def run(self) -> None:
        """Announce now, then every interval; a failure (the database away) is logged and the
        next interval tries again: the rows lapse only if it stays away for three."""
        while True:
            try:
                await self.announce()
            except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("announcing the loaded workflow versions failed: %s", exc)
            await asyncio.sleep(self._interval)

    async def withdraw(self) -> None:
        """Delete this replica's rows (a clean stop). Best effort: rows left behind lapse."""
        try:
            await self._pool.execute(QUERIES.withdraw, self.replica)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("withdrawing the loaded workflow versions failed (they lapse): %s", exc)
