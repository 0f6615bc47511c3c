"""`relayflow keys create|list|revoke`: API keys (`relayflow.auth`) in the database, without
the gateway or the broker.

`create` prints the key alone on stdout, once (it is stored hashed, under
`RELAYFLOW_AUTH_SECRET`, which it needs: the gateway's); what was made goes to stderr. `list`
shows every key but never a secret; `revoke` ends a key at once, and revoking it again changes
nothing.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Annotated, Any

import asyncpg
import typer

from relayflow.auth import (
    ApiKey,
    AuthError,
    AuthSettings,
    KeyHasher,
    Role,
    create_key,
    list_keys,
    revoke_key,
)
from relayflow.cli import connections, output
from relayflow.cli.context import current
from relayflow.cli.errors import CliError


def _when(moment: datetime | None) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def key_json(key: ApiKey) -> dict[str, str | bool | None]:
    """A key as `keys list --json` prints it: what it is, never its secret."""
    return {
        "id": key.id,
        "tenant": key.tenant,
        "role": key.role.value,
        "name": key.name,
        "created_at": _when(key.created_at),
        "last_used_at": _when(key.last_used_at),
        "revoked_at": _when(key.revoked_at),
        "revoked": key.revoked_at is not None,
    }


def _in_database(
    database_url: str, work: Callable[[asyncpg.Connection[Any]], Awaitable[None]]
) -> None:
    async def main() -> None:
        async with connections.database(database_url) as conn:
            try:
                await work(conn)
            except AuthError as exc:
                raise CliError(str(exc)) from None
            except asyncpg.UndefinedTableError:
                raise CliError(
                    "this database has no api_keys table: is DATABASE_URL the services' "
                    "database? `relayflow migrate` makes it (migration 0016), as the services "
                    "do when they start"
                ) from None

    connections.run(main())


app = typer.Typer(help="API keys for the gateway, in the database (no broker needed).")

Json = Annotated[bool, typer.Option("--json", help="one JSON object (the key's, as list's)")]


@app.command("create")
def create_command(
    ctx: typer.Context,
    *,
    tenant: Annotated[str, typer.Option(help="whose key it is")],
    role: Annotated[Role, typer.Option(help="what it may do")],
    name: Annotated[
        str | None, typer.Option(help="what the key is for, shown by `keys list`")
    ] = None,
    as_json: Json = False,
) -> None:
    """Make a key and print it, once (KEY=$(relayflow keys create …))."""
    # Checked before anything is written: a key hashed under no secret could never verify.
    try:
        hasher = KeyHasher.from_secret(AuthSettings().secret)
    except AuthError as exc:
        raise CliError(str(exc)) from None

    async def work(conn: asyncpg.Connection[Any]) -> None:
        created = await create_key(conn, hasher, tenant=tenant, role=role, name=name)
        key = created.record
        if as_json:
            output.write_json({"key": created.key, **key_json(key)})
            return
        # The key alone on stdout, the rest on stderr.
        sys.stdout.write(created.key + "\n")
        output.notice(
            f"created API key {key.id} (tenant {key.tenant}, role {key.role}); it is shown "
            "this once: store it now"
        )

    _in_database(current(ctx).database_url, work)


@app.command("list")
def list_command(
    ctx: typer.Context,
    *,
    tenant: Annotated[str | None, typer.Option(help="only this tenant's keys")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON: one object per line")] = False,
) -> None:
    """Every key (id, tenant, role, name, created, last used, revoked), never its secret."""

    async def work(conn: asyncpg.Connection[Any]) -> None:
        _write_keys(await list_keys(conn, tenant), as_json=as_json)

    _in_database(current(ctx).database_url, work)


@app.command("revoke")
def revoke_command(
    ctx: typer.Context,
    *,
    key_id: Annotated[str, typer.Argument(metavar="ID", help="the key's id")],
    as_json: Json = False,
) -> None:
    """Refuse the key from the next request on (again: nothing changes)."""

    async def work(conn: asyncpg.Connection[Any]) -> None:
        key, now = await revoke_key(conn, key_id)
        if as_json:
            output.write_json({**key_json(key), "revoked_now": now})
            return
        output.write_lines(
            [
                f"revoked API key {key.id} (tenant {key.tenant}, role {key.role})"
                if now
                else f"API key {key.id} was already revoked at {_when(key.revoked_at)}"
            ]
        )

    _in_database(current(ctx).database_url, work)


def _write_keys(keys: Sequence[ApiKey], *, as_json: bool) -> None:
    if as_json:
        for key in keys:
            output.write_json(key_json(key))
        return
    rows = [
        [
            key.id,
            key.tenant,
            key.role.value,
            key.name,
            _when(key.created_at),
            _when(key.last_used_at),
            _when(key.revoked_at),
        ]
        for key in keys
    ]
    header = ["id", "tenant", "role", "name", "created", "last used", "revoked"]
    output.write_lines([*output.table(header, rows), f"{len(keys)} key(s)"])
