"""The gateway's API-key checks (`services.gateway.access`) against a real gateway, PostgreSQL and
RabbitMQ: when it runs open and when it asks for keys, 401 and 403 by route and role, a revoked
key refused by the very next request, and no key in any log line."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from relayflow.auth import AuthSettings, CreatedKey, KeyHasher, Role, create_key, revoke_key
from relayflow.auth.keys import new_key
from relayflow.contracts import new_workflow_id
from relayflow.db import migrate
from relayflow.db.migrate import CORE
from relayflow.errors import ConfigurationError
from relayflow.settings import Settings
from services.gateway.app import create_app
from tests.integration.gateway_harness import (
    RunningGateway,
    gateway_settings,
    made_keys,
    running_gateway,
)
from tests.support import create_database, drop_database, tampered, unique_name

SECRET = SecretStr("gateway-auth-integration-test-secret-0123456789")
AUTH = AuthSettings(secret=SECRET)
HASHER = KeyHasher.from_secret(SECRET)
MakeKey = Callable[[Role], Awaitable[CreatedKey]]
FORM = {"name": "Ada", "email": "ada@example.com", "message": "hi"}


def bearer(created: CreatedKey | str) -> dict[str, str]:
    text = created if isinstance(created, str) else created.key
    return {"Authorization": f"Bearer {text}"}


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, AUTH, auth="required") as gateway:
        yield gateway


@pytest.fixture
async def make_key(pool: asyncpg.Pool[Any]) -> AsyncIterator[MakeKey]:
    async with made_keys(pool, HASHER) as make:
        yield make


async def running_workflow(pool: asyncpg.Pool[Any], tenant: str) -> str:
    """A running workflow of `tenant` (a key sees only its own tenant's)."""
    workflow_id = new_workflow_id()
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at, updated_at,
                               tenant)
        VALUES ($1, 'formSubmission', 'running', $2, 'h', '{}'::jsonb, now(), now(), $3)
        """,
        workflow_id,
        FORM,
        tenant,
    )
    return workflow_id


@pytest.fixture
async def fresh_settings(
    settings: Settings, service_endpoints: tuple[str, str]
) -> AsyncIterator[Settings]:
    """A database of its own (migrated): `auto` mode looks at every key, and the run's shared
    database may hold some."""
    name = unique_name("relayflow_auth_")
    url = await create_database(service_endpoints[1], name)
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn, (CORE,))
    finally:
        await conn.close()
    yield settings.model_copy(update={"database_url": url})
    await drop_database(service_endpoints[1], name)


async def test_auto_on_loopback_without_keys_runs_open_until_a_key_exists(
    fresh_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The quick start stays two commands: no key, no secret, open on loopback, and said loudly;
    the first key turns the checks on from the next start."""
    caplog.set_level(logging.INFO)
    async with running_gateway(fresh_settings, auth="auto") as gateway:
        assert (await gateway.client.get("/workflows")).status_code == 200
        home = await gateway.client.get("/")
    assert home.status_code == 200
    assert 'data-auth="open"' in home.text
    assert "Authentication is off" in home.text
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("Authentication is off" in r.getMessage() for r in warnings)
    conn = await asyncpg.connect(fresh_settings.database_url)
    try:
        created = await create_key(conn, HASHER, tenant="acme", role=Role.READ)
    finally:
        await conn.close()
    async with running_gateway(fresh_settings, AUTH, auth="auto") as gateway:
        assert (await gateway.client.get("/workflows")).status_code == 401
        assert (await gateway.client.get("/workflows", headers=bearer(created))).status_code == 200


async def test_keys_without_a_secret_refuse_to_start(
    fresh_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys exist but the gateway could not check them: it must not run open, nor start."""
    conn = await asyncpg.connect(fresh_settings.database_url)
    try:
        await create_key(conn, HASHER, tenant="acme", role=Role.READ)
    finally:
        await conn.close()
    with pytest.raises(Exception, match="could not start"):
        async with running_gateway(fresh_settings, auth="auto"):
            pass
    assert "cannot check them without a server secret" in caplog.text


@pytest.mark.parametrize("secret", [None, SecretStr("")])
@pytest.mark.parametrize("mode", ["auto", "required", "off"])
def test_a_non_loopback_bind_without_a_secret_refuses_to_start(
    settings: Settings, mode: str, secret: SecretStr | None
) -> None:
    """Reachable from elsewhere means keys, and keys need the secret: say so before opening."""
    config = gateway_settings(settings, gateway_host="0.0.0.0", auth=mode)
    with pytest.raises(ConfigurationError, match="RELAYFLOW_AUTH"):
        create_app(config, auth=AuthSettings(secret=secret))


async def test_a_non_loopback_bind_requires_keys_even_when_none_exist(settings: Settings) -> None:
    """`auto` runs open only on loopback: any other bind asks for a key."""
    async with running_gateway(settings, AUTH, auth="auto", gateway_host="0.0.0.0") as gateway:
        response = await gateway.client.get("/workflows")
    assert response.status_code == 401


async def test_no_or_malformed_credentials_are_401_with_a_challenge(
    gateway: RunningGateway,
) -> None:
    """Clients learn to authenticate from the challenge, and only "missing" or "invalid"."""
    response = await gateway.client.get("/workflows")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"error": "missing credentials: send Authorization: Bearer <API key>"}
    unknown = new_key().text
    for header in (
        "Bearer nonsense",
        "Bearer",
        "Basic dXNlcjpwYXNz",
        f"Bearer {unknown}",
        f"Bearer  {unknown}",
        f"Bearer {tampered(unknown)}",
    ):
        response = await gateway.client.get("/workflows", headers={"Authorization": header})
        assert response.status_code == 401, header
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert response.json() == {"error": "invalid credentials"}, header


async def test_every_protected_route_refuses_without_a_key(gateway: RunningGateway) -> None:
    """Fragments, SSE and the API document too: a browser without credentials gets 401 (and
    on the pages a redirect to sign in: test_gateway_sessions.py)."""
    workflow_id = new_workflow_id()
    for method, path in (
        ("GET", "/ui/list"),
        ("GET", f"/ui/workflows/{workflow_id}/panel"),
        ("GET", "/openapi.json"),
        ("GET", "/events"),
        ("GET", f"/workflows/{workflow_id}"),
        ("GET", f"/workflows/{workflow_id}/events"),
        ("GET", f"/workflows/{workflow_id}/steps/validate/items"),
        ("POST", "/workflows/formSubmission"),
        ("POST", "/submit"),
        ("POST", f"/workflows/{workflow_id}/cancel"),
        ("POST", f"/workflows/{workflow_id}/retry"),
        ("POST", f"/workflows/{workflow_id}/signals/decision"),
        ("POST", "/stream-tokens"),
    ):
        response = await gateway.client.request(method, path, json={})
        assert response.status_code == 401, (method, path)


async def test_probes_and_static_assets_need_no_key(gateway: RunningGateway) -> None:
    """Load balancers and orchestrators probe without credentials."""
    for path in ("/healthz", "/readyz", "/static/style.css"):
        assert (await gateway.client.get(path)).status_code == 200, path


async def test_a_revoked_key_is_refused_by_the_next_request(
    gateway: RunningGateway, make_key: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """Revoking is how a leaked key is stopped: nothing may cache it past the revocation."""
    created = await make_key(Role.READ)
    assert (await gateway.client.get("/workflows", headers=bearer(created))).status_code == 200
    async with pool.acquire() as conn:
        await revoke_key(conn, created.record.id)
    response = await gateway.client.get("/workflows", headers=bearer(created))
    assert response.status_code == 401
    assert response.json() == {"error": "invalid credentials"}


async def test_a_read_key_reads_and_streams_but_cannot_act(
    gateway: RunningGateway, make_key: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """Least privilege: a dashboard's read-only key must not cancel, retry or start."""
    reader = await make_key(Role.READ)
    headers = bearer(reader)
    workflow_id = await running_workflow(pool, reader.record.tenant)
    assert (await gateway.client.get("/workflows", headers=headers)).status_code == 200
    assert (
        await gateway.client.get(f"/workflows/{workflow_id}", headers=headers)
    ).status_code == 200
    home = await gateway.client.get("/", headers=headers)
    assert home.status_code == 200
    assert 'data-auth="open"' not in home.text  # the open-mode banner
    async with gateway.client.stream("GET", "/events", headers=headers) as stream:
        assert stream.status_code == 200
    for path in (
        f"/workflows/{workflow_id}/cancel",
        f"/workflows/{workflow_id}/retry",
        "/workflows/formSubmission",
    ):
        response = await gateway.client.post(path, json={}, headers=headers)
        assert response.status_code == 403, path
        assert "may not" in response.json()["error"]


async def test_a_submit_key_starts_but_cannot_read(
    gateway: RunningGateway, make_key: MakeKey
) -> None:
    """A contact form's key starts workflows; it must not read anyone's input back."""
    headers = bearer(await make_key(Role.SUBMIT))
    response = await gateway.client.post("/workflows/formSubmission", json=FORM, headers=headers)
    assert response.status_code == 202, response.text
    assert (await gateway.client.post("/submit", json=FORM, headers=headers)).status_code == 202
    assert (await gateway.client.get("/workflows", headers=headers)).status_code == 403
    assert (await gateway.client.get("/events", headers=headers)).status_code == 403
    # The API document: any valid key may read it, to know what it can start.
    assert (await gateway.client.get("/openapi.json", headers=headers)).status_code == 200


async def test_an_operator_key_cancels(
    gateway: RunningGateway, make_key: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """Cancel is the operator's: the check lets the right role through to the action."""
    operator = await make_key(Role.OPERATOR)
    headers = bearer(operator)
    workflow_id = await running_workflow(pool, operator.record.tenant)
    response = await gateway.client.post(
        f"/workflows/{workflow_id}/cancel", json={}, headers=headers
    )
    assert response.status_code == 202, response.text


async def test_no_key_appears_in_a_log(
    gateway: RunningGateway,
    make_key: MakeKey,
    pool: asyncpg.Pool[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logs travel to places keys must not: only a key's id may be logged."""
    caplog.set_level(logging.DEBUG)
    read = await make_key(Role.READ)
    revoked = await make_key(Role.OPERATOR)
    async with pool.acquire() as conn:
        await revoke_key(conn, revoked.record.id)
    wrong_secret = f"{read.key[:-1]}{'a' if read.key[-1] != 'a' else 'b'}"
    unknown = new_key().text
    for text in (read.key, revoked.key, wrong_secret, unknown, read.key + "x"):
        await gateway.client.get("/workflows", headers=bearer(text))
        await gateway.client.post("/workflows/formSubmission", json=FORM, headers=bearer(text))
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert revoked.record.id in logged  # the refusal is logged, by id
    for text in (read.key, revoked.key, wrong_secret, unknown):
        secret = text.rsplit("_", 1)[1]
        assert secret not in logged
