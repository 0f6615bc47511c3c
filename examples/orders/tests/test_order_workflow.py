"""`order` in one process with relayflow's test harness (`relayflow.testing.WorkflowTestEnv`):
the real state machine and step bodies, no broker, no orchestrator, the clock jumped over
retries; the bodies' writes go to a transaction rolled back after each test."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from orders_app.steps import DECLINED_CARD, steps
from orders_app.workflows import ORDER, Order
from pydantic import ValidationError

from relayflow.model import WorkflowStatus
from relayflow.testing import WorkflowTestEnv


def order(**changes: Any) -> dict[str, Any]:
    return {
        "orderId": "o-1",
        "items": [
            {"sku": "mug", "qty": 2, "unitPrice": 1250},
            {"sku": "tea", "qty": 3, "unitPrice": 400},
        ],
        "card": "tok_visa",
        "country": "NL",
        **changes,
    }


async def effects(conn: asyncpg.Connection[Any], workflow_id: str) -> dict[str, Any]:
    """What the run left in the application's tables."""
    reserved = await conn.fetch(
        "SELECT sku, qty, released_at IS NOT NULL AS released FROM order_reservations "
        "WHERE workflow_id = $1 ORDER BY sku",
        workflow_id,
    )
    payment = await conn.fetchrow(
        "SELECT amount, refunded_at IS NOT NULL AS refunded FROM order_payments "
        "WHERE workflow_id = $1",
        workflow_id,
    )
    shipped = await conn.fetchval(
        "SELECT count(*) FROM order_shipments WHERE workflow_id = $1", workflow_id
    )
    return {
        "reserved": [(r["sku"], r["qty"], r["released"]) for r in reserved],
        "payment": None if payment is None else (payment["amount"], payment["refunded"]),
        "shipped": shipped,
    }


@pytest.fixture
def env(connection: asyncpg.Connection[Any]) -> WorkflowTestEnv:
    return WorkflowTestEnv([ORDER], steps, connection=connection)


async def test_an_order_is_reserved_item_by_item_charged_and_shipped(
    env: WorkflowTestEnv, connection: asyncpg.Connection[Any]
) -> None:
    """The whole path, with the map's items keyed by sku and the typed reads between steps."""
    run = await env.start("order", order())
    state = await env.run(run)
    assert state.status is WorkflowStatus.COMPLETED
    assert state.output == {"tracking": f"trk-{run}", "payment": f"pay-{run}", "units": 5}
    assert [item.key for item in env.items(run, "reserveStock")] == ["mug", "tea"]
    assert await effects(connection, run) == {
        "reserved": [("mug", 2, False), ("tea", 3, False)],
        "payment": (2 * 1250 + 3 * 400, False),
        "shipped": 1,
    }


async def test_a_declined_card_releases_the_stock(
    env: WorkflowTestEnv, connection: asyncpg.Connection[Any]
) -> None:
    """CardDeclined is not retried; what was done before it, the reservation, is undone."""
    run = await env.start("order", order(card=DECLINED_CARD))
    state = await env.run(run)
    assert state.status is WorkflowStatus.COMPENSATED
    assert state.steps["charge"].attempts == 1
    assert await effects(connection, run) == {
        "reserved": [("mug", 2, True), ("tea", 3, True)],
        "payment": None,
        "shipped": 0,
    }


async def test_an_undeliverable_order_is_refunded_then_released(
    env: WorkflowTestEnv, connection: asyncpg.Connection[Any]
) -> None:
    """A failure after the charge undoes both, the later one first."""
    run = await env.start("order", order(country="AQ"))
    state = await env.run(run)
    assert state.status is WorkflowStatus.COMPENSATED
    assert await effects(connection, run) == {
        "reserved": [("mug", 2, True), ("tea", 3, True)],
        "payment": (2 * 1250 + 3 * 400, True),
        "shipped": 0,
    }
    undone = [e.step_name for e in env.events(run) if e.event == "step.compensated"]
    assert undone == ["charge", "holdReservation"]


async def test_an_order_too_large_fails_before_anything_is_written(
    env: WorkflowTestEnv, connection: asyncpg.Connection[Any]
) -> None:
    """validate, a local task, refuses it for good: nothing to undo, the run just fails."""
    run = await env.start("order", order(items=[{"sku": "car", "qty": 1, "unitPrice": 10**7}]))
    state = await env.run(run)
    assert state.status is WorkflowStatus.FAILED
    assert state.error is not None
    assert state.error["type"] == "OrderTooLarge"
    assert await effects(connection, run) == {"reserved": [], "payment": None, "shipped": 0}


def test_an_order_names_each_sku_once() -> None:
    """The gateway refuses it with this reason: two lines of a sku would share a stepKey."""
    with pytest.raises(ValidationError, match="repeated: \\['mug'\\]"):
        Order.model_validate(order(items=[order()["items"][0], order()["items"][0]]))
