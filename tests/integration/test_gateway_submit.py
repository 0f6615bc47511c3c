"""Starting workflows through the gateway, against the real broker and database: 202 only after
the broker confirmed, 422/400 for bad input, 413 over the input limit, 415 for anything but JSON,
idempotency keys, 503 when unconfirmed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import asyncpg
import pytest

from relayflow.contracts import StartWorkflow, decode, workflow_id_for_key
from relayflow.errors import ConfigurationError
from relayflow.settings import Settings
from relayflow.topology import Topology
from relayflow.workflow import WorkflowRegistry
from services.gateway.app import create_app
from services.gateway.openapi import build_openapi
from services.gateway.settings import SUBMIT_SETTING, GatewaySettings, submit_off_reason
from tests.integration.gateway_harness import (
    WITH_TEST_WORKFLOWS,
    RunningGateway,
    documented,
    running_gateway,
    seed_document,
)
from tests.support import get_messages

FORM = {"name": "Ada Lovelace", "email": "ada@example.com", "message": "Hello there"}
WORKFLOW_ID = re.compile(r"^wf_[0-9a-z]{26}$")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings) as gateway:
        yield gateway


@pytest.fixture
async def gateway_plus(settings: Settings) -> AsyncIterator[RunningGateway]:
    """A gateway that also serves the harness's `freeform` and `padded` workflows."""
    async with running_gateway(settings, workflows=WITH_TEST_WORKFLOWS) as gateway:
        yield gateway


@pytest.fixture
async def channel(
    amqp_connection: aio_pika.abc.AbstractRobustConnection,
) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    channel = await amqp_connection.channel()
    yield channel
    await channel.close()


async def started(
    channel: aio_pika.abc.AbstractChannel, topology: Topology, count: int
) -> list[StartWorkflow]:
    found: list[StartWorkflow] = []
    async for message in get_messages(channel, topology.orchestrator_queue, count=count):
        assert message.content_type == "application/json"
        assert message.type == "StartWorkflow"
        decoded = decode(message.body)
        assert isinstance(decoded, StartWorkflow)
        assert message.message_id == decoded.message_id
        found.append(decoded)
    return found


async def queued(channel: aio_pika.abc.AbstractChannel, topology: Topology) -> int:
    queue = await channel.declare_queue(topology.orchestrator_queue, passive=True)
    count = queue.declaration_result.message_count
    assert count is not None
    return count


async def test_submit_answers_202_after_the_start_is_on_the_orchestrator_queue(
    gateway: RunningGateway, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """The core promise: a 202 means a StartWorkflow with this id and input is queued."""
    response = await gateway.client.post("/submit", json={**FORM, "name": "  Ada Lovelace "})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "accepted"
    assert WORKFLOW_ID.match(body["workflowId"])
    (start,) = await started(channel, topology, 1)
    assert start.workflow_id == body["workflowId"]
    assert start.workflow_name == "formSubmission"
    assert start.input == FORM  # normalised by the input model (whitespace stripped)
    assert start.idempotency_key is None


async def test_submit_starts_the_workflow_its_setting_names(
    settings: Settings, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """/submit is an alias: RELAYFLOW_GATEWAY_SUBMIT_WORKFLOW says of which workflow, and its
    input is that workflow's."""
    async with running_gateway(
        settings, workflows=WITH_TEST_WORKFLOWS, gateway_submit_workflow="freeform"
    ) as gateway:
        refused = await gateway.client.post("/submit", json=FORM)
        assert refused.status_code == 422, refused.text
        response = await gateway.client.post("/submit", json={"data": {"a": 1}})
        assert response.status_code == 202, response.text
    (start,) = await started(channel, topology, 1)
    assert (start.workflow_name, start.input) == ("freeform", {"data": {"a": 1}})


async def test_submit_turned_off_is_a_404_that_says_so(
    settings: Settings, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """With the setting empty, /submit (and the contact form, which posts there) starts nothing
    and says where to go instead; the workflow itself still starts by its name."""
    async with running_gateway(settings, gateway_submit_workflow="") as gateway:
        response = await gateway.client.post("/submit", json=FORM)
        assert response.status_code == 404, response.text
        message = response.json()["error"]
        assert "RELAYFLOW_GATEWAY_SUBMIT_WORKFLOW" in message
        assert "POST /workflows/{name}" in message
        assert await queued(channel, topology) == 0
        named = await gateway.client.post("/workflows/formSubmission", json=FORM)
        assert named.status_code == 202, named.text
    (start,) = await started(channel, topology, 1)
    assert start.workflow_name == "formSubmission"


async def test_home_page_without_submit_says_how_to_start_a_workflow(settings: Settings) -> None:
    """With /submit off the contact form, which posts there, could only fail: the home page
    shows instead why and how to start a workflow (POST /workflows/{name}), and still the list."""
    async with running_gateway(settings, gateway_submit_workflow="") as gateway:
        page = await gateway.client.get("/")
        served = WorkflowRegistry.from_modules(gateway.settings.workflows).names()
    assert page.status_code == 200, page.text
    assert 'id="contact"' not in page.text
    assert f"{SUBMIT_SETTING} is empty" in page.text
    assert "POST /workflows/{name}" in page.text
    for name in served:
        assert f"<code>POST /workflows/{name}</code>" in page.text
    assert 'id="workflows"' in page.text


async def test_the_api_document_follows_the_settings_given_not_the_environment(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/openapi.json documents the /submit this gateway serves, that of the settings passed to
    create_app: it once read RELAYFLOW_GATEWAY_SUBMIT_WORKFLOW from the environment instead."""
    monkeypatch.setenv(SUBMIT_SETTING, "padded")
    async with running_gateway(
        settings, workflows=WITH_TEST_WORKFLOWS, gateway_submit_workflow="freeform"
    ) as gateway:
        document = (await gateway.client.get("/openapi.json")).json()
    paths = document["paths"]
    assert paths["/submit"]["post"]["summary"] == "Submit the contact form (starts freeform)"
    assert (
        paths["/submit"]["post"]["requestBody"]
        == paths["/workflows/freeform"]["post"]["requestBody"]
    )
    monkeypatch.delenv(SUBMIT_SETTING)
    async with running_gateway(settings, gateway_submit_workflow="") as gateway:
        off = (await gateway.client.get("/openapi.json")).json()
    assert "/submit" not in off["paths"]
    assert "/workflows/formSubmission" in off["paths"]


def test_a_submit_workflow_not_served_fails_at_start_up() -> None:
    """A setting naming a workflow the gateway does not serve (a typo, a module left out) is a
    configuration error naming the setting, its value and the workflows served, raised when
    the app is made, before anything opens: not a 404 at the first /submit."""
    config = GatewaySettings(gateway_submit_workflow="fromSubmission")
    with pytest.raises(ConfigurationError) as refused:
        create_app(config)
    message = str(refused.value)
    assert f"{SUBMIT_SETTING}='fromSubmission'" in message
    served = WorkflowRegistry.from_modules(config.workflows).names()
    assert f"are: {', '.join(served)} " in message
    with pytest.raises(ConfigurationError, match=SUBMIT_SETTING):
        build_openapi(WorkflowRegistry.from_modules(config.workflows), submit_workflow="nope")


def test_the_gateway_process_exits_naming_the_setting() -> None:
    """The process, too: exit status 2 and the message, not a traceback (nor a gateway that
    serves, and 404s, until someone posts the form)."""
    env = {**os.environ, SUBMIT_SETTING: "fromSubmission"}
    result = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert f"{SUBMIT_SETTING}='fromSubmission' names no workflow" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unset_submit_is_the_seed_form_where_it_is_served(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Unset, /submit starts formSubmission if the gateway serves it and is off otherwise, so a
    gateway for other applications (the bench's) starts without naming the setting; empty in
    the environment is off, not unset."""
    monkeypatch.delenv(SUBMIT_SETTING, raising=False)
    seed = GatewaySettings(workflows=["apps.form_submission.workflows"])
    assert seed.submit_workflow(WorkflowRegistry.from_modules(seed.workflows)) == "formSubmission"
    other = GatewaySettings(workflows=["apps.batch_import.workflows"])
    registry = WorkflowRegistry.from_modules(other.workflows)
    assert other.submit_workflow(registry) is None
    create_app(other)
    assert "/submit" not in build_openapi(registry)["paths"]
    assert "unset" in submit_off_reason(other.gateway_submit_workflow)
    monkeypatch.setenv(SUBMIT_SETTING, "")
    emptied = GatewaySettings(workflows=["apps.form_submission.workflows"])
    assert emptied.gateway_submit_workflow == ""
    assert emptied.submit_workflow(WorkflowRegistry.from_modules(emptied.workflows)) is None


async def test_generic_start_route_and_unknown_workflow(
    gateway: RunningGateway, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """Any registered workflow starts through /workflows/{name}; an unknown name is no such
    path to POST to (405, as the document says of /workflows/{workflowId}), naming the known."""
    response = await gateway.client.post("/workflows/formSubmission", json=FORM)
    assert response.status_code == 202, response.text
    (start,) = await started(channel, topology, 1)
    assert start.workflow_id == response.json()["workflowId"]

    missing = await gateway.client.post("/workflows/noSuchFlow", json=FORM)
    assert missing.status_code == 405
    assert "noSuchFlow" in missing.json()["error"]
    assert "formSubmission" in missing.json()["error"]


@pytest.mark.parametrize(
    ("payload", "loc", "type_"),
    [
        pytest.param({**FORM, "email": "not-an-email"}, ["email"], "value_error", id="bad-email"),
        pytest.param(
            {k: v for k, v in FORM.items() if k != "message"}, ["message"], "missing", id="missing"
        ),
        pytest.param({**FORM, "admin": True}, ["admin"], "extra_forbidden", id="extra"),
        pytest.param({**FORM, "name": "   "}, ["name"], "string_too_short", id="blank-name"),
        pytest.param({**FORM, "name": 42}, ["name"], "string_type", id="wrong-type"),
        pytest.param([FORM], [], "dict_type", id="not-an-object"),
    ],
)
async def test_invalid_input_is_422_per_field(
    gateway: RunningGateway,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    payload: Any,
    loc: list[str],
    type_: str,
) -> None:
    """A client must learn which field is wrong and why, and nothing may be started."""
    response = await gateway.client.post("/submit", json=payload)
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["error"]
    assert [(f["loc"], f["type"]) for f in body["fields"]] == [(loc, type_)]
    assert all(f["message"] for f in body["fields"])
    assert await queued(channel, topology) == 0


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b'{"name": "Ada", ', "not valid JSON", id="truncated"),
        pytest.param(b"name=Ada&email=a@example.com", "not valid JSON", id="form-encoded"),
        pytest.param(b"", "empty", id="empty"),
    ],
)
async def test_malformed_body_is_400(
    gateway: RunningGateway,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    content: bytes,
    fragment: str,
) -> None:
    """A body that is not JSON gets a clear 400, not a 500, and starts nothing."""
    response = await gateway.client.post(
        "/submit", content=content, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400, response.text
    assert fragment in response.json()["error"]
    assert await queued(channel, topology) == 0


async def test_same_idempotency_key_same_body_gives_same_workflow(
    gateway: RunningGateway,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    pool: asyncpg.Pool[Any],
) -> None:
    """Retries with a key name one workflow (deterministically), and each retry is re-published
    so that a first attempt the broker never confirmed is healed; the orchestrator dedups."""
    key = f"order-{topology.namespace}"
    headers = {"Idempotency-Key": key}
    first = await gateway.client.post("/submit", json=FORM, headers=headers)
    # Equivalent after validation (whitespace is stripped): the same request.
    second = await gateway.client.post(
        "/submit", json={**FORM, "message": " Hello there "}, headers=headers
    )
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    workflow_id = first.json()["workflowId"]
    assert second.json()["workflowId"] == workflow_id
    assert workflow_id == workflow_id_for_key("formSubmission", key)

    starts = await started(channel, topology, 2)
    assert {s.workflow_id for s in starts} == {workflow_id}
    assert {s.idempotency_key for s in starts} == {key}
    assert len({s.message_id for s in starts}) == 2
    row = await pool.fetchrow(
        "SELECT workflow_id FROM idempotency_keys WHERE workflow_name = $1 AND key = $2",
        "formSubmission",
        key,
    )
    assert row is not None
    assert row["workflow_id"] == workflow_id


async def test_same_idempotency_key_different_body_is_409(
    gateway: RunningGateway, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """Reusing a key for another request must be refused, not silently mapped to the first."""
    headers = {"Idempotency-Key": f"k-{topology.namespace}"}
    first = await gateway.client.post("/submit", json=FORM, headers=headers)
    assert first.status_code == 202
    other = await gateway.client.post(
        "/submit", json={**FORM, "message": "Something else"}, headers=headers
    )
    assert other.status_code == 409, other.text
    assert "different request body" in other.json()["error"]
    assert first.json()["workflowId"] in other.json()["error"]
    assert len(await started(channel, topology, 1)) == 1
    assert await queued(channel, topology) == 0


async def test_invalid_idempotency_key_is_400(gateway: RunningGateway) -> None:
    """An oversized key cannot be stored or carried on the wire; say so up front."""
    response = await gateway.client.post(
        "/submit", json=FORM, headers={"Idempotency-Key": "k" * 201}
    )
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["error"]


async def test_unroutable_start_is_503_and_a_retry_with_the_key_heals_it(
    gateway: RunningGateway,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    registry: WorkflowRegistry,
) -> None:
    """No false accept: when the broker returns the mandatory message (no queue bound), the
    client gets 503, and retrying with the same key once routing is back starts the workflow."""
    await channel.queue_delete(topology.orchestrator_queue)
    headers = {"Idempotency-Key": f"heal-{topology.namespace}"}
    refused = await gateway.client.post("/submit", json=FORM, headers=headers)
    assert refused.status_code == 503, refused.text
    assert "same Idempotency-Key" in refused.json()["error"]
    assert refused.headers["retry-after"] == "1"

    await topology.declare(channel, registry.task_names())
    healed = await gateway.client.post("/submit", json=FORM, headers=headers)
    assert healed.status_code == 202, healed.text
    (start,) = await started(channel, topology, 1)
    assert start.workflow_id == healed.json()["workflowId"]


async def test_missing_exchange_is_503_and_the_gateway_recovers(
    gateway: RunningGateway,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    registry: WorkflowRegistry,
) -> None:
    """A publish to a missing exchange makes the broker close the publishing channel: that must
    be a 503, and later requests must work again once the exchange is back."""
    await channel.exchange_delete(topology.exchange)
    refused = await gateway.client.post("/submit", json=FORM)
    assert refused.status_code == 503, refused.text

    await topology.declare(channel, registry.task_names())
    accepted = await gateway.client.post("/submit", json=FORM)
    assert accepted.status_code == 202, accepted.text
    (start,) = await started(channel, topology, 1)
    assert start.workflow_id == accepted.json()["workflowId"]


@pytest.mark.parametrize(
    ("path", "payload", "loc"),
    [
        pytest.param("/submit", {**FORM, "name": "Ada\u0000Lovelace"}, ["name"], id="submit"),
        pytest.param(
            "/workflows/formSubmission", {**FORM, "message": "hi\u0000"}, ["message"], id="named"
        ),
        pytest.param(
            "/workflows/freeform", {"data": {"a\u0000b": 1}}, ["data", "a\u0000b"], id="key"
        ),
        pytest.param(
            "/workflows/freeform",
            {"data": {"list": [1, {"deep": "\u0000"}]}},
            ["data", "list", 1, "deep"],
            id="deep",
        ),
    ],
)
async def test_text_postgresql_cannot_store_is_422_naming_the_field(
    gateway_plus: RunningGateway,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    path: str,
    payload: dict[str, Any],
    loc: list[str | int],
) -> None:
    """No false accept: a NUL passes the input model but PostgreSQL cannot store it, so a 202
    would promise a workflow that is dead-lettered and never appears."""
    response = await gateway_plus.client.post(path, json=payload)
    assert response.status_code == 422, response.text
    body = response.json()
    assert [(field["loc"], field["type"]) for field in body["fields"]] == [(loc, "unstorable")]
    assert "NUL character (\\u0000), which cannot be stored" in body["fields"][0]["message"]
    assert "NUL" in body["error"]
    assert await queued(channel, topology) == 0


async def test_input_over_the_shared_limit_is_413(
    settings: Settings, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """One input limit, RELAYFLOW_MAX_INPUT_BYTES, for HTTP and the broker: an input over it is
    refused, and so is an input its model made larger than that (the orchestrator would
    dead-letter it: no false accept). The body's own limit is in test_gateway_limits.py."""
    async with running_gateway(
        settings, workflows=WITH_TEST_WORKFLOWS, max_input_bytes=1024
    ) as gateway:
        fits = await gateway.client.post("/submit", json={**FORM, "message": "m" * 800})
        assert fits.status_code == 202, fits.text
        large = await gateway.client.post("/submit", json={**FORM, "message": "m" * 1100})
        assert large.status_code == 413, large.text
        assert "the limit is 1024 (RELAYFLOW_MAX_INPUT_BYTES)" in large.json()["error"]
        padded = await gateway.client.post("/workflows/padded", json={})
        assert padded.status_code == 413, padded.text
        assert "RELAYFLOW_MAX_INPUT_BYTES" in padded.json()["error"]
    assert len(await started(channel, topology, 1)) == 1
    assert await queued(channel, topology) == 0


@pytest.mark.parametrize(
    "content_type",
    [
        pytest.param("text/plain", id="text-plain"),
        pytest.param("text/plain; charset=utf-8", id="text-plain-charset"),
        pytest.param("application/x-www-form-urlencoded", id="form"),
        pytest.param("multipart/form-data; boundary=x", id="multipart"),
        pytest.param("application/jsonp", id="lookalike"),
        pytest.param(None, id="none"),
    ],
)
async def test_only_json_may_be_posted(
    gateway: RunningGateway,
    channel: aio_pika.abc.AbstractChannel,
    topology: Topology,
    content_type: str | None,
) -> None:
    """CSRF: a page on another origin may post these types without the browser asking first
    (no CORS preflight), so a valid JSON body in any of them must start nothing."""
    headers = {} if content_type is None else {"content-type": content_type}
    for path in ("/submit", "/workflows/formSubmission"):
        response = await gateway.client.post(
            path,
            content=b'{"name": "Ada", "email": "ada@example.com", "message": "hi"}',
            headers=headers,
        )
        assert response.status_code == 415, response.text
        assert "Content-Type: application/json" in response.json()["error"]
    assert await queued(channel, topology) == 0


async def test_json_with_parameters_and_any_case_is_json(
    gateway: RunningGateway, channel: aio_pika.abc.AbstractChannel, topology: Topology
) -> None:
    """The media type is what counts: a charset parameter or capitals do not make it another."""
    for content_type in ("application/json; charset=utf-8", "Application/JSON"):
        response = await gateway.client.post(
            "/submit",
            content=b'{"name": "Ada", "email": "ada@example.com", "message": "hi"}',
            headers={"content-type": content_type},
        )
        assert response.status_code == 202, (content_type, response.text)
    assert len(await started(channel, topology, 2)) == 2


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(b"order 42", id="inner-space"),
        pytest.param(b"!~" + b"k" * 198, id="200-visible"),
        pytest.param(b"a\tb", id="tab"),
        pytest.param("caf\u00e9".encode("latin-1"), id="latin-1"),
        pytest.param(b"\x85x", id="c1-control"),
        pytest.param(b"k" * 201, id="201"),
    ],
)
async def test_idempotency_key_is_refused_exactly_when_the_document_says(
    gateway: RunningGateway, key: bytes
) -> None:
    """Clients generated from the OpenAPI document must not be refused a key it allows (a tab,
    say, passed its old length-only schema), nor be allowed one the gateway refuses."""
    parameter = seed_document()["paths"]["/submit"]["post"]["parameters"][0]
    assert parameter["name"] == "Idempotency-Key"
    allowed = documented(seed_document(), parameter["schema"]).is_valid(key.decode("latin-1"))
    response = await gateway.client.post("/submit", json=FORM, headers={b"Idempotency-Key": key})
    assert response.status_code == (202 if allowed else 400), response.text
    if not allowed:
        assert "printable ASCII" in response.json()["error"]


@pytest.mark.parametrize(
    "email",
    [
        "ada@example.com",
        "ada@mail.example.org",
        "ada@example.test",
        "ada@host.LOCALHOST",
        "ada@x.onion",
        "ada@b.invalid",
    ],
)
async def test_email_is_refused_exactly_when_the_document_says(
    gateway: RunningGateway, email: str
) -> None:
    """The form's email is checked by email-validator, which refuses special-use domains such
    as `.test` that JSON Schema's `format: email` allows: the document must say so."""
    document = seed_document()
    ref = document["paths"]["/submit"]["post"]["requestBody"]["content"]["application/json"]
    allowed = documented(document, ref["schema"]).is_valid({**FORM, "email": email})
    response = await gateway.client.post("/submit", json={**FORM, "email": email})
    assert response.status_code == (202 if allowed else 422), response.text
    assert allowed == email.endswith((".com", ".org"))
