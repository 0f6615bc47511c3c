"""Connecting to one of several database hosts, a dead one costing seconds once, not every time.

asyncpg tries the hosts of a multi-host URL in order under one timeout for the whole attempt:
a first host that does not answer at all (a machine gone, its address black-holed, no refusal
coming back) uses the whole timeout, so the next host — the promoted standby — is never tried,
and every new connection starts with the dead host again. libpq's answer is a timeout per host
(`connect_timeout`), which asyncpg lacks. So with several hosts, `HostConnector` tries them one
at a time in the URL's order, each with `HOST_TIMEOUT`; asyncpg still checks each against
`target_session_attrs` (a standby is refused for writes). For writes (`read-write`, `primary`)
it starts with the host that last gave it a connection — the primary, until it is lost. For
reads the order stays the URL's: list the replica first (with `prefer-standby`, the first
host that answers is taken).
"""

from __future__ import annotations

from typing import Any

import asyncpg

from relayflow.db.urls import WRITABLE, hosts_of, target_session_attrs, with_host

# How long one host may take to accept a connection and authenticate; then the next is tried.
HOST_TIMEOUT = 5.0
# Why a host is passed over for the next: unreachable, refusing, too slow, starting or stopping,
# or not taking writes. Anything else (a wrong password, no such database) is raised at once.
_NEXT_HOST = (
    OSError,
    TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TargetServerAttributeNotMatched,
)


class NoHostAvailableError(ConnectionError):
    """No host of the database URL gave a connection of the kind `target_session_attrs` asks
    for: for writes, the primary is gone and no standby has been promoted yet; or none answers.
    An outage like a refused connection (and an OSError, so every handler that waits out an
    outage waits out this too), not a bug."""


class HostConnector:
    """`connect` for one pool (or one command): for writes, remembers which host answered."""

    def __init__(self, host_timeout: float = HOST_TIMEOUT) -> None:
        self._host_timeout = host_timeout
        self._last_good: str | None = None

    async def connect(self, dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection[Any]:
        if dsn is None or len(hosts := hosts_of(dsn)) < 2:
            return await self._one(dsn, kwargs)
        remember = target_session_attrs(dsn) in WRITABLE
        if remember and self._last_good in hosts:
            hosts.remove(self._last_good)
            hosts.insert(0, self._last_good)
        kwargs["timeout"] = min(kwargs.get("timeout", self._host_timeout), self._host_timeout)
        failures = []
        for host in hosts:
            try:
                conn = await self._one(with_host(dsn, host), kwargs)
            except _NEXT_HOST as exc:
                failures.append(f"{host}: {exc or type(exc).__name__}")
                continue
            if remember:
                self._last_good = host
            return conn
        raise NoHostAvailableError(
            f"no host of the database URL gave a usable connection ({'; '.join(failures)});"
            " a failover in progress?"
        )

    @staticmethod
    async def _one(dsn: str | None, kwargs: dict[str, Any]) -> asyncpg.Connection[Any]:
        try:
            conn: asyncpg.Connection[Any] = await asyncpg.connect(dsn, **kwargs)
        except asyncpg.TargetServerAttributeNotMatched as exc:
            raise NoHostAvailableError(f"the database server is not usable now ({exc})") from exc
        return conn


async def connect(dsn: str | None = None, **kwargs: Any) -> asyncpg.Connection[Any]:
    """One connection (commands, migrations, checks): `HostConnector().connect`."""
    return await HostConnector().connect(dsn, **kwargs)
