"""API keys in PostgreSQL (`api_keys`): making, checking, listing and revoking them.

A key is checked on every request with one indexed read; its last-used time is written at most
once per `LAST_USED_RESOLUTION` seconds, so that a busy key does not turn every request into a
write. Nothing is cached: a revoked key is refused by the next check.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from relayflow.auth.errors import KeyRefused, UnknownKey
from relayflow.auth.keys import KeyHasher, check_key_id, new_key, parse_key
from relayflow.auth.roles import Role
from relayflow.auth.tenants import check_key_name, check_tenant
from relayflow.db import Connection, Queries

log = logging.getLogger(__name__)

LAST_USED_RESOLUTION = 60.0
# Compared with when no key has the presented id, so that an unknown id costs what a known one
# does (no HMAC-SHA256 digest equals it but with chance 2^-256).
_NO_HASH = bytes(32)


@functools.cache
def _queries() -> Queries:
    return Queries.load("relayflow.auth")


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What is known of a key, never its secret nor its hash."""

    id: str
    tenant: str
    role: Role
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A key just made: the one moment its full text is known (not in `repr`)."""

    record: ApiKey
    key: str = field(repr=False)


def _api_key(row: asyncpg.Record) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant=row["tenant"],
        role=Role(row["role"]),
        name=row["name"],
        created_at=row["created_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


async def create_key(
    conn: Connection, hasher: KeyHasher, *, tenant: str, role: Role, name: str | None = None
) -> CreatedKey:
    """A new key of `tenant` with `role`, stored hashed; its text is returned, never stored."""
    key = new_key()
    row = await conn.fetchrow(
        _queries().insert_key,
        key.key_id,
        check_tenant(tenant),
        role.value,
        check_key_name(name),
        hasher.digest(key),
    )
    assert row is not None  # INSERT … RETURNING
    record = _api_key(row)
    log.info("created API key %s (tenant %s, role %s)", record.id, record.tenant, record.role)
    return CreatedKey(record, key.text)


async def verify_key(
    conn: Connection,
    hasher: KeyHasher,
    presented: str,
    *,
    touch_after: float = LAST_USED_RESOLUTION,
) -> ApiKey:
    """The key `presented` is, if it is one of ours and not revoked; `KeyRefused` (with the
    reason, for the log) otherwise. Records its use if the last one is `touch_after` s old."""
    key = parse_key(presented)
    row = await conn.fetchrow(_queries().key_to_verify, key.key_id, touch_after)
    if row is None:
        hasher.matches(key, _NO_HASH)
        raise KeyRefused("unknown key", key.key_id)
    # The secret before revocation: only who holds the key learns (from the log) it is revoked.
    if not hasher.matches(key, row["secret_hash"]):
        raise KeyRefused("wrong secret", key.key_id)
    if row["revoked_at"] is not None:
        raise KeyRefused("revoked", key.key_id)
    if row["stale"]:
        await conn.execute(_queries().touch_key, key.key_id, touch_after)
    return _api_key(row)


async def active_key(
    conn: Connection, key_id: str, *, touch_after: float = LAST_USED_RESOLUTION
) -> ApiKey:
    """The key with `key_id` if it exists and is not revoked; `KeyRefused` otherwise. For
    credentials that carry a key's id rather than the key (a session cookie, a stream token,
    each signed by the gateway): checked on every use, so that neither outlives its key."""
    row = await conn.fetchrow(_queries().key_to_verify, check_key_id(key_id), touch_after)
    if row is None:
        raise KeyRefused("unknown key", key_id)
    if row["revoked_at"] is not None:
        raise KeyRefused("revoked", key_id)
    if row["stale"]:
        await conn.execute(_queries().touch_key, key_id, touch_after)
    return _api_key(row)


async def has_active_keys(conn: Connection) -> bool:
    """Whether any key is not revoked (whether any key could authenticate)."""
    return bool(await conn.fetchval(_queries().any_active_key))


async def list_keys(conn: Connection, tenant: str | None = None) -> list[ApiKey]:
    """Every key (of `tenant`, if given), revoked ones too, by tenant and age."""
    rows = await conn.fetch(_queries().list_keys, tenant)
    return [_api_key(row) for row in rows]


async def revoke_key(conn: Connection, key_id: str) -> tuple[ApiKey, bool]:
    """Revoke the key: the key, and whether this call revoked it (False: it was already).
    `UnknownKey` if there is none with that id."""
    row = await conn.fetchrow(_queries().revoke_key, check_key_id(key_id))
    if row is not None:
        log.info("revoked API key %s (tenant %s)", row["id"], row["tenant"])
        return _api_key(row), True
    row = await conn.fetchrow(_queries().get_key, key_id)
    if row is None:
        raise UnknownKey(key_id)
    return _api_key(row), False
