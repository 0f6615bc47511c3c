"""A map step's items on the gateway: its progress and first items in `GET /workflows/{id}`, the
keyset-paginated `GET /workflows/{id}/steps/{step}/items`, the dashboard's card, and every answer
as the OpenAPI document describes it. Items are rows of `step_items`, inserted here directly."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel, ConfigDict

from relayflow.contracts import new_workflow_id
from relayflow.db import Queries
from relayflow.model import StepStatus
from relayflow.settings import Settings
from relayflow.workflow import WorkflowRegistry, define_workflow, map_step, task
from services.gateway.openapi import build_openapi
from services.gateway.workflows import DEFAULT_ITEMS, FIRST_ITEMS, MAX_ITEMS
from tests.integration.gateway_harness import RunningGateway, documented, running_gateway

T0 = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
TOTAL = 250
MAPPED = "mappedRows"


class Rows(BaseModel):
    model_config = ConfigDict(extra="forbid")

    rows: list[dict[str, Any]]


# A map and a task after it, on the seed's step queues so that the test adds no queue to remove.
WORKFLOWS = [
    define_workflow(
        MAPPED,
        input_model=Rows,
        steps=[map_step("validate", over="input.rows"), task("persist", after=["validate"])],
    )
]
MODULES = ["apps.form_submission.workflows", __name__]
ITEMS_PATH = "/workflows/{workflowId}/steps/{stepName}/items"


def item_status(index: int) -> StepStatus:
    """Most items completed, some failed, some running or retrying, the last ones pending."""
    if index >= 240:
        return StepStatus.PENDING
    if index % 10 == 3:
        return StepStatus.FAILED
    if index % 25 == 7:
        return StepStatus.RETRYING
    if index >= 230:
        return StepStatus.RUNNING
    return StepStatus.COMPLETED


STATUSES = [item_status(index) for index in range(TOTAL)]
COUNTS = {
    "total": TOTAL,
    "completed": STATUSES.count(StepStatus.COMPLETED),
    "failed": STATUSES.count(StepStatus.FAILED),
    "running": STATUSES.count(StepStatus.RUNNING) + STATUSES.count(StepStatus.RETRYING),
}


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_openapi(WorkflowRegistry.from_modules(MODULES))


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, workflows=MODULES) as gateway:
        yield gateway


async def insert_map_workflow(
    pool: asyncpg.Pool[Any], *, name: str = MAPPED, total: int = TOTAL
) -> str:
    """A running workflow whose map step `validate` has `total` items in `step_items`, inserted
    in random order (the key, the index as text, sorts differently from the index, too)."""
    workflow_id = new_workflow_id()
    steps = {
        "validate": {
            "status": StepStatus.RUNNING.value,
            "attempts": 1,
            "startedAt": T0.isoformat(),
            "progress": COUNTS | {"total": total},
        }
    }
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, last_seq,
                               created_at, updated_at)
        VALUES ($1, $2, 'running', $3, 'h', $4, 7, $5, $5)
        """,
        workflow_id,
        name,
        {"rows": [{"n": index} for index in range(total)]},
        steps,
        T0,
    )
    rows = []
    for index in random.sample(range(total), total):
        status = STATUSES[index % TOTAL]
        started = None if status is StepStatus.PENDING else T0 + timedelta(seconds=index)
        ended = status in {StepStatus.COMPLETED, StepStatus.FAILED}
        rows.append(
            (
                workflow_id,
                "validate",
                str(index),
                index,
                status.value,
                0 if status is StepStatus.PENDING else 1,
                {"n": index},
                {"doubled": 2 * index} if status is StepStatus.COMPLETED else None,
                {"type": "BadRow", "message": f"row {index}", "retryable": False}
                if status in {StepStatus.FAILED, StepStatus.RETRYING}
                else None,
                started,
                started + timedelta(milliseconds=5) if started and ended else None,
            )
        )
    await pool.executemany(
        """
        INSERT INTO step_items (workflow_id, step_name, key, item_index, status, attempts, item,
                                output, error, started_at, finished_at)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
        """,
        rows,
    )
    return workflow_id


def check_item(item: dict[str, Any]) -> None:
    """The item shape `ItemState.to_json` gives: output only once completed, error only when
    set — absent otherwise, never null."""
    index = item["index"]
    status = STATUSES[index % TOTAL]
    assert item["key"] == str(index)
    assert item["status"] == status.value
    if status is StepStatus.COMPLETED:
        assert item["output"] == {"doubled": 2 * index}
        assert datetime.fromisoformat(item["finishedAt"]) == T0 + timedelta(
            seconds=index, milliseconds=5
        )
    else:
        assert "output" not in item
    if status in {StepStatus.FAILED, StepStatus.RETRYING}:
        assert item["error"] == {"type": "BadRow", "message": f"row {index}", "retryable": False}
    else:
        assert "error" not in item
    if status is StepStatus.PENDING:
        assert item["startedAt"] is None
        assert item["attempts"] == 0


async def get_pages(
    gateway: RunningGateway, document: dict[str, Any], url: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Follow `next` from `url` to the last page: every item and every URL fetched."""
    page_schema = documented(document, "ItemPage")
    items: list[dict[str, Any]] = []
    urls: list[str] = []
    next_url: str | None = url
    while next_url is not None:
        urls.append(next_url)
        response = await gateway.client.get(next_url)
        assert response.status_code == 200, response.text
        body = response.json()
        page_schema.validate(body)
        assert body["items"] or body["next"] is None
        items.extend(body["items"])
        next_url = body["next"]
        assert len(urls) <= TOTAL, "next never ends"
    return items, urls


async def test_workflow_view_shows_a_map_steps_progress_and_first_items(
    gateway: RunningGateway, pool: asyncpg.Pool[Any], document: dict[str, Any]
) -> None:
    """A map step's view carries what a client needs to show it — its kind, its counts and its
    first items in item order, with the URL of the rest — while other steps keep their shape."""
    workflow_id = await insert_map_workflow(pool)
    response = await gateway.client.get(f"/workflows/{workflow_id}")
    assert response.status_code == 200, response.text
    view = response.json()
    documented(document, "WorkflowView").validate(view)
    mapped, after = view["steps"]
    documented(document, "MapStepView").validate(mapped)
    assert mapped["name"] == "validate"
    assert mapped["kind"] == "map"
    assert mapped["status"] == StepStatus.RUNNING.value
    assert mapped["progress"] == COUNTS
    assert [item["index"] for item in mapped["items"]] == list(range(FIRST_ITEMS))
    for item in mapped["items"]:
        check_item(item)
    assert mapped["itemsNext"] == (
        f"/workflows/{workflow_id}/steps/validate/items?after={FIRST_ITEMS - 1}"
    )
    # A step of another kind is as it was: no map fields.
    assert after == {
        "kind": "task",
        "childWorkflowId": None,
        "name": "persist",
        "status": StepStatus.PENDING.value,
        "attempts": 0,
        "output": None,
        "error": None,
        "startedAt": None,
        "finishedAt": None,
        "nextAttemptAt": None,
        "compensation": None,
        "undo": None,
    }

    # The rest, from `itemsNext` on: nothing skipped, nothing repeated, in item order.
    rest, _ = await get_pages(gateway, document, mapped["itemsNext"])
    assert [item["index"] for item in rest] == list(range(FIRST_ITEMS, TOTAL))


async def test_a_map_without_items_yet_and_one_of_few_items(
    gateway: RunningGateway, pool: asyncpg.Pool[Any], document: dict[str, Any]
) -> None:
    """Before a map starts it has no progress and no items; a map with fewer items than the first
    page has no `itemsNext`; a map the registry no longer defines is still shown as one."""
    pending_id = new_workflow_id()
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at, updated_at)
        VALUES ($1, $2, 'running', '{"rows": []}', 'h', '{}', $3, $3)
        """,
        pending_id,
        MAPPED,
        T0,
    )
    view = (await gateway.client.get(f"/workflows/{pending_id}")).json()
    documented(document, "WorkflowView").validate(view)
    pending = view["steps"][0]
    assert pending["kind"] == "map"
    assert pending["status"] == StepStatus.PENDING.value
    assert (pending["progress"], pending["items"], pending["itemsNext"]) == (None, [], None)
    empty = await gateway.client.get(f"/workflows/{pending_id}/steps/validate/items")
    assert empty.json() == {"items": [], "next": None}

    few_id = await insert_map_workflow(pool, total=5)
    few = (await gateway.client.get(f"/workflows/{few_id}")).json()["steps"][0]
    assert [item["index"] for item in few["items"]] == [0, 1, 2, 3, 4]
    assert few["itemsNext"] is None

    # An older definition's map: the registry has no `oldMap`, its state shows a map.
    old_id = await insert_map_workflow(pool, name="oldMap", total=3)
    old = (await gateway.client.get(f"/workflows/{old_id}")).json()
    documented(document, "WorkflowView").validate(old)
    assert [(step["name"], step["kind"]) for step in old["steps"]] == [("validate", "map")]
    assert len(old["steps"][0]["items"]) == 3
    listed = await gateway.client.get(f"/workflows/{old_id}/steps/validate/items")
    assert [item["index"] for item in listed.json()["items"]] == [0, 1, 2]


async def test_items_are_pages_in_item_order_filtered_by_status(
    gateway: RunningGateway, pool: asyncpg.Pool[Any], document: dict[str, Any]
) -> None:
    """Keyset pages by item index: every item once, in order, whatever the page size; `next`
    keeps the filter and the page size; the status filter pages through only its items."""
    workflow_id = await insert_map_workflow(pool)
    base = f"/workflows/{workflow_id}/steps/validate/items"

    items, urls = await get_pages(gateway, document, base)
    assert [item["index"] for item in items] == list(range(TOTAL))
    assert len(urls) == -(-TOTAL // DEFAULT_ITEMS)
    for item in items:
        check_item(item)

    items, urls = await get_pages(gateway, document, f"{base}?limit={MAX_ITEMS}")
    assert len(urls) == 1
    assert len(items) == TOTAL

    items, urls = await get_pages(gateway, document, f"{base}?limit=7&after=200")
    assert [item["index"] for item in items] == list(range(201, TOTAL))
    assert all("limit=7" in url for url in urls)

    failed = [index for index, status in enumerate(STATUSES) if status is StepStatus.FAILED]
    items, urls = await get_pages(gateway, document, f"{base}?status=failed&limit=6")
    assert [item["index"] for item in items] == failed
    assert len(urls) == -(-len(failed) // 6)
    assert all("status=failed" in url for url in urls[1:])

    # A page size that ends exactly on the last item says so: no `next` to an empty page.
    exact = await gateway.client.get(base, params={"after": str(TOTAL - 11), "limit": "10"})
    assert [item["index"] for item in exact.json()["items"]] == list(range(TOTAL - 10, TOTAL))
    assert exact.json()["next"] is None
    past = await gateway.client.get(base, params={"after": "100000"})
    assert past.json() == {"items": [], "next": None}


@pytest.mark.parametrize(
    ("params", "name"),
    [
        pytest.param({"after": "-1"}, "after", id="negative-after"),
        pytest.param({"after": "x"}, "after", id="word-after"),
        pytest.param({"after": ""}, "after", id="empty-after"),
        pytest.param({"after": "\u0661"}, "after", id="arabic-digit-after"),
        pytest.param({"after": "9" * 11}, "after", id="huge-after"),
        pytest.param({"limit": "0"}, "limit", id="zero-limit"),
        pytest.param({"limit": str(MAX_ITEMS + 1)}, "limit", id="big-limit"),
        pytest.param({"limit": ""}, "limit", id="empty-limit"),
        pytest.param({"status": "sleeping"}, "status", id="unknown-status"),
        pytest.param({"status": ""}, "status", id="empty-status"),
        pytest.param({"status": "Failed"}, "status", id="capitalised-status"),
    ],
)
async def test_items_refuse_what_their_document_refuses(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    document: dict[str, Any],
    params: dict[str, str],
    name: str,
) -> None:
    """Each parameter given must match its documented schema (a 400 naming it), like the list's:
    a bad `after` must not reach PostgreSQL, nor a bad status turn into an empty page."""
    workflow_id = await insert_map_workflow(pool, total=3)
    schemas = {
        parameter["name"]: parameter["schema"]
        for parameter in document["paths"][ITEMS_PATH]["get"]["parameters"]
    }
    ((_, value),) = params.items()
    if schemas[name].get("type") != "integer":
        assert not documented(document, schemas[name]).is_valid(value), "the document allows it"
    response = await gateway.client.get(
        f"/workflows/{workflow_id}/steps/validate/items", params=params
    )
    assert response.status_code == 400, response.text
    documented(document, "ErrorBody").validate(response.json())
    assert name in response.json()["error"]


async def test_items_of_what_is_not_a_map_step_are_404_and_impossible_names_400(
    gateway: RunningGateway, pool: asyncpg.Pool[Any], document: dict[str, Any]
) -> None:
    """A client learns why there are no items: no such workflow, no such step, or a step that
    is not a map (404, each saying so); an id or name no workflow or step can have is a 400
    before anything is looked up."""
    workflow_id = await insert_map_workflow(pool, total=3)
    responses = document["paths"][ITEMS_PATH]["get"]["responses"]
    error = documented(document, "ErrorBody")
    cases = [
        (f"/workflows/{new_workflow_id()}/steps/validate/items", 404, "no workflow"),
        (f"/workflows/{workflow_id}/steps/finalize/items", 404, "no step 'finalize'"),
        (f"/workflows/{workflow_id}/steps/persist/items", 404, "not a map"),
        ("/workflows/wf%00x/steps/validate/items", 400, "not a workflow id"),
        (f"/workflows/{workflow_id}/steps/1st/items", 400, "not a step name"),
        (f"/workflows/{workflow_id}/steps/{'s' * 65}/items", 400, "not a step name"),
        (f"/workflows/{workflow_id}/steps/a%20b/items", 400, "not a step name"),
    ]
    for url, status, message in cases:
        response = await gateway.client.get(url)
        assert response.status_code == status, (url, response.text)
        assert str(status) in responses
        assert response.headers["content-type"] == "application/json"
        error.validate(response.json())
        assert message in response.json()["error"], (url, response.text)
    # A workflow id is checked before the parameters, and both before PostgreSQL.
    response = await gateway.client.get("/workflows/wf%00x/steps/validate/items?limit=0")
    assert response.status_code == 400
    assert "workflow id" in response.json()["error"]


async def test_the_dashboard_card_shows_the_progress_bar_and_only_the_first_items(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """The page must stay usable at 10,000 items: a progress bar the script updates in place,
    a short table of the first items, and a link to the rest — never every item."""
    workflow_id = await insert_map_workflow(pool)
    page = await gateway.client.get(f"/ui/workflows/{workflow_id}")
    assert page.status_code == 200, page.text
    text = page.text
    assert 'data-map-step="validate"' in text
    assert 'role="progressbar"' in text
    assert f'aria-valuemax="{TOTAL}"' in text
    assert f'aria-valuenow="{COUNTS["completed"] + COUNTS["failed"]}"' in text
    for part in ("completed", "failed", "running"):
        assert f'<span data-count="{part}">{COUNTS[part]}</span>' in text
    assert text.count("data-item-key=") == 20
    assert f'href="/workflows/{workflow_id}/steps/validate/items"' in text
    panel = await gateway.client.get(f"/ui/workflows/{workflow_id}/panel?compact=1")
    assert f"{COUNTS['completed'] + COUNTS['failed']}/{TOTAL} items" in panel.text


async def test_item_queries_use_the_order_index(pool: asyncpg.Pool[Any]) -> None:
    """A 10,000-item map: the first items of each map step and each page are a range scan of
    the primary key (item order), never a scan of every item; an unfiltered page reads only
    its rows, in index order (no sort), and a filtered one at most the step's own items."""
    workflow_id = new_workflow_id()
    await pool.execute(
        """
        INSERT INTO step_items (workflow_id, step_name, key, item_index, status, attempts)
        SELECT $1, s, i::text, i, (ARRAY['completed', 'failed', 'running', 'pending'])[1 + i % 4], 1
        FROM generate_series(0, 9999) AS i, unnest(ARRAY['a', 'b']) AS s
        """,
        workflow_id,
    )
    await pool.execute("ANALYZE step_items")
    queries = Queries.load("services.gateway")

    def checked(plan: Any, *, sorted_rows: bool) -> None:
        text = str(plan)
        assert "Seq Scan" not in text, text
        assert "step_items_pkey" in text, text
        assert sorted_rows or "Sort" not in text, text

    async with pool.acquire() as conn:
        first = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {queries.first_items}", workflow_id, ["a", "b"], 101
        )
        # The one sort is of the rows found (101 per step), putting the steps in order.
        checked(first, sorted_rows=True)
        for after, status in ((-1, None), (5000, None), (-1, "failed"), (9000, "running")):
            plan = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {queries.items_after}", workflow_id, "a", after, status, 101
            )
            checked(plan, sorted_rows=status is not None)
    await pool.execute("DELETE FROM step_items WHERE workflow_id = $1", workflow_id)
