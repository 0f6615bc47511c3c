"""A private PostgreSQL primary with a synchronous streaming standby, for failover tests.

Two clusters of our own (`tests.tools.private_services.PrivatePostgres`) on two free ports in
temporary directories: the primary made by `initdb`, the standby copied from it by
`pg_basebackup -R` (which writes `primary_conninfo` and `standby.signal`) over a physical
replication slot, so that the standby can never fall behind what the primary kept. Once the
standby streams, the primary is told `synchronous_standby_names = '*'` (with the default
`synchronous_commit = on`): from then on a commit is acknowledged only when the standby has the
WAL on disk too, so a transaction a client saw committed survives the primary's loss.

    async with PostgresPair() as pair:
        url = await pair.create_database("mydb")   # both hosts, target_session_attrs=read-write
        pair.primary.kill()                         # SIGKILL, as when its machine dies
        await pair.promote()                        # the standby becomes the primary

The setting is made with ALTER SYSTEM on the primary after the copy, so the standby does not
inherit it: promoted, it has no standby of its own and must not wait for one. (An operator such
as CloudNativePG or Patroni makes the same choice, or waits, by policy.) The old primary is
never started again: rejoining it would need pg_rewind, which no test here needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import asyncpg

from tests.tools.lifecycle import Lifecycle
from tests.tools.private_services import POSTGRES_BIN, PrivatePostgres, PrivateServiceError

SLOT = "relayflow_standby"


def multi_host_url(
    addresses: Sequence[tuple[str, int]], database: str, *, user: str = "postgres"
) -> str:
    """libpq's multi-host form: a client tries each host in turn and keeps the writable one."""
    hosts = ",".join(f"{host}:{port}" for host, port in addresses)
    return f"postgresql://{user}@{hosts}/{database}?target_session_attrs=read-write"


class PrivateStandby(PrivatePostgres):
    """A hot standby of `primary`, streaming from it; `promote()` makes it a primary."""

    def __init__(self, primary: PrivatePostgres) -> None:
        super().__init__()
        self.primary = primary

    async def _create_data(self) -> None:
        host, port = self.primary.address
        await self._as_owner(
            POSTGRES_BIN / "pg_basebackup",
            "-D",
            self.data_dir,
            "-h",
            host,
            "-p",
            str(port),
            "-U",
            "postgres",
            "-R",  # primary_conninfo and standby.signal: start as a standby of it
            "-X",
            "stream",
            "-C",  # create the slot; -R names it in primary_slot_name
            "-S",
            SLOT,
            "-c",
            "fast",
            "--no-sync",
            timeout=120,
        )

    async def promote(self, timeout: float = 30) -> None:
        """End recovery: the standby takes writes from now on (`pg_ctl promote -w` waits)."""
        await self.pg_ctl("promote", timeout=timeout)
        conn = await asyncpg.connect(self.url(), timeout=5)
        try:
            if await conn.fetchval("SELECT pg_is_in_recovery()"):
                raise PrivateServiceError(f"standby on {self.port} is still in recovery")
        finally:
            await conn.close()


class PostgresPair(Lifecycle):
    """A primary and its synchronous standby; both stopped and removed afterwards."""

    def __init__(self) -> None:
        self.primary = PrivatePostgres()
        self.standby = PrivateStandby(self.primary)

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Primary first: clients try the hosts in this order."""
        return [self.primary.address, self.standby.address]

    def url(self, database: str = "postgres") -> str:
        return multi_host_url(self.addresses, database)

    async def start(self) -> None:
        try:
            await self.primary.start()
            await self.standby.start()
            await self._make_synchronous()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self.standby.stop()
        await self.primary.stop()

    async def _make_synchronous(self, timeout: float = 30) -> None:
        conn = await asyncpg.connect(self.primary.url(), timeout=5)
        try:
            await conn.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
            await conn.execute("SELECT pg_reload_conf()")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while (
                await conn.fetchval(
                    "SELECT count(*) FROM pg_stat_replication"
                    " WHERE state = 'streaming' AND sync_state = 'sync'"
                )
                != 1
            ):
                if loop.time() > deadline:
                    raise PrivateServiceError(
                        f"the standby is not a synchronous one after {timeout}s:\n"
                        f"{self.standby.logs()[-3000:]}"
                    )
                await asyncio.sleep(0.05)
        finally:
            await conn.close()

    async def create_database(self, name: str) -> str:
        """On the primary, and replayed on the standby before it returns (a synchronous commit
        waits for the standby to store the WAL, not to apply it); the URL names both hosts."""
        await self.primary.create_database(name)
        await self.wait_replayed()
        return self.url(name)

    async def promote(self) -> None:
        await self.standby.promote()

    async def wait_replayed(self, timeout: float = 30) -> None:
        """Until the standby has applied all the WAL the primary has written so far."""
        primary = await asyncpg.connect(self.primary.url(), timeout=5)
        standby = await asyncpg.connect(self.standby.url(), timeout=5)
        try:
            target = await primary.fetchval("SELECT pg_current_wal_lsn()")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not await standby.fetchval(
                "SELECT pg_last_wal_replay_lsn() >= $1::pg_lsn", target
            ):
                if loop.time() > deadline:
                    raise PrivateServiceError(f"the standby did not replay {target} in {timeout}s")
                await asyncio.sleep(0.02)
        finally:
            await primary.close()
            await standby.close()
