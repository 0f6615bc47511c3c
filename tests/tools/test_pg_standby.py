"""The private primary + synchronous standby: acknowledged commits survive the primary's death,
and a multi-host URL finds the promoted standby."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from tests.support import wait_for
from tests.tools.fault_proxy import FaultProxy
from tests.tools.pg_standby import PostgresPair, multi_host_url

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


async def test_an_acknowledged_commit_survives_the_primary_being_killed() -> None:
    """Replication is synchronous: what the primary acknowledged is on the standby, so killing
    the primary and promoting the standby loses nothing, and the same multi-host URL then
    connects to the new primary for writes."""
    async with PostgresPair() as pair:
        url = await pair.create_database("probe")
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE t (x int)")
        for x in range(50):
            await conn.execute("INSERT INTO t VALUES ($1)", x)
        pair.primary.kill()
        with pytest.raises((asyncpg.PostgresConnectionError, OSError, asyncpg.InterfaceError)):
            await conn.execute("INSERT INTO t VALUES (-1)")
        conn.terminate()
        # Before the promotion no host takes writes.
        with pytest.raises((OSError, asyncpg.TargetServerAttributeNotMatched)):
            await asyncpg.connect(url, timeout=5)
        await pair.promote()
        conn = await asyncpg.connect(url, timeout=5)
        try:
            assert conn.get_server_pid() > 0
            assert await conn.fetchval("SELECT count(*) FROM t") == 50
            assert not await conn.fetchval("SELECT pg_is_in_recovery()")
            await conn.execute("INSERT INTO t VALUES (50)")
        finally:
            await conn.close()


async def test_a_commit_waits_for_the_standby() -> None:
    """With the standby stopped, a commit on the primary is not acknowledged (it waits in
    SyncRep) — the proof that "acknowledged" means "on both"."""
    async with PostgresPair() as pair:
        url = await pair.create_database("probe")
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE TABLE t (x int)")
        await pair.standby.stop_server("immediate")
        insert = asyncio.create_task(conn.execute("INSERT INTO t VALUES (1)"))
        watcher = await asyncpg.connect(pair.primary.url())
        try:

            async def waiting_for_the_standby() -> bool:
                return bool(
                    await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'"
                    )
                )

            await wait_for(waiting_for_the_standby, what="the commit to wait for the standby")
            assert not insert.done()
            await pair.standby.start_server()
            await asyncio.wait_for(insert, 30)
        finally:
            insert.cancel()
            await watcher.close()
            conn.terminate()


async def test_a_proxied_dead_host_is_skipped() -> None:
    """A host behind a fault proxy whose server is dead accepts the TCP connection and then
    closes it: the client must go on to the next host rather than fail, as it does when a dead
    host refuses the connection outright."""
    async with PostgresPair() as pair:
        await pair.create_database("probe")
        async with (
            FaultProxy(pair.primary.address) as first,
            FaultProxy(pair.standby.address) as second,
        ):
            url = multi_host_url([first.address, second.address], "probe")
            pair.primary.kill()
            await pair.promote()
            conn = await asyncpg.connect(url, timeout=5)
            try:
                assert await conn.fetchval("SELECT inet_server_port()") == pair.standby.port
            finally:
                await conn.close()
