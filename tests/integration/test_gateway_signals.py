"""Signalling workflows through the gateway, against the real broker and database: 202 only once
the SignalWorkflow is confirmed (and it is on the orchestrator's queue), 404 for an unknown
workflow or an undeclared signal, 409 for a finished workflow or a reused key, 422 naming the
field, 400/415 for what no signal route can take, 503 when the broker does not confirm."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import asyncpg
import pytest

from relayflow.contracts import (
    SignalWorkflow,
    b32,
    decode,
    new_workflow_id,
    workflow_id_for_key,
)
from relayflow.model import ids
from relayflow.settings import Settings
from relayflow.signal_keys import SignalTarget
from relayflow.topology import SIGNAL_KEY, Topology
from relayflow.workflow import WorkflowRegistry
from services.gateway import signals as signal_route
from services.gateway.openapi import build_openapi
from services.gateway.store import GatewayStore
from tests.integration.gateway_harness import (
    WITH_TEST_WORKFLOWS,
    RunningGateway,
    documented,
    running_gateway,
)
from tests.support import get_messages

# The harness's workflow that declares `decision` (approved, by) and `note` (text, priority).
NAME = "review"
DECISION = {"approved": True, "by": "Grace"}


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, workflows=WITH_TEST_WORKFLOWS) as gateway:
        yield gateway


@pytest.fixture
async def channel(
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    channel = await amqp_connection.channel()
    yield channel
    await channel.close()


async def insert_workflow(
    pool: asyncpg.Pool[Any],
    *,
    name: str = NAME,
    status: str = "running",
    mailbox: dict[str, Any] | None = None,
    workflow_id: str | None = None,
) -> str:
    """A run as the orchestrator would have stored it (no orchestrator runs in these tests:
    what the gateway publishes stays on the orchestrator's queue for the test to read)."""
    workflow_id = workflow_id or new_workflow_id()
    await pool.execute(
        """
        INSERT INTO workflows (id, name, status, input, input_hash, steps, mailbox,
                               created_at, updated_at)
        VALUES ($1, $2, $3, $4, 'h', '{}'::jsonb, $5, now(), now())
        """,
        workflow_id,
        name,
        status,
        {"subject": "a raise"},
        mailbox or {},
    )
    return workflow_id


def long_ago_id() -> str:
    """A time-ordered workflow id made an hour ago: nothing can be starting under it."""
    millis = int((time.time() - 3600) * 1000)
    return f"wf_{b32(millis.to_bytes(6, 'big') + os.urandom(10))}"


def url(workflow_id: str, signal: str = "decision") -> str:
    return f"/workflows/{workflow_id}/signals/{signal}"


async def signals(
    channel: aio_pika.abc.AbstractChannel, topology: Topology, count: int
) -> list[SignalWorkflow]:
    found: list[SignalWorkflow] = []
    async for message in get_messages(channel, topology.orchestrator_queue, count=count):
        assert message.routing_key == SIGNAL_KEY
        assert message.type == "SignalWorkflow"
        assert message.content_type == "application/json"
        decoded = decode(message.body)
        assert isinstance(decoded, SignalWorkflow)
        assert message.message_id == decoded.message_id
        found.append(decoded)
    return found


async def queued(channel: aio_pika.abc.AbstractChannel, topology: Topology) -> int:
    queue = await channel.declare_queue(topology.orchestrator_queue, passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_a_signal_is_on_the_orchestrator_queue_when_the_gateway_answers_202(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
) -> None:
    """The contract of the route: the 202 names the signal id, and the SignalWorkflow with that
    id, the payload as its model normalised it and the sender the header gave is already on the
    orchestrator's queue under workflow.signal."""
    workflow_id = await insert_workflow(pool)
    accepted = await gateway.client.post(
        url(workflow_id), json=DECISION, headers={"X-Relayflow-Sender": "grace@example.com"}
    )
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert body == {
        "workflowId": workflow_id,
        "signal": "decision",
        "signalId": body["signalId"],
        "status": "accepted",
    }
    # A model's defaults are part of the payload sent; no sender header: sentBy is null.
    note = await gateway.client.post(url(workflow_id, "note"), json={"text": "see the memo"})
    assert note.status_code == 202, note.text

    sent, noted = await signals(channel, topology, 2)
    assert (sent.workflow_id, sent.signal_name, sent.message_id) == (
        workflow_id,
        "decision",
        body["signalId"],
    )
    assert sent.payload == DECISION
    assert sent.sent_by == "grace@example.com"
    assert sent.idempotency_key is None
    assert noted.message_id == note.json()["signalId"]
    assert noted.payload == {"text": "see the memo", "priority": 1}
    assert noted.sent_by is None
    document = build_openapi(WorkflowRegistry.from_modules(WITH_TEST_WORKFLOWS))
    assert documented(document, "SignalAccepted").is_valid(body)


async def test_unknown_workflows_and_undeclared_signals_are_404_and_send_nothing(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
) -> None:
    """A client must learn what it can send: the 404 for a signal the definition does not
    declare names those it does; an impossible name is a 400 like any impossible path part."""
    review = await insert_workflow(pool)
    form = await insert_workflow(pool, name="formSubmission")

    unknown = await gateway.client.post(url(long_ago_id()), json=DECISION)
    assert unknown.status_code == 404
    assert "no workflow with id" in unknown.json()["error"]

    undeclared = await gateway.client.post(url(review, "veto"), json={})
    assert undeclared.status_code == 404
    assert "declares no signal 'veto'" in undeclared.json()["error"]
    assert "it declares decision, note" in undeclared.json()["error"]

    none = await gateway.client.post(url(form), json=DECISION)
    assert none.status_code == 404
    assert "it declares no signals" in none.json()["error"]

    unserved = await insert_workflow(pool, name="retired")
    gone = await gateway.client.post(url(unserved), json=DECISION)
    assert gone.status_code == 404
    assert "does not serve" in gone.json()["error"]

    for bad in ("9lives", "a" * 65):
        impossible = await gateway.client.post(url(review, bad), json=DECISION)
        assert impossible.status_code == 400, bad
        assert "is not a signal name" in impossible.json()["error"]
    assert (await gateway.client.post(url("bad id!"), json=DECISION)).status_code == 400
    assert await queued(channel, topology) == 0


async def test_a_signal_right_after_the_start_is_accepted_waits_for_the_workflow(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The 202 of a start comes before the orchestrator has stored the run: a signal sent at
    once for its id waits for the run to appear, instead of a false 404."""
    missed = asyncio.Event()
    looked_up = GatewayStore.signal_target

    async def spied(
        self: GatewayStore, workflow_id: str, tenant: str | None
    ) -> SignalTarget | None:
        found = await looked_up(self, workflow_id, tenant)
        if found is None:
            missed.set()
        return found

    monkeypatch.setattr(GatewayStore, "signal_target", spied)
    workflow_id = new_workflow_id()  # as a start's 202 names it
    sending = asyncio.create_task(gateway.client.post(url(workflow_id), json=DECISION))
    await asyncio.wait_for(missed.wait(), timeout=10)
    await insert_workflow(pool, workflow_id=workflow_id)  # the orchestrator applies the start
    answer = await sending
    assert answer.status_code == 202, answer.text
    (sent,) = await signals(channel, topology, 1)
    assert sent.workflow_id == workflow_id


async def test_a_workflow_that_may_still_be_starting_is_503_not_404(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A fresh id (or one an Idempotency-Key named moments ago) that has not appeared after the
    wait is a 503 with Retry-After: its start may be on its way. Nothing is sent. An id that
    cannot be one (made an hour ago) is a 404 at once."""
    monkeypatch.setattr(signal_route, "START_WAIT", 0.2)
    keyed = workflow_id_for_key(NAME, "order-17")
    await pool.execute(
        "INSERT INTO idempotency_keys (workflow_name, key, workflow_id, request_hash)"
        " VALUES ($1, 'order-17', $2, 'h')",
        NAME,
        keyed,
    )
    for workflow_id in (new_workflow_id(), keyed):
        answer = await gateway.client.post(url(workflow_id), json=DECISION)
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert "has not started yet" in answer.json()["error"]
    old = await gateway.client.post(url(long_ago_id()), json=DECISION)
    assert old.status_code == 404
    assert await queued(channel, topology) == 0


@pytest.mark.parametrize("status", ["completed", "failed", "cancelled"])
async def test_a_finished_workflow_takes_no_signal(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    status: str,
) -> None:
    """The orchestrator would ignore it: a 202 would tell the client it counts when it will not."""
    workflow_id = await insert_workflow(pool, status=status)
    refused = await gateway.client.post(url(workflow_id), json=DECISION)
    assert refused.status_code == 409, refused.text
    assert f"the workflow is {status}" in refused.json()["error"]
    assert await queued(channel, topology) == 0


@pytest.mark.parametrize(
    ("payload", "fields"),
    [
        pytest.param({"approved": True}, [(["by"], "missing")], id="missing"),
        pytest.param({"approved": "perhaps", "by": "G"}, [(["approved"], "bool_type")], id="type"),
        pytest.param({**DECISION, "extra": 1}, [(["extra"], "extra_forbidden")], id="extra"),
        pytest.param({"approved": True, "by": "G\u0000"}, [(["by"], "unstorable")], id="nul"),
        pytest.param([DECISION], [([], "dict_type")], id="array"),
    ],
)
async def test_a_payload_its_model_refuses_is_422_naming_the_field(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    payload: Any,
    fields: list[tuple[list[str], str]],
) -> None:
    """The orchestrator would dead-letter it; the sender must hear which field to fix, in the
    same error shape as a start's 422."""
    workflow_id = await insert_workflow(pool)
    refused = await gateway.client.post(url(workflow_id), json=payload)
    assert refused.status_code == 422, refused.text
    error = refused.json()
    assert [(field["loc"], field["type"]) for field in error["fields"]] == fields
    assert "signal 'decision' of workflow 'review'" in error["error"]
    document = build_openapi(WorkflowRegistry.from_modules(WITH_TEST_WORKFLOWS))
    assert documented(document, "ErrorBody").is_valid(error)
    assert await queued(channel, topology) == 0


async def test_the_same_key_sends_the_same_signal_and_another_request_under_it_is_409(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
) -> None:
    """A retried request must count once: the same key is the same message id (the inbox drops
    the copy), and the same key for another payload or sender is a mistake to report, not to
    publish under the first request's id."""
    workflow_id = await insert_workflow(pool)
    key = {"Idempotency-Key": "decide-1", "X-Relayflow-Sender": "grace"}
    first = await gateway.client.post(url(workflow_id), json=DECISION, headers=key)
    again = await gateway.client.post(url(workflow_id), json=DECISION, headers=key)
    assert first.status_code == again.status_code == 202, (first.text, again.text)
    expected = ids.signal_id(workflow_id, "decision", "decide-1")
    assert first.json()["signalId"] == again.json()["signalId"] == expected

    other_body = await gateway.client.post(
        url(workflow_id), json={**DECISION, "approved": False}, headers=key
    )
    other_sender = await gateway.client.post(
        url(workflow_id), json=DECISION, headers={**key, "X-Relayflow-Sender": "ada"}
    )
    for refused in (other_body, other_sender):
        assert refused.status_code == 409, refused.text
        assert "Idempotency-Key 'decide-1' was already used" in refused.json()["error"]
    # A key names one signal of one workflow: another signal under it is another message.
    note = await gateway.client.post(url(workflow_id, "note"), json={"text": "hi"}, headers=key)
    assert note.status_code == 202, note.text
    assert note.json()["signalId"] == ids.signal_id(workflow_id, "note", "decide-1")

    sent = await signals(channel, topology, 3)
    assert [message.message_id for message in sent] == [expected, expected, note.json()["signalId"]]
    assert all(message.idempotency_key == "decide-1" for message in sent)
    assert await queued(channel, topology) == 0


@pytest.mark.parametrize(
    ("headers", "content", "status"),
    [
        pytest.param({}, b"{}", 415, id="no-content-type"),
        pytest.param({"content-type": "text/plain"}, b"{}", 415, id="text-plain"),
        pytest.param({"content-type": "application/json"}, b"", 400, id="empty"),
        pytest.param({"content-type": "application/json"}, b"{", 400, id="not-json"),
        pytest.param(
            {"content-type": "application/json", "X-Relayflow-Sender": "s" * 201},
            b'{"approved": true, "by": "G"}',
            400,
            id="sender-too-long",
        ),
        pytest.param(
            # Non-ASCII bytes have no agreed encoding in a header: not the name that was meant.
            {"content-type": "application/json", "X-Relayflow-Sender": "Gr\u00e2ce".encode()},
            b'{"approved": true, "by": "G"}',
            400,
            id="sender-not-printable",
        ),
        pytest.param(
            {"content-type": "application/json", "Idempotency-Key": "k" * 201},
            b'{"approved": true, "by": "G"}',
            400,
            id="key-too-long",
        ),
        pytest.param(
            {"content-type": "application/json; charset=utf-8", "X-Relayflow-Sender": "s" * 200},
            b'{"approved": true, "by": "G"}',
            202,
            id="json",
        ),
    ],
)
async def test_what_no_signal_route_takes_is_refused_before_anything_is_sent(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    headers: dict[str, str | bytes],
    content: bytes,
    status: int,
) -> None:
    """The same guards as every POST (CSRF: JSON only) and the headers' documented limits."""
    workflow_id = await insert_workflow(pool)
    raw = [
        (name.encode(), value if isinstance(value, bytes) else value.encode())
        for name, value in headers.items()
    ]
    response = await gateway.client.post(url(workflow_id), content=content, headers=raw)
    assert response.status_code == status, response.text
    assert await queued(channel, topology) == (1 if status == 202 else 0)


async def test_an_unconfirmed_signal_is_503_and_a_retry_with_the_key_heals_it(
    gateway: RunningGateway,
    pool: asyncpg.Pool[Any],
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    registry: WorkflowRegistry,
) -> None:
    """No false accept: when the broker returns the mandatory message (no queue bound), the
    client gets 503, and the same request with the same key once routing is back sends the
    signal under the same id."""
    workflow_id = await insert_workflow(pool)
    await channel.queue_delete(topology.orchestrator_queue)
    headers = {"Idempotency-Key": "heal"}
    refused = await gateway.client.post(url(workflow_id), json=DECISION, headers=headers)
    assert refused.status_code == 503, refused.text
    assert "same Idempotency-Key" in refused.json()["error"]
    assert refused.headers["retry-after"] == "1"

    await topology.declare(channel, registry.task_names())
    healed = await gateway.client.post(url(workflow_id), json=DECISION, headers=headers)
    assert healed.status_code == 202, healed.text
    (sent,) = await signals(channel, topology, 1)
    assert (
        sent.message_id
        == healed.json()["signalId"]
        == ids.signal_id(workflow_id, "decision", "heal")
    )


async def test_the_workflow_view_says_which_signals_it_takes_and_which_are_kept(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """A client reads what it can send from GET /workflows/{id}, and how many signals wait in
    the mailbox for a step to take them (counts, never the payloads)."""
    kept = {"id": "s", "payload": {"text": "x", "priority": 1}, "sentBy": None, "at": "t"}
    workflow_id = await insert_workflow(pool, mailbox={"note": [kept, kept], "decision": []})
    form = await insert_workflow(pool, name="formSubmission")

    view = (await gateway.client.get(f"/workflows/{workflow_id}")).json()
    assert view["signals"] == ["decision", "note"]
    assert view["mailbox"] == {"note": 2}
    plain = (await gateway.client.get(f"/workflows/{form}")).json()
    assert (plain["signals"], plain["mailbox"]) == ([], {})
    document = build_openapi(WorkflowRegistry.from_modules(WITH_TEST_WORKFLOWS))
    assert documented(document, "WorkflowView").is_valid(view)


async def test_the_workflow_page_offers_a_form_per_declared_signal_while_it_runs(
    gateway: RunningGateway, pool: asyncpg.Pool[Any]
) -> None:
    """The page's forms come from the signals' models: a lone boolean is an Approve/Reject
    pair, a string an input, a number with its default a number input; they are hidden once
    the workflow has finished, and absent for a workflow without signals."""
    running = await insert_workflow(pool)
    page = (await gateway.client.get(f"/ui/workflows/{running}")).text
    assert '<section class="card" id="signals" aria-labelledby="signals-title">' in page
    assert 'data-signal="decision"' in page
    assert 'data-signal="note"' in page
    assert 'data-set="approved" data-value="true">Approve</button>' in page
    assert 'data-set="approved" data-value="false">Reject</button>' in page
    assert 'data-field="by" data-kind="string" data-required' in page
    assert 'maxlength="100"' in page
    assert 'type="number" step="1" min="1" max="5" value="1"' in page

    finished = await insert_workflow(pool, status="completed")
    done = (await gateway.client.get(f"/ui/workflows/{finished}")).text
    assert 'id="signals" aria-labelledby="signals-title" hidden>' in done
    form = await insert_workflow(pool, name="formSubmission")
    assert 'id="signals"' not in (await gateway.client.get(f"/ui/workflows/{form}")).text


def test_the_document_gives_each_declared_signal_its_model() -> None:
    """Clients are generated from the document: each declared signal name has its path with
    that signal's model as the body, beside the templated route."""
    document = build_openapi(WorkflowRegistry.from_modules(WITH_TEST_WORKFLOWS))
    paths = document["paths"]
    assert "/workflows/{workflowId}/signals/{signalName}" in paths
    decision = paths["/workflows/{workflowId}/signals/decision"]["post"]
    schema = decision["requestBody"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Decision"}
    assert set(decision["responses"]) >= {"202", "400", "404", "409", "415", "422", "503"}
    assert any(p["name"] == "X-Relayflow-Sender" for p in decision["parameters"])
    model = documented(document, schema)
    assert model.is_valid(DECISION)
    assert not model.is_valid({"approved": True})
    assert not model.is_valid({"approved": True, "by": "G\u0000"})
    events = paths["/workflows/{workflowId}/events"]["get"]["responses"]["200"]["content"]
    data = events["text/event-stream"]["x-event-data"]
    received = documented(document, data["signal.received"])
    assert received.is_valid(
        {"signal": "decision", "payload": DECISION, "sentBy": None, "signalId": "sig:x"}
    )
    sleeping = documented(document, data["step.sleeping"])
    assert sleeping.is_valid({"attempt": 1, "wakeAt": "2026-01-01T00:00:00Z"})
