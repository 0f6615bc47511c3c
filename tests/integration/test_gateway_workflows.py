"""Reading a workflow's state, and the gateway's small endpoints (page, health, OpenAPI)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from relayflow.contracts import new_workflow_id
from relayflow.settings import Settings
from relayflow.workflow import WorkflowRegistry
from services.gateway.openapi import build_openapi
from tests.integration.gateway_harness import RunningGateway, running_gateway

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings) as gateway:
        yield gateway


async def test_unknown_workflow_is_404_json(gateway: RunningGateway) -> None:
    """Clients branch on the status and show the JSON error; an HTML 404 would break them."""
    response = await gateway.client.get(f"/workflows/{new_workflow_id()}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert "no workflow" in response.json()["error"]


async def test_workflow_view_lists_steps_in_definition_order(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """The view must follow the definition's order and show untouched steps as pending, since the
    orchestrator only writes the steps it has reached."""
    workflow_id = new_workflow_id()
    steps = {
        "persist": {
            "status": "failed",
            "attempts": 2,
            "output": None,
            "error": {"type": "DatabaseDown", "message": "boom", "retryable": True},
            "startedAt": (T0 + timedelta(seconds=1)).isoformat(),
            "finishedAt": None,
            "correlationId": None,
        },
        "validate": {
            "status": "completed",
            "attempts": 1,
            "output": {"ok": True},
            "error": None,
            "startedAt": T0.isoformat(),
            "finishedAt": (T0 + timedelta(milliseconds=5)).isoformat(),
            "correlationId": None,
        },
    }
    form = {"name": "Ada", "email": "ada@example.com", "message": "hi"}
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, error,
                               created_at, updated_at, finished_at)
        VALUES ($1, 'formSubmission', 'failed', $2, 'h', $3, $4, $5, $6, $6)
        """,
        workflow_id,
        form,
        steps,
        {"type": "StepFailed", "message": "persist failed", "retryable": False},
        T0,
        T0 + timedelta(seconds=2),
    )
    response = await gateway.client.get(f"/workflows/{workflow_id}")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["workflowId"] == workflow_id
    assert view["name"] == "formSubmission"
    assert view["status"] == "failed"
    assert view["input"] == form
    assert view["output"] is None
    assert view["error"] == {"type": "StepFailed", "message": "persist failed", "retryable": False}
    assert datetime.fromisoformat(view["createdAt"]) == T0
    assert datetime.fromisoformat(view["finishedAt"]) == T0 + timedelta(seconds=2)
    assert [(s["name"], s["status"]) for s in view["steps"]] == [
        ("validate", "completed"),
        ("persist", "failed"),
        ("publishToMQ", "pending"),
        ("awaitResponse", "pending"),
        ("finalize", "pending"),
    ]
    validate, persist, pending = view["steps"][0], view["steps"][1], view["steps"][2]
    assert validate["output"] == {"ok": True}
    assert validate["attempts"] == 1
    assert datetime.fromisoformat(validate["startedAt"]) == T0
    assert persist["error"] == {"type": "DatabaseDown", "message": "boom", "retryable": True}
    assert persist["attempts"] == 2
    assert pending == {
        "name": "publishToMQ",
        "status": "pending",
        "attempts": 0,
        "output": None,
        "error": None,
        "startedAt": None,
        "finishedAt": None,
    }


async def test_health_readiness_page_and_openapi(
    gateway: RunningGateway, registry: WorkflowRegistry
) -> None:
    """Operators and browsers rely on these: liveness, readiness of DB and broker, the form page
    with its assets (no internet needed), and the served OpenAPI matching the code."""
    assert (await gateway.client.get("/healthz")).json() == {"status": "ok"}
    ready = await gateway.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "database": True, "broker": True}

    page = await gateway.client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert 'id="contact"' in page.text
    assert "http://" not in page.text
    assert "https://" not in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert (await gateway.client.get(asset)).status_code == 200

    document = await gateway.client.get("/openapi.json")
    assert document.json() == build_openapi(registry)
