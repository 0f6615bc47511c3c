"""`relayflow workflows …` against a real gateway that asks for API keys: the key is taken from
`RELAYFLOW_API_KEY` and sent as a bearer token, and a missing key or a role that may not do
what was asked fails the command with the gateway's reason and what to do about it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from relayflow.auth import AuthSettings, KeyHasher, Role
from relayflow.contracts import new_workflow_id
from relayflow.settings import Settings
from tests.integration.gateway_harness import MakeKey, RunningGateway, made_keys, running_gateway
from tests.tools.cluster import ROOT

SECRET = SecretStr("cli-gateway-integration-test-secret-0123456789")


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, AuthSettings(secret=SECRET), auth="required") as gateway:
        yield gateway


@pytest.fixture
async def make_key(pool: asyncpg.Pool[Any]) -> AsyncIterator[MakeKey]:
    async with made_keys(pool, KeyHasher.from_secret(SECRET)) as make:
        yield make


async def relayflow(gateway: RunningGateway, *args: str, key: str | None) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RELAYFLOW_API_KEY"}
    env["RELAYFLOW_URL"] = gateway.base_url
    if key is not None:
        env["RELAYFLOW_API_KEY"] = key
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relayflow.cli",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_key_is_sent_and_a_refusal_says_what_to_do(
    gateway: RunningGateway, make_key: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """No key: 401 and the variable to set. A read key: it lists, and reads a workflow; but a
    cancel needs an operator's: 403, saying the key's role is the reason."""
    code, out, err = await relayflow(gateway, "workflows", "list", key=None)
    assert code == 2, out
    assert "401" in err
    assert "set RELAYFLOW_API_KEY" in err

    made = await make_key(Role.READ)
    reader = made.key
    code, out, err = await relayflow(gateway, "workflows", "list", "--limit", "1", key=reader)
    assert code == 0, err
    assert out.splitlines()[0].startswith("id\tworkflow\tstatus")

    workflow_id = new_workflow_id()
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at, updated_at,
                               tenant)
        VALUES ($1, 'review', 'running', $2, 'h', '{}'::jsonb, now(), now(), $3)
        """,
        workflow_id,
        {"subject": "a raise"},
        made.record.tenant,
    )
    code, out, err = await relayflow(gateway, "workflows", "status", workflow_id, key=reader)
    assert code == 0, err
    assert out.startswith(f"{workflow_id}  review  running")
    code, out, err = await relayflow(gateway, "workflows", "cancel", workflow_id, key=reader)
    assert code == 2, out
    assert "403" in err
    assert "has a role that may not do this" in err
    code, _, err = await relayflow(gateway, "workflows", "list", key="rf_forged_key")
    assert code == 2
    assert "401" in err
