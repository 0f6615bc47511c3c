"""The API-key store against the real PostgreSQL (`relayflow.auth.store`): a key verifies until
it is revoked and not one check after, its use is recorded at most once a minute, and nothing it
returns or logs holds a secret."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from relayflow.auth import (
    CreatedKey,
    KeyFormatError,
    KeyHasher,
    KeyRefused,
    Role,
    UnknownKey,
    create_key,
    list_keys,
    revoke_key,
    verify_key,
)
from relayflow.auth.keys import new_key
from relayflow.db import Connection
from tests.support import tampered, unique_name

HASHER = KeyHasher.from_secret(SecretStr("integration-test-server-secret-0123456789"))


@pytest.fixture
async def conn(pool: asyncpg.Pool[Any]) -> AsyncIterator[Connection]:
    async with pool.acquire() as conn:
        yield conn


def secret_of(created: CreatedKey) -> str:
    return created.key.rsplit("_", 1)[1]


async def test_a_key_verifies_until_revoked_and_is_refused_at_once(
    conn: Connection,
) -> None:
    """Revoking is how a leaked key is stopped: the very next check refuses it
    (nothing is cached)."""
    tenant = unique_name("t-")
    created = await create_key(conn, HASHER, tenant=tenant, role=Role.OPERATOR, name="ci deploy")
    verified = await verify_key(conn, HASHER, created.key)
    assert (verified.id, verified.tenant, verified.role, verified.name) == (
        created.record.id,
        tenant,
        Role.OPERATOR,
        "ci deploy",
    )
    key, now = await revoke_key(conn, created.record.id)
    assert now
    assert key.revoked_at is not None
    with pytest.raises(KeyRefused) as caught:
        await verify_key(conn, HASHER, created.key)
    assert (caught.value.reason, caught.value.key_id) == ("revoked", created.record.id)


async def test_revoking_again_keeps_the_first_time(conn: Connection) -> None:
    """A second revoke (a retried script) changes nothing and says the key was revoked."""
    created = await create_key(conn, HASHER, tenant=unique_name("t-"), role=Role.READ)
    first, _ = await revoke_key(conn, created.record.id)
    again, now = await revoke_key(conn, created.record.id)
    assert not now
    assert again.revoked_at == first.revoked_at


async def test_revoking_an_unknown_or_malformed_id_says_so(conn: Connection) -> None:
    """An operator's typo must not look like a successful revocation."""
    with pytest.raises(UnknownKey, match="no API key with id"):
        await revoke_key(conn, new_key().key_id)
    with pytest.raises(KeyFormatError, match="id is 16 characters"):
        await revoke_key(conn, "not-an-id")


async def test_a_wrong_secret_an_unknown_id_or_another_server_secret_is_refused(
    conn: Connection,
) -> None:
    """Only the exact key, hashed under the server secret it was made with, authenticates."""
    created = await create_key(conn, HASHER, tenant=unique_name("t-"), role=Role.SUBMIT)
    forged = created.key[:-4] + ("aaaa" if not created.key.endswith("aaaa") else "bbbb")
    with pytest.raises(KeyRefused, match="wrong secret"):
        await verify_key(conn, HASHER, forged)
    with pytest.raises(KeyRefused, match="unknown key"):
        await verify_key(conn, HASHER, new_key().text)
    other = KeyHasher.from_secret(SecretStr("another-server-secret-0123456789abcdef"))
    with pytest.raises(KeyRefused, match="wrong secret"):
        await verify_key(conn, other, created.key)
    with pytest.raises(KeyFormatError):
        await verify_key(conn, HASHER, "rf_short")


async def last_used(conn: Connection, key_id: str) -> Any:
    return await conn.fetchval("SELECT last_used_at FROM api_keys WHERE id = $1", key_id)


async def test_last_use_is_recorded_at_most_once_a_minute(conn: Connection) -> None:
    """`keys list` tells an operator whether a key is still in use, without every request
    becoming a write: a check within the minute of the last recorded use writes nothing."""
    created = await create_key(conn, HASHER, tenant=unique_name("t-"), role=Role.READ)
    assert await last_used(conn, created.record.id) is None
    await verify_key(conn, HASHER, created.key)
    first = await last_used(conn, created.record.id)
    assert first is not None
    await verify_key(conn, HASHER, created.key)
    assert await last_used(conn, created.record.id) == first
    # Its last recorded use two minutes ago: the next check records this one.
    await conn.execute(
        "UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1",
        created.record.id,
    )
    aged = await last_used(conn, created.record.id)
    verified = await verify_key(conn, HASHER, created.key)
    assert verified.last_used_at == aged  # as read, before this use
    assert await last_used(conn, created.record.id) > first


async def test_a_refused_check_records_no_use(conn: Connection) -> None:
    """Last used means used by whoever holds the key, not tried by someone who knows its id."""
    created = await create_key(conn, HASHER, tenant=unique_name("t-"), role=Role.READ)
    with pytest.raises(KeyRefused):
        await verify_key(conn, HASHER, tampered(created.key))
    assert await last_used(conn, created.record.id) is None


async def test_the_list_shows_every_key_of_a_tenant_and_no_secret(
    conn: Connection,
) -> None:
    """Listing is for operators and may be pasted anywhere: ids, roles and times, revoked keys
    too, never a secret or a hash."""
    tenant = unique_name("t-")
    made = [
        await create_key(conn, HASHER, tenant=tenant, role=role, name=f"{role} key")
        for role in Role
    ]
    await create_key(conn, HASHER, tenant=unique_name("other-"), role=Role.ADMIN)
    await revoke_key(conn, made[0].record.id)
    listed = await list_keys(conn, tenant)
    assert [key.id for key in listed] == [created.record.id for created in made]
    assert [key.revoked_at is not None for key in listed] == [True, False, False, False]
    text = repr(listed)
    for created in made:
        assert secret_of(created) not in text
    assert not hasattr(listed[0], "secret_hash")
    assert {key.tenant for key in await list_keys(conn)} >= {tenant}


@pytest.mark.parametrize(
    ("tenant", "name", "problem"),
    [
        ("Tenant A", None, "a tenant is 1 to 63 characters"),
        ("", None, "a tenant is"),
        ("acme", "a\x00b", "control characters"),
        ("acme", "n" * 201, "at most 200 characters"),
    ],
)
async def test_a_tenant_or_name_that_cannot_be_stored_is_refused(
    conn: Connection, tenant: str, name: str | None, problem: str
) -> None:
    """PostgreSQL cannot store NUL, and a tenant travels in tokens and log lines: refused with
    the reason before anything is written."""
    before = await conn.fetchval("SELECT count(*) FROM api_keys")
    with pytest.raises(ValueError, match=problem):
        await create_key(conn, HASHER, tenant=tenant, role=Role.READ, name=name)
    assert await conn.fetchval("SELECT count(*) FROM api_keys") == before


async def test_no_key_appears_in_a_log(conn: Connection, caplog: pytest.LogCaptureFixture) -> None:
    """Logs are shipped and kept far longer than a key lives: making, checking, refusing and
    revoking a key logs its id at most, never its secret."""
    caplog.set_level(logging.DEBUG)
    created = await create_key(conn, HASHER, tenant=unique_name("t-"), role=Role.ADMIN)
    await verify_key(conn, HASHER, created.key)
    with pytest.raises(KeyRefused) as wrong:
        await verify_key(conn, HASHER, tampered(created.key))
    await revoke_key(conn, created.record.id)
    with pytest.raises(KeyRefused) as revoked:
        await verify_key(conn, HASHER, created.key)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert created.record.id in logged
    for text in (logged, str(wrong.value), str(revoked.value), repr(created)):
        assert secret_of(created) not in text
