"""`relayflow keys` end to end through its `main()`, against the real PostgreSQL: a key is
printed once, lists without its secret, verifies, and is refused once revoked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import asyncpg
import pytest
from pydantic import SecretStr

from relayflow.auth import KeyHasher, KeyRefused, Role, parse_key, verify_key
from relayflow.cli import main
from relayflow.db import Connection
from tests.support import create_database, drop_database, unique_name, with_database

SERVER_SECRET = "admin-cli-test-server-secret-0123456789"


@dataclass(frozen=True, slots=True)
class Ran:
    code: int
    out: str
    err: str


class Admin(Protocol):
    async def __call__(self, *argv: str, database: str = ...) -> Ran: ...


@pytest.fixture
def admin(
    database_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Admin:
    """Runs `relayflow --database-url <the test database> keys …` in a thread: `main()` owns
    its event loop (asyncio.run), which cannot start inside the test's."""
    monkeypatch.setenv("RELAYFLOW_AUTH_SECRET", SERVER_SECRET)

    def run(*argv: str) -> int:
        try:
            main(argv)
        except SystemExit as exit_:
            return int(exit_.code or 0)
        raise AssertionError("main() returned without exiting")

    async def admin(*argv: str, database: str = database_url) -> Ran:
        capsys.readouterr()
        code = await asyncio.to_thread(run, "--database-url", database, "keys", *argv)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return admin


@pytest.fixture
async def conn(pool: asyncpg.Pool[Any]) -> AsyncIterator[Connection]:
    async with pool.acquire() as conn:
        yield conn


async def test_create_list_verify_revoke(admin: Admin, conn: Connection) -> None:
    """The whole life of a key as an operator lives it: the key alone on stdout (so that a
    script can capture it), its id on stderr, listed with its details but never its secret,
    valid until revoked and refused from then on."""
    tenant = unique_name("cli-")
    made = await admin("create", "--tenant", tenant, "--role", "submit", "--name", "form site")
    assert made.code == 0, made.err
    key = made.out.strip()
    parsed = parse_key(key)
    assert made.out == key + "\n"
    assert parsed.key_id in made.err
    secret = key.rsplit("_", 1)[1]
    assert secret not in made.err

    hasher = KeyHasher.from_secret(SecretStr(SERVER_SECRET))
    verified = await verify_key(conn, hasher, key)
    assert (verified.tenant, verified.role, verified.name) == (tenant, Role.SUBMIT, "form site")

    listed = await admin("list", "--tenant", tenant, "--json")
    assert listed.code == 0, listed.err
    rows = [json.loads(line) for line in listed.out.splitlines()]
    assert len(rows) == 1
    assert rows[0]["id"] == parsed.key_id
    assert (rows[0]["tenant"], rows[0]["role"], rows[0]["name"]) == (tenant, "submit", "form site")
    assert rows[0]["last_used_at"] is not None
    assert (rows[0]["revoked"], rows[0]["revoked_at"]) == (False, None)
    assert set(rows[0]) == {
        "id",
        "tenant",
        "role",
        "name",
        "created_at",
        "last_used_at",
        "revoked_at",
        "revoked",
    }
    text = await admin("list", "--tenant", tenant)
    assert text.out.splitlines()[0].split("\t") == [
        "id",
        "tenant",
        "role",
        "name",
        "created",
        "last used",
        "revoked",
    ]
    assert text.out.splitlines()[1].split("\t")[:4] == [
        parsed.key_id,
        tenant,
        "submit",
        "form site",
    ]
    assert text.out.splitlines()[-1] == "1 key(s)"
    for output in (listed.out, text.out):
        assert secret not in output

    revoked = await admin("revoke", parsed.key_id)
    assert revoked.code == 0, revoked.err
    assert f"revoked API key {parsed.key_id}" in revoked.out
    with pytest.raises(KeyRefused, match="revoked"):
        await verify_key(conn, hasher, key)
    again = await admin("revoke", parsed.key_id)
    assert again.code == 0
    assert "was already revoked at" in again.out
    after = await admin("list", "--tenant", tenant, "--json")
    assert json.loads(after.out)["revoked"] is True


async def test_create_and_revoke_as_json(admin: Admin) -> None:
    """For a provisioning script: the key and its record in one object; a revoke says whether
    it did anything."""
    tenant = unique_name("cli-")
    made = await admin("create", "--tenant", tenant, "--role", "operator", "--json")
    assert made.code == 0, made.err
    created = json.loads(made.out)
    assert parse_key(created["key"]).key_id == created["id"]
    assert (created["tenant"], created["role"], created["revoked"]) == (tenant, "operator", False)
    first = json.loads((await admin("revoke", created["id"], "--json")).out)
    second = json.loads((await admin("revoke", created["id"], "--json")).out)
    assert (first["revoked_now"], second["revoked_now"]) == (True, False)
    assert second["revoked"] is True


async def test_create_without_a_server_secret_writes_nothing(
    admin: Admin, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key hashed under no secret could never be verified by the gateway: refused before
    anything is written, with how to make a secret."""
    monkeypatch.delenv("RELAYFLOW_AUTH_SECRET")
    tenant = unique_name("cli-")
    made = await admin("create", "--tenant", tenant, "--role", "read")
    assert made.code == 2
    assert "RELAYFLOW_AUTH_SECRET" in made.err
    assert made.out == ""
    assert await conn.fetchval("SELECT count(*) FROM api_keys WHERE tenant = $1", tenant) == 0


@pytest.mark.parametrize(
    ("argv", "problem"),
    [
        pytest.param(
            ("create", "--tenant", "Not A Tenant", "--role", "read"), "a tenant is", id="tenant"
        ),
        pytest.param(("revoke", "zzzzzzzzzzzzzzzz"), "no API key with id", id="unknown"),
        pytest.param(("revoke", "rf_oops"), "malformed API key id", id="malformed"),
    ],
)
async def test_a_command_that_cannot_be_done_says_why(
    admin: Admin, argv: tuple[str, ...], problem: str
) -> None:
    """An operator's typo fails the command with the reason, not a traceback."""
    ran = await admin(*argv)
    assert ran.code == 2
    assert problem in ran.err
    assert "Traceback" not in ran.err


async def test_an_unknown_role_is_a_usage_error(admin: Admin) -> None:
    """Only the four roles exist; the usage error names them."""
    ran = await admin("create", "--tenant", "acme", "--role", "owner")
    assert ran.code == 2
    assert "submit" in ran.err
    assert "admin" in ran.err


async def test_a_database_without_the_table_or_unreachable_is_explained(
    admin: Admin, database_url: str
) -> None:
    """Pointed at the wrong database, the command says so instead of failing on SQL."""
    name = unique_name("relayflow_empty_")
    empty = await create_database(database_url, name)
    try:
        ran = await admin("list", database=empty)
        assert ran.code == 2
        assert "no api_keys table" in ran.err
    finally:
        await drop_database(database_url, name)
    missing = await admin("list", database=with_database(database_url, unique_name("absent_")))
    assert missing.code == 2
    assert "cannot reach PostgreSQL" in missing.err
