"""The services' logs as an operator ships them: with `RELAYFLOW_LOG_FORMAT=json` every line each
process writes is a JSON object naming its service, a step's lines name the invocation, and no
line holds the database password or the server secret the processes were given."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import httpx
import orjson
import pytest

from relayflow.workflow import WorkflowRegistry
from tests.e2e.conftest import running_system
from tests.e2e.test_system import form, wait_completed

pytestmark = pytest.mark.e2e

PASSWORD = "db-pa55word-never-logged"
SECRET = "server-secret-never-logged-0123456789"


def with_password(url: str) -> str:
    """`url` with PASSWORD for its user (the test server trusts local connections: the password
    is carried everywhere and checked nowhere)."""
    parts = urlsplit(url)
    user, _, host = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{user.split(':')[0]}:{PASSWORD}@{host}"))


async def test_json_lines_name_their_service_and_invocation_and_hold_no_secret(
    amqp_url: str,
    database_url: str,
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    registry: WorkflowRegistry,
    tmp_path: Path,
) -> None:
    env = {
        "RELAYFLOW_LOG_FORMAT": "json",
        "RELAYFLOW_LOG_LEVEL": "DEBUG",
        "RELAYFLOW_AUTH_SECRET": SECRET,
    }
    async with (
        running_system(
            prefix="l",
            amqp_url=amqp_url,
            database_url=with_password(database_url),
            amqp_connection=amqp_connection,
            registry=registry,
            log_dir=tmp_path,
            env=env,
        ) as system,
        httpx.AsyncClient(timeout=10) as client,
    ):
        # A refused address fails the `validate` step for good: a line about that invocation.
        refused = {**form("refused"), "email": "ada@mailinator.com"}
        ids = []
        for body in (form("kept"), refused):
            answer = await client.post(f"{system.base_url}/submit", json=body)
            assert answer.status_code == 202, answer.text
            ids.append(answer.json()["workflowId"])
        ok, failed = [await wait_completed(client, system.base_url, i) for i in ids]
        assert (ok["status"], failed["status"]) == ("completed", "failed")
        names = list(system.processes)
    lines: dict[str, list[dict[str, Any]]] = {}
    for name in names:
        text = system.logs(name)
        assert PASSWORD not in text, name
        assert SECRET not in text, name
        lines[name] = [orjson.loads(line) for line in text.splitlines() if line.strip()]
        assert lines[name], name
        assert {line["service"] for line in lines[name]} == {name}, name
        assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines[name])
    about = [line for line in lines["steps"] if line.get("workflow_id") == ids[1]]
    assert any(
        (line.get("step"), line.get("step_key"), line.get("attempt")) == ("validate", "0", 1)
        and "failed" in line["message"]
        for line in about
    ), about
