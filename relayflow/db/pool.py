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


async def create_pool(
    dsn: str, *, min_size: int = 2, max_size: int = 10, wait: float = 30.0
) -> asyncpg.Pool[Any]:
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
