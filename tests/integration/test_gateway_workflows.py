"""Reading workflows (one, and the list), acting on them (cancel, retry), the dashboard's pages
and the gateway's small endpoints (health, OpenAPI)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import asyncpg
import pytest

from relayflow.contracts import CancelWorkflow, RetryWorkflow, decode, new_workflow_id
from relayflow.db import Queries
from relayflow.settings import Settings
from relayflow.topology import CONTROL_KEY, Topology
from relayflow.workflow import WorkflowRegistry
from services.gateway.dag import columns
from services.gateway.openapi import build_openapi
from services.gateway.store import like_prefix
from services.gateway.workflows import encode_cursor
from tests.integration.gateway_harness import RunningGateway, documented, running_gateway
from tests.support import get_messages

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
        "kind": "task",
        "childWorkflowId": None,
        "name": "publishToMQ",
        "status": "pending",
        "attempts": 0,
        "output": None,
        "error": None,
        "startedAt": None,
        "finishedAt": None,
        "nextAttemptAt": None,
        "compensation": None,
        "undo": None,
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
    assert 'id="workflows"' in page.text
    for asset in ("/static/live.js", "/static/home.js", "/static/workflow.js", "/static/style.css"):
        response = await gateway.client.get(asset)
        assert response.status_code == 200
        # Nothing is fetched from the internet at run time.
        assert "http://" not in response.text
        assert "https://" not in response.text
    assert "http://" not in page.text
    assert "https://" not in page.text

    document = await gateway.client.get("/openapi.json")
    assert document.json() == build_openapi(registry)


async def insert_workflow(
    pool: asyncpg.Pool[Any],
    workflow_id: str,
    *,
    name: str = "formSubmission",
    status: str = "running",
    created_at: datetime = T0,
    steps: dict[str, Any] | None = None,
    last_seq: int = 0,
    version: str | None = None,
    error: dict[str, Any] | None = None,
) -> None:
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, last_seq,
                               created_at, updated_at, version, error)
        VALUES ($1, $2, $3, $4, 'h', $5, $6, $7, $7, $8, $9)
        """,
        workflow_id,
        name,
        status,
        {"name": "Ada", "email": "ada@example.com", "message": "hi"},
        steps or {},
        last_seq,
        created_at,
        version,
        error,
    )


async def test_list_is_newest_first_filtered_and_paginated_by_keyset(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """The dashboard's list: newest first, filters that combine, an id prefix taken literally,
    and pages that neither skip nor repeat a row — even when rows share a created_at."""
    name = f"list{uuid.uuid4().hex[:8]}"
    ids: list[str] = []
    for index in range(7):
        workflow_id = f"wf_{name}_{index}"
        ids.append(workflow_id)
        await insert_workflow(
            pool,
            workflow_id,
            name=name,
            status="failed" if index % 3 == 0 else "completed",
            # Pairs of rows share a timestamp: only the id breaks the tie.
            created_at=T0 + timedelta(seconds=index // 2),
            steps={"validate": {"status": "completed"}, "persist": {"status": "running"}},
            last_seq=index,
        )
    newest_first = sorted(ids, key=lambda i: (int(i.rsplit("_", 1)[1]) // 2, i), reverse=True)

    pages: list[str] = []
    params: dict[str, Any] = {"workflow": name, "limit": 3}
    while True:
        response = await gateway.client.get("/workflows", params=params)
        assert response.status_code == 200, response.text
        body = response.json()
        pages.extend(item["workflowId"] for item in body["items"])
        if body["next"] is None:
            break
        params["before"] = body["next"]
    assert pages == newest_first

    failed = (
        await gateway.client.get("/workflows", params={"workflow": name, "status": "failed"})
    ).json()
    assert [item["workflowId"] for item in failed["items"]] == [ids[6], ids[3], ids[0]]
    item = failed["items"][0]
    assert item["stepsTotal"] == 2
    assert item["stepsCompleted"] == 1
    assert item["activeSteps"] == ["persist"]
    assert item["lastSeq"] == 6

    by_prefix = (await gateway.client.get("/workflows", params={"id": f"wf_{name}_1"})).json()
    assert [item["workflowId"] for item in by_prefix["items"]] == [ids[1]]
    # `_` and `%` are literal in a prefix, not LIKE wildcards.
    assert (await gateway.client.get("/workflows", params={"id": "wf%"})).status_code == 400
    wildcard = (await gateway.client.get("/workflows", params={"id": f"wf_{name}__"})).json()
    assert wildcard["items"] == []

    for bad in ({"status": "sleeping"}, {"limit": "0"}, {"limit": "x"}, {"before": "nope"}):
        response = await gateway.client.get("/workflows", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"]


async def test_list_queries_use_an_index_whatever_the_filter(pool: asyncpg.Pool[Any]) -> None:
    """Large numbers of workflows: every filter combination of the list is an index scan in list
    order (with a LIMIT), never a scan and sort of the whole table."""
    name = f"big{uuid.uuid4().hex[:8]}"
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at, updated_at,
                               version, tenant)
        SELECT 'wf_' || $1 || '_' || i, CASE WHEN i % 10 = 0 THEN $1 ELSE $1 || 'x' END,
               (ARRAY['running', 'completed', 'failed', 'cancelled'])[1 + i % 4], '{}', 'h', '{}',
               $2::timestamptz + i * interval '1 second', now(), 'v' || (i % 3),
               $1 || '-t' || (i % 5)
        FROM generate_series(1, 20000) AS i
        """,
        name,
        T0,
    )
    await pool.execute("ANALYZE workflows")
    query = Queries.load("services.gateway").list_workflows
    cursor = (T0 + timedelta(hours=3), "wf_zzz")
    tenant = f"{name}-t1"
    cases = [
        (None, None, None, None, None, None, None),
        ("failed", None, None, None, None, None, None),
        (None, name, None, None, None, None, None),
        ("running", name, None, None, *cursor, None),
        (None, None, None, like_prefix(f"wf_{name}_123"), None, None, None),
        (None, name, "v1", None, None, None, None),
        (None, None, "v1", None, None, None, None),
        ("failed", name, "v1", None, *cursor, None),
        # A key's list is its tenant's, with any of the filters.
        (None, None, None, None, None, None, tenant),
        (None, None, None, None, *cursor, tenant),
        ("failed", None, None, None, None, None, tenant),
        (None, name, "v1", None, None, None, tenant),
    ]
    async with pool.acquire() as conn:
        for status, workflow, version, pattern, before_at, before_id, of in cases:
            plan = await conn.fetchval(
                f"EXPLAIN (FORMAT JSON) {query}",
                status,
                workflow,
                version,
                pattern,
                before_at,
                before_id,
                50,
                of,
            )
            text = str(plan)
            assert "Seq Scan" not in text, (status, workflow, version, pattern, of, text)
            assert "Index" in text, text
    # A version with a few runs, older than the 20,000 of other versions: filtered on alone, it
    # is read through its own index, not by walking the newest of the table and dropping every
    # other version's row on the way (what the created_at index does).
    rare = f"rare{name}"
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, created_at, updated_at,
                               version)
        SELECT 'wf_' || $1 || '_rare' || i, $1, 'completed', '{}', 'h', '{}',
               $2::timestamptz - i * interval '1 second', now(), $3
        FROM generate_series(1, 3) AS i
        """,
        name,
        T0,
        rare,
    )
    await pool.execute("ANALYZE workflows")
    # The rare version's 3 rows, each row read a row listed; and a page of the 6,667 of v1.
    for version, listed in ((rare, 3), ("v1", 50)):
        (explained,) = await pool.fetchval(
            f"EXPLAIN (ANALYZE, FORMAT JSON) {query}",
            None,
            None,
            version,
            None,
            None,
            None,
            50,
            None,
        )
        nodes = list(_plan_nodes(explained["Plan"]))
        indexes = {node["Index Name"] for node in nodes if "Index Name" in node}
        (read,) = (node for node in nodes if node.get("Relation Name") == "workflows")
        assert read["Actual Rows"] == listed, nodes
        removed = sum(node.get("Rows Removed by Filter", 0) for node in nodes)
        if listed == 3:
            assert indexes == {"workflows_version_created_id_idx"}, nodes
            assert not removed, nodes
        else:
            # A third of the table: walking the newest rows (created_at, in list order) and
            # skipping the other versions' reads about three rows per row listed, which the
            # planner may prefer on half-empty pages (fillfactor 50, migration 0021). A page,
            # never a walk of the table's 20,000.
            assert indexes <= {"workflows_version_created_id_idx", "workflows_created_at_idx"}
            assert removed <= 20 * listed, nodes
        if listed == 50:
            # Many runs of the version: the index gives the list's order, nothing is sorted.
            assert not [node for node in nodes if node["Node Type"].endswith("Sort")], nodes
    await pool.execute("DELETE FROM workflows WHERE id LIKE $1", like_prefix(f"wf_{name}_"))


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """A plan node of EXPLAIN (FORMAT JSON) and every node under it."""
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


async def test_cancel_and_retry_publish_control_messages_or_refuse(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    """The actions' contract: 404 for an unknown workflow, 409 when the status makes no sense,
    else a confirmed CancelWorkflow/RetryWorkflow on workflow.control (the orchestrator queue),
    the same message id for the same Idempotency-Key."""
    running, failed = new_workflow_id(), new_workflow_id()
    await insert_workflow(pool, running, status="running")
    await insert_workflow(pool, failed, status="failed")

    unknown = await gateway.client.post(f"/workflows/{new_workflow_id()}/cancel", json={})
    assert unknown.status_code == 404
    for workflow_id, action in ((running, "retry"), (failed, "cancel")):
        refused = await gateway.client.post(f"/workflows/{workflow_id}/{action}", json={})
        assert refused.status_code == 409
        assert "the workflow is" in refused.json()["error"]

    cancel = await gateway.client.post(
        f"/workflows/{running}/cancel?reason=bored", headers={"Idempotency-Key": "k1"}, json={}
    )
    again = await gateway.client.post(
        f"/workflows/{running}/cancel?reason=bored", headers={"Idempotency-Key": "k1"}, json={}
    )
    retry = await gateway.client.post(f"/workflows/{failed}/retry", json={})
    for response in (cancel, again, retry):
        assert response.status_code == 202, response.text
    assert cancel.json()["messageId"] == again.json()["messageId"]
    assert cancel.json() == {
        "workflowId": running,
        "action": "cancel",
        "messageId": cancel.json()["messageId"],
        "status": "accepted",
    }

    channel = await amqp_connection.channel()
    got = [message async for message in get_messages(channel, topology.orchestrator_queue, count=3)]
    await channel.close()
    decoded = [decode(message.body) for message in got]
    assert [type(m).__name__ for m in decoded] == [
        "CancelWorkflow",
        "CancelWorkflow",
        "RetryWorkflow",
    ]
    assert all(message.routing_key == CONTROL_KEY for message in got)
    first, second, third = decoded
    assert isinstance(first, CancelWorkflow)
    assert isinstance(second, CancelWorkflow)
    assert isinstance(third, RetryWorkflow)
    assert [m.workflow_id for m in (first, second, third)] == [running, running, failed]
    assert [m.message_id for m in decoded] == [
        cancel.json()["messageId"],
        cancel.json()["messageId"],
        retry.json()["messageId"],
    ]
    assert first.reason == "bored"
    assert first.idempotency_key == "k1"


async def test_dashboard_pages_and_fragments(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """The server renders what the pages show: a workflow page with its steps laid out by the
    DAG and the actions its status allows, the list fragment, and a readable 404."""
    workflow_id = new_workflow_id()
    await insert_workflow(
        pool,
        workflow_id,
        status="failed",
        steps={
            "validate": {
                "status": "failed",
                "attempts": 1,
                "error": {"type": "DisposableEmail", "message": "<b>no</b>", "retryable": False},
            }
        },
        last_seq=4,
    )
    page = await gateway.client.get(f"/ui/workflows/{workflow_id}")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    text = page.text
    assert 'data-action="retry"' in text
    assert 'data-action="cancel"' not in text
    assert "&lt;b&gt;no&lt;/b&gt;" in text  # escaped, never markup
    assert text.count('<li class="col">') == 5  # the seed DAG is a chain of five
    assert 'data-last-seq="4"' in text

    panel = await gateway.client.get(f"/ui/workflows/{workflow_id}/panel?compact=1")
    assert panel.status_code == 200
    assert 'class="step-lines"' in panel.text
    rows = await gateway.client.get("/ui/list", params={"id": workflow_id})
    assert f'data-workflow-id="{workflow_id}"' in rows.text
    assert (await gateway.client.get("/ui/list?status=nope")).status_code == 400

    # Not there (yet): a link followed right after the submit gets a live page that waits.
    missing_id = new_workflow_id()
    missing = await gateway.client.get(f"/ui/workflows/{missing_id}")
    assert missing.status_code == 404
    assert f'data-workflow-id="{missing_id}"' in missing.text
    assert 'data-status="accepted"' in missing.text
    assert "workflow.js" in missing.text


def test_dag_columns_put_parallel_steps_side_by_side() -> None:
    """Steps that can run together share a column; a join sits right of its deepest input."""
    order = ["a", "b", "c", "d", "e"]
    after = {"b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["a"]}
    assert columns(order, after) == [["a"], ["b", "c", "e"], ["d"]]
    assert columns([], {}) == []


async def control_messages(
    amqp_connection: aio_pika.abc.AbstractRobustConnection, topology: Topology
) -> int:
    channel = await amqp_connection.channel()
    try:
        queue = await channel.declare_queue(topology.orchestrator_queue, passive=True)
    finally:
        await channel.close()
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_a_reason_is_sent_whole_or_refused_with_422(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
) -> None:
    """A reason over the documented 1000 characters used to be cut short without a word; one
    with NUL would be dead-lettered by the orchestrator. Both are the client's to fix: 422
    naming the parameter, and nothing is published."""
    running = new_workflow_id()
    await insert_workflow(pool, running, status="running")
    for reason, problem in (("r" * 1001, "string_too_long"), ("a\u0000b", "unstorable")):
        for action in ("cancel", "retry"):
            refused = await gateway.client.post(
                f"/workflows/{running}/{action}", params={"reason": reason}, json={}
            )
            assert refused.status_code == 422, refused.text
            assert [(f["loc"], f["type"]) for f in refused.json()["fields"]] == [
                (["query", "reason"], problem)
            ]
    assert await control_messages(amqp_connection, topology) == 0

    whole = "r" * 1000
    accepted = await gateway.client.post(
        f"/workflows/{running}/cancel", params={"reason": whole}, json={}
    )
    assert accepted.status_code == 202, accepted.text
    channel = await amqp_connection.channel()
    (message,) = [m async for m in get_messages(channel, topology.orchestrator_queue, count=1)]
    await channel.close()
    cancel = decode(message.body)
    assert isinstance(cancel, CancelWorkflow)
    assert cancel.reason == whole


@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        pytest.param({}, b"", 415, id="no-content-type"),
        pytest.param({"content-type": "text/plain"}, b"{}", 415, id="text-plain"),
        pytest.param({"content-type": "application/x-www-form-urlencoded"}, b"", 415, id="form"),
        pytest.param({"content-type": "application/json"}, b"", 400, id="json-but-empty"),
        pytest.param({"content-type": "application/json"}, b"[]", 422, id="json-array"),
        pytest.param(
            {"content-type": "application/json"}, b'{"reason": "x"}', 422, id="json-members"
        ),
        pytest.param({"content-type": "application/json; charset=utf-8"}, b"{}", 202, id="json"),
    ],
)
async def test_actions_take_only_json(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
    topology: Topology,
    headers: dict[str, str],
    content: bytes,
    status: int,
) -> None:
    """CSRF: a page on another origin retried a cancelled workflow with a bodiless or text/plain
    POST, which browsers send without asking. Only JSON (the documented `{}`) may act."""
    cancelled = new_workflow_id()
    await insert_workflow(pool, cancelled, status="cancelled")
    response = await gateway.client.post(
        f"/workflows/{cancelled}/retry", content=content, headers=headers
    )
    assert response.status_code == status, response.text
    assert await control_messages(amqp_connection, topology) == (1 if status == 202 else 0)
    if status == 415:
        assert "Content-Type: application/json" in response.json()["error"]


async def test_options_and_405_name_every_documented_method(
    gateway: RunningGateway, registry: WorkflowRegistry
) -> None:
    """`Allow` names exactly what the document says of each concrete path (HEAD with GET):
    `/workflows/{x}` is POST where `x` names a workflow served (`/workflows/{name}`) and GET
    where it is an id (`/workflows/{workflowId}`)."""
    document = build_openapi(registry)
    for path, operations in document["paths"].items():
        concrete = path.replace("{workflowId}", new_workflow_id())
        response = await gateway.client.options(concrete)
        assert response.status_code == 405, (path, response.text)
        allowed = {method.strip() for method in response.headers["allow"].split(",")}
        documented = {method.upper() for method in operations if method != "parameters"}
        assert allowed - {"HEAD"} == documented, (path, allowed)
    started = await gateway.client.get("/workflows/formSubmission")
    assert started.status_code == 405
    assert started.headers["allow"] == "POST"
    assert "POST /workflows/formSubmission starts it" in started.json()["error"]
    read = await gateway.client.post(f"/workflows/{new_workflow_id()}", json={})
    assert read.status_code == 405
    assert read.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"id": ""}, id="empty-id"),
        pytest.param({"id": " wf_x"}, id="spaced-id"),
        pytest.param({"workflow": ""}, id="empty-workflow"),
        pytest.param({"workflow": "no such"}, id="not-a-name"),
        pytest.param({"status": ""}, id="empty-status"),
        pytest.param({"limit": "\u00b2"}, id="superscript-limit"),
        pytest.param({"limit": "\u0661"}, id="arabic-indic-limit"),
        pytest.param({"limit": "9" * 5000}, id="huge-limit"),
    ],
)
async def test_list_refuses_what_its_document_refuses(
    gateway: RunningGateway, registry: WorkflowRegistry, params: dict[str, str]
) -> None:
    """Each list parameter given must match its documented schema: empty values and look-alike
    digits were served (or crashed on) although the document refuses them."""
    document = build_openapi(registry)
    schemas = {
        parameter["name"]: parameter["schema"]
        for parameter in document["paths"]["/workflows"]["get"]["parameters"]
    }
    ((name, value),) = params.items()
    schema = schemas[name]
    if schema.get("type") != "integer":
        assert not documented(document, schema).is_valid(value), "the document allows it"
    response = await gateway.client.get("/workflows", params=params)
    assert response.status_code == 400, response.text
    assert name in response.json()["error"]


async def test_a_cursor_holding_an_impossible_id_is_400(gateway: RunningGateway) -> None:
    """The cursor's id goes to PostgreSQL: a forged one with NUL was a 500."""
    cursor = encode_cursor(T0, "wf_\u0000x")
    response = await gateway.client.get("/workflows", params={"before": cursor})
    assert response.status_code == 400, response.text
    assert "before" in response.json()["error"]


async def test_the_list_filters_by_version_and_shows_it(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """After a deploy, runs of the old and the new definition live side by side: an operator
    must see which is which, and list only one version's runs."""
    name = f"ver{uuid.uuid4().hex[:8]}"
    old, new, unversioned = (f"wf_{name}_{index}" for index in range(3))
    await insert_workflow(pool, old, name=name, version="1", created_at=T0)
    await insert_workflow(pool, new, name=name, version="2", created_at=T0 + timedelta(1))
    await insert_workflow(pool, unversioned, name=name, created_at=T0 + timedelta(2))

    listed = await gateway.client.get("/workflows", params={"workflow": name, "version": "1"})
    assert listed.status_code == 200, listed.text
    assert [(i["workflowId"], i["version"]) for i in listed.json()["items"]] == [(old, "1")]
    everything = (await gateway.client.get("/workflows", params={"workflow": name})).json()
    assert [i["version"] for i in everything["items"]] == [None, "2", "1"]
    only_version = (await gateway.client.get("/workflows", params={"version": "2"})).json()
    assert new in [i["workflowId"] for i in only_version["items"]]
    assert (await gateway.client.get(f"/workflows/{new}")).json()["version"] == "2"

    for bad in ("", "a b", "x" * 65, "1;DROP", "v\u00e9"):
        refused = await gateway.client.get("/workflows", params={"version": bad})
        assert refused.status_code == 400, bad
        assert "version must be" in refused.json()["error"]

    # The dashboard: a badge in the list and on the page, and the list's filter.
    rows = await gateway.client.get("/ui/list", params={"workflow": name, "version": "2"})
    assert f'data-workflow-id="{new}"' in rows.text
    assert f'data-workflow-id="{old}"' not in rows.text
    assert 'data-version="2"' in rows.text
    home = await gateway.client.get("/", params={"version": "1", "workflow": name})
    assert 'name="version"' in home.text
    assert 'value="1"' in home.text
    assert f'data-workflow-id="{old}"' in home.text
    assert f'data-workflow-id="{new}"' not in home.text
    page = await gateway.client.get(f"/ui/workflows/{old}")
    assert 'class="badge version" data-version="1"' in page.text
    refused_page = await gateway.client.get("/ui/list", params={"version": "a b"})
    assert refused_page.status_code == 400
    assert "version must be" in refused_page.text


def undo(status: str, **fields: Any) -> dict[str, Any]:
    return {"status": status, "attempts": 1, "startedAt": T0.isoformat(), **fields}


async def test_a_compensation_shows_which_steps_are_undone_and_why_an_undo_failed(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """A run that undoes its completed steps must say so: which steps are being undone, which
    were, and the error of the undo that failed — in the JSON and on the page — and its status
    must show with its own style in the list."""
    workflow_id = new_workflow_id()
    refund_error = {"type": "RefundRefused", "message": "card <closed>", "retryable": False}
    steps = {
        "validate": {"status": "completed", "attempts": 1, "undo": undo("completed")},
        "persist": {
            "status": "completed",
            "attempts": 1,
            "undo": undo("failed", attempts=3, error=refund_error),
        },
        "publishToMQ": {"status": "completed", "attempts": 1, "undo": undo("running")},
        "awaitResponse": {
            "status": "failed",
            "attempts": 1,
            "error": {"type": "WaitTimeout", "message": "no reply", "retryable": False},
        },
    }
    await insert_workflow(
        pool,
        workflow_id,
        status="compensation_failed",
        steps=steps,
        error={
            "type": "RefundRefused",
            "message": "the undo of step 'persist' failed: card <closed>",
            "retryable": False,
            "step": "persist",
            "cause": {"type": "WaitTimeout", "message": "no reply", "cause": "failed"},
        },
        version="3",
    )
    view = (await gateway.client.get(f"/workflows/{workflow_id}")).json()
    assert view["status"] == "compensation_failed"
    assert view["version"] == "3"
    assert view["error"]["cause"]["type"] == "WaitTimeout"
    by_name = {step["name"]: step for step in view["steps"]}
    assert {name: step["compensation"] for name, step in by_name.items()} == {
        "validate": "compensated",
        "persist": "compensation_failed",
        "publishToMQ": "compensating",
        "awaitResponse": None,
        "finalize": None,
    }
    assert by_name["persist"]["undo"]["error"] == refund_error
    assert by_name["persist"]["undo"]["attempts"] == 3
    assert by_name["persist"]["undo"]["status"] == "failed"
    assert by_name["publishToMQ"]["undo"]["status"] == "running"
    assert by_name["awaitResponse"]["undo"] is None
    document = build_openapi(WorkflowRegistry.from_modules(gateway.settings.workflows))
    assert documented(document, "WorkflowView").is_valid(view)

    page = (await gateway.client.get(f"/ui/workflows/{workflow_id}")).text
    assert 'class="pill s-compensation_failed"' in page
    assert 'data-undo="persist" data-compensation="compensation_failed"' in page
    assert 'data-undo="validate" data-compensation="compensated"' in page
    assert 'data-undo="publishToMQ" data-compensation="compensating"' in page
    assert 'data-undo="awaitResponse"' not in page
    assert "RefundRefused" in page
    assert "card &lt;closed&gt;" in page  # escaped, never markup
    assert "Retry failed undos" in page
    rows = (await gateway.client.get("/ui/list", params={"id": workflow_id})).text
    assert 'class="pill s-compensation_failed"' in rows
    assert 'data-status="compensation_failed"' in rows
    listed = await gateway.client.get("/workflows", params={"status": "compensation_failed"})
    assert workflow_id in [item["workflowId"] for item in listed.json()["items"]]
