"""The whole system on a private primary + synchronous standby (`tests.tools.pg_standby`).

Like `tests.tools.cluster.Cluster`, with each service's `DATABASE_URL` naming both servers
(libpq's multi-host form, `target_session_attrs=read-write`), each through a fault proxy of its
own, and `application_name` set to the service, so that `pg_stat_activity` on the new primary
shows when each service has come back after a failover. The harness's own pool uses the same
multi-host URL, directly.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.tools.cluster import SERVICES, Cluster
from tests.tools.fault_proxy import FaultProxy
from tests.tools.pg_standby import PostgresPair, multi_host_url
from tests.tools.private_services import PrivateRabbit


@dataclass
class FailoverCluster(Cluster):
    # `postgres` is the pair's first primary, where `setup` creates the database; after a
    # failover it is the old one: reach the database through `database_url` or `db()`, which
    # name both servers.
    pair: PostgresPair | None = None
    # Each service's proxied link to the standby (`links[service].db` goes to the primary).
    standby_links: dict[str, FaultProxy] = field(default_factory=dict)

    @property
    def database_url(self) -> str:
        assert self.pair is not None
        return self.pair.url(self.database)

    def service_database_url(self, service: str) -> str:
        addresses = [self.links[service].db.address, self.standby_links[service].address]
        return f"{multi_host_url(addresses, self.database)}&application_name={service}"

    def env_for(self, service: str) -> dict[str, str]:
        return {**super().env_for(service), "DATABASE_URL": self.service_database_url(service)}

    async def setup(self) -> None:
        """As the cluster's, with a proxy to the standby for every service, once the standby has
        replayed the new database."""
        assert self.pair is not None
        await super().setup()
        for service in SERVICES:
            proxy = FaultProxy(self.pair.standby.address, name=f"{service}->standby")
            await proxy.start()
            self.standby_links[service] = proxy
        await self.pair.wait_replayed()

    async def teardown(self) -> None:
        await super().teardown()
        for proxy in self.standby_links.values():
            await proxy.stop()

    async def connected_services(self) -> set[str]:
        """The services with a session on the server the harness's pool reaches (the primary)."""
        rows = await self.db().fetch(
            "SELECT DISTINCT application_name FROM pg_stat_activity"
            " WHERE datname = current_database()"
        )
        return {row["application_name"] for row in rows} & set(SERVICES)


@contextlib.asynccontextmanager
async def running_failover_cluster(
    rabbit: PrivateRabbit,
    pair: PostgresPair,
    log_dir: Path,
    *,
    extra_env: dict[str, str] | None = None,
    start: bool = True,
    brokers: Sequence[PrivateRabbit] = (),
) -> AsyncIterator[FailoverCluster]:
    """A fresh database (replayed on the standby) and namespace, every service running (or,
    with `start` False, none yet: the caller adds to `extra_env` and calls `start_all`)."""
    cluster = FailoverCluster(
        rabbit=rabbit,
        brokers=brokers,
        postgres=pair.primary,
        database=f"failover_{uuid.uuid4().hex[:10]}",
        log_dir=log_dir,
        extra_env=dict(extra_env or {}),
        pair=pair,
    )
    async with cluster.running(start=start):
        yield cluster
