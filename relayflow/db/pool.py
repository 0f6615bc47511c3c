"""Connection pools with JSON handled by orjson on both sides of the wire."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, TypeAlias

import asyncpg
import asyncpg.pool
import orjson

from relayflow.db.hosts import HostConnector
from relayflow.errors import ServiceUnavailableError

# What queries run on: a plain connection, or one borrowed from a pool. (asyncpg's classes are
# generic only in its stubs, hence the two spellings.)
if TYPE_CHECKING:
    Connection: TypeAlias = asyncpg.Connection[Any] | asyncpg.pool.PoolConnectionProxy[Any]
else:
    Connection = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

log = logging.getLogger(__name__)

HOW_TO_START = (
    "start it with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(or `docker compose -f deploy/compose.yaml up -d postgres`), or point DATABASE_URL at a "
    "running server"
)


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def init_connection(conn: asyncpg.Connection[Any]) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(
            type_name, encoder=_dumps, decoder=orjson.loads, schema="pg_catalog"
        )


async def _end_open_transaction(conn: asyncpg.Connection[Any]) -> None:
    """Reset a connection returning to the pool. asyncpg's default runs a multi-statement reset
    query on every release (a round trip each time); we keep no session state (no LISTEN, no
    prepared cursors, advisory locks are released explicitly), so only an open transaction, left
    by a cancelled task, needs ending."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


# The session settings of a pool that runs only the engine's own statements (the orchestrator's
# and the step services'): key lookups by primary or unique index, in arrays of any length.
# PostgreSQL plans such a statement afresh on each execution by default (a custom plan: the
# arrays' lengths are known, and the generic plan's guess of them looks dearer), which was a
# quarter to a third of these statements' time (pg_stat_statements, track_planning). A generic
# plan is made once per connection; without seq scans it is the index plan whatever the tables
# held when it was made (a plan made on an empty table would otherwise seq-scan it, and stay
# cached while the table grows). Not for the gateway: its reads and the dashboard's are ad hoc.
ENGINE_SESSION = {"plan_cache_mode": "force_generic_plan", "enable_seqscan": "off"}


async def create_pool(
    dsn: str,
    *,
    min_size: int = 2,
    max_size: int = 10,
    wait: float = 30.0,
    session: dict[str, str] | None = None,
) -> asyncpg.Pool[Any]:
    """`session`: settings every connection starts with (`ENGINE_SESSION`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    delay = 0.2
    while True:
        try:
            pool: asyncpg.Pool[Any] = await asyncpg.create_pool(
                dsn,
                connect=HostConnector().connect,
                min_size=min_size,
                max_size=max_size,
                init=init_connection,
                reset=_end_open_transaction,
                command_timeout=60,
                server_settings=session,
            )
            return pool
        except (TimeoutError, OSError, asyncpg.CannotConnectNowError) as exc:
            if loop.time() + delay > deadline:
                raise ServiceUnavailableError(
                    f"cannot reach PostgreSQL ({exc}); {HOW_TO_START}"
                ) from exc
            log.warning("PostgreSQL not reachable yet (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def close_pool(pool: asyncpg.Pool[Any], *, within: float = 5.0) -> None:
    """Close the pool, waiting at most `within` seconds for borrowed connections to come back
    (a query stuck on an unreachable server never would); then terminate what is left."""
    try:
        await asyncio.wait_for(pool.close(), within)
    except TimeoutError:
        log.warning("database connections still busy after %.0fs; terminating them", within)
        pool.terminate()
