"""The committed `schemas/asyncapi.yaml` is the broker contract other teams build against: it must
be exactly what the code generates, say what the topology, the message registry and MAY_SEND
say, and pass the AsyncAPI CLI's validation (the tool's own parser and rules, offline)."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
import yaml

from relayflow.amqp.senders import MAY_SEND, Role
from relayflow.contracts import MESSAGE_TYPES, OrchestratorInput, StepCommand, encode
from relayflow.contracts.asyncapi import (
    DEAD_LETTER_MESSAGE,
    DOCUMENT_FILENAME,
    FANOUT_KEY,
    ROUTES,
    build_document,
    current_schema_version,
    render,
    schema_versions,
)
from relayflow.topology import RESULT_KEY, START_KEY, Topology, step_key
from tests.contract.asyncapi_validation import (
    Sent,
    channel_errors,
    committed_document,
    in_document_namespace,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
COMMITTED = SCHEMAS / DOCUMENT_FILENAME
CLI = ROOT / "scripts" / "asyncapi"
DEFAULT = Topology(namespace="relayflow")


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_document()


def _resolve(document: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


def _message_types(document: dict[str, Any], operation: dict[str, Any]) -> set[str]:
    return {_resolve(document, m["$ref"])["$ref"].rsplit("/", 1)[1] for m in operation["messages"]}


def _operations(document: dict[str, Any], action: str) -> dict[str, dict[str, Any]]:
    return {k: op for k, op in document["operations"].items() if op["action"] == action}


# -- drift ---------------------------------------------------------------------------------------


def test_committed_document_matches_the_code(document: dict[str, Any]) -> None:
    """Other teams read the committed file; it must not drift from the code it describes."""
    assert COMMITTED.is_file(), "schemas/asyncapi.yaml is missing; run .venv/bin/relayflow-schemas"
    assert COMMITTED.read_text(encoding="utf-8") == render(document), (
        "schemas/asyncapi.yaml differs from the code; run `.venv/bin/relayflow-schemas` "
        "and review the diff"
    )


def test_the_yaml_reads_back_as_the_document(document: dict[str, Any]) -> None:
    """Our small YAML writer must mean what we built, as any YAML parser reads it."""
    assert yaml.safe_load(COMMITTED.read_text(encoding="utf-8")) == document


# -- what it says ------------------------------------------------------------------------------


def test_every_ref_resolves(document: dict[str, Any]) -> None:
    """A dangling reference breaks every generator; payloads point at the committed schemas."""
    for ref in _refs(document):
        if ref.startswith("#/"):
            _resolve(document, ref)
        else:
            assert (SCHEMAS / ref).is_file(), f"{ref} is not a committed file under schemas/"


def test_every_message_type_is_a_message_with_its_schema(document: dict[str, Any]) -> None:
    """Each message of the registry is documented, with its committed JSON Schema and the
    schemaVersions the code accepts in its header."""
    messages = document["components"]["messages"]
    assert set(messages) == {*MESSAGE_TYPES, DEAD_LETTER_MESSAGE}
    for name, model in MESSAGE_TYPES.items():
        message = messages[name]
        assert message["payload"] == {"$ref": f"{name}.schema.json"}
        assert message["contentType"] == "application/json"
        headers = message["headers"]["properties"]
        assert headers["x-schema-version"]["enum"] == list(schema_versions(model))
        assert current_schema_version(model) in schema_versions(model)
        assert "traceparent" in headers
        assert "traceparent" not in message["headers"].get("required", [])
        amqp = message["bindings"]["amqp"]
        assert amqp["messageType"] == name
        properties = amqp["x-amqp-properties"]["properties"]
        assert properties["content_type"] == {"const": "application/json"}
        assert properties["delivery_mode"]["const"] == (1 if ROUTES[name] == FANOUT_KEY else 2)
        assert {"message_id", "user_id"} <= set(properties)


def test_every_message_travels_on_a_channel(document: dict[str, Any]) -> None:
    """A message type that no channel carries would be documented but unreachable."""
    carried = {m for channel in document["channels"].values() for m in channel["messages"]}
    assert carried == set(document["components"]["messages"])


def test_every_may_send_pair_is_a_send_operation(document: dict[str, Any]) -> None:
    """Who may send what is MAY_SEND's to say: the document names every pair, and no other."""
    documented: set[tuple[str, str]] = set()
    for operation_id, operation in _operations(document, "send").items():
        role = operation.get("x-relayflow-role")
        if role is None:
            assert operation_id == "anyConsumerDeadLetters"
            continue
        for message_type in _message_types(document, operation):
            assert Role(role) in MAY_SEND[message_type], (operation_id, message_type)
            documented.add((message_type, role))
    assert documented == {(t, str(role)) for t, roles in MAY_SEND.items() for role in roles}


def test_starters_are_the_gateway_and_external_publishers(document: dict[str, Any]) -> None:
    """The start role is two parties to a reader: the gateway and any other program."""
    senders = _operations(document, "send")
    for message_type in ("StartWorkflow", "CancelWorkflow", "RetryWorkflow", "SignalWorkflow"):
        assert f"gatewaySends{message_type}" in senders
        assert f"externalPublisherSends{message_type}" in senders


def test_channel_addresses_and_bindings_match_the_topology(document: dict[str, Any]) -> None:
    """Every queue, binding and exchange the services declare is in the document, by the name
    and arguments the topology gives it."""
    channels = document["channels"]
    bindings = DEFAULT.queue_bindings(["{body}"])
    queues = {c["address"]: c for c in channels.values() if c["bindings"]["amqp"]["is"] == "queue"}
    keys = {
        c["address"]: c
        for c in channels.values()
        if c["bindings"]["amqp"]["is"] == "routingKey"
        and c["bindings"]["amqp"]["exchange"]["name"] == DEFAULT.exchange
    }
    assert set(queues) == {*bindings, DEFAULT.dead_letter_queue, None}
    assert set(keys) == {key for bound in bindings.values() for key in bound}
    for name, bound in bindings.items():
        amqp = queues[name]["bindings"]["amqp"]
        assert amqp["x-bindings"] == [
            {"exchange": DEFAULT.exchange, "routingKey": k} for k in bound
        ]
        assert amqp["x-arguments"] == dict(DEFAULT.work_queue_arguments())
        assert amqp["x-arguments"]["x-queue-type"] == "quorum"
        assert amqp["queue"]["durable"] is True
        for key in bound:
            exchange = keys[key]["bindings"]["amqp"]["exchange"]
            assert exchange == {**exchange, "type": "direct", "durable": True}
    fanouts = {
        c["bindings"]["amqp"]["exchange"]["name"]: c
        for c in channels.values()
        if c["bindings"]["amqp"].get("exchange", {}).get("type") == "fanout"
    }
    assert set(fanouts) == {DEFAULT.events_exchange, DEFAULT.dead_letter_exchange}
    events_queue = queues[None]["bindings"]["amqp"]
    assert events_queue["queue"]["exclusive"] is True
    assert events_queue["x-bindings"] == [{"exchange": DEFAULT.events_exchange, "routingKey": ""}]


def test_the_step_channels_are_parameterized_by_body(document: dict[str, Any]) -> None:
    """One command channel and queue per step body, spelled as the topology spells them."""
    channels = document["channels"]
    assert channels["stepRun"]["address"] == step_key("{body}") == "step.run.{body}"
    assert channels["stepQueue"]["address"] == DEFAULT.step_queue("{body}")
    for channel_id in ("stepRun", "stepQueue"):
        assert set(channels[channel_id]["parameters"]) == {"body"}


def test_each_message_reaches_the_queue_of_its_receiver(document: dict[str, Any]) -> None:
    """What is sent on a key must arrive where a receive operation expects it."""
    receivers = _operations(document, "receive")
    received: dict[str, set[str]] = {}
    for operation in receivers.values():
        channel = _resolve(document, operation["channel"]["$ref"])
        for binding in channel["bindings"]["amqp"]["x-bindings"]:
            key = binding["routingKey"]
            received.setdefault(key, set()).update(_message_types(document, operation))
    for message_type, key in ROUTES.items():
        assert message_type in received[key], f"{message_type} on {key!r} reaches no receiver"


def test_the_orchestrator_receives_what_it_decodes(document: dict[str, Any]) -> None:
    """The orchestrator queue's messages are exactly the orchestrator's input union."""
    (union, _field) = get_args(OrchestratorInput)
    inputs = {model.__name__ for model in get_args(union)}
    operation = document["operations"]["orchestratorReceivesOrchestratorQueue"]
    assert _message_types(document, operation) == inputs


def test_request_reply_pairs(document: dict[str, Any]) -> None:
    """StepCommand is answered by a StepResult, ExternalRequest by an ExternalReply at its
    replyTo: both sides of each pair say so."""
    operations = document["operations"]

    def reply_types(operation_id: str) -> set[str]:
        reply = operations[operation_id]["reply"]
        return {_resolve(document, m["$ref"])["$ref"].rsplit("/", 1)[1] for m in reply["messages"]}

    assert reply_types("orchestratorSendsStepCommand") == {"StepResult"}
    assert reply_types("stepServiceReceivesStepQueue") == {"StepResult"}
    assert reply_types("externalSystemReceivesExternalQueue") == {"ExternalReply"}
    address = operations["externalSystemReceivesExternalQueue"]["reply"]["address"]
    assert address["location"] == "$message.payload#/replyTo"
    for name in ("ExternalRequest", "ExternalReply"):
        correlation = document["components"]["messages"][name]["correlationId"]
        assert correlation["location"] == "$message.payload#/correlationId"


def test_broadcasts_are_transient_and_work_is_persistent(document: dict[str, Any]) -> None:
    """As the publisher sends them: events are not mandatory and not written to disk."""
    for operation_id, operation in _operations(document, "send").items():
        amqp = operation["bindings"]["amqp"]
        fanout = operation["channel"]["$ref"] == "#/channels/workflowEvents"
        assert amqp["deliveryMode"] == (1 if fanout else 2), operation_id
        assert amqp["mandatory"] is not fanout, operation_id


def test_names_follow_the_namespace() -> None:
    """The document is the topology's, not a copy of names: another namespace renames all."""
    other = build_document(Topology(namespace="acme"))
    channels = other["channels"]
    assert channels["orchestratorQueue"]["address"] == "acme.orchestrator"
    assert channels["workflowStart"]["address"] == START_KEY
    assert channels["workflowStart"]["bindings"]["amqp"]["exchange"]["name"] == "acme"
    assert channels["deadLetters"]["bindings"]["amqp"]["exchange"]["name"] == "acme.dlx"


# -- the AsyncAPI CLI ----------------------------------------------------------------------------

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed for the AsyncAPI CLI (tools/asyncapi)",
)


def _validate(path: Path) -> subprocess.CompletedProcess[str]:
    # The first run installs the CLI from tools/asyncapi/package-lock.json (about 1.5 minutes);
    # later ones reuse tools/asyncapi/node_modules and need no network.
    return subprocess.run(
        [
            str(CLI),
            "validate",
            str(path),
            "--fail-severity",
            "warn",
            "--diagnostics-format",
            "text",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )


@needs_node
@pytest.mark.timeout(660)
def test_asyncapi_cli_validates_the_document() -> None:
    """The AsyncAPI tools' own parser and rules accept it, external $refs included, with no
    warning (their `validate`, as CI runs it)."""
    result = _validate(COMMITTED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout, result.stdout


@needs_node
@pytest.mark.timeout(660)
def test_asyncapi_cli_rejects_a_broken_document(tmp_path: Path) -> None:
    """The validation above can fail: an operation naming a message its channel does not carry
    and a payload pointing at a missing schema are both reported."""
    for schema in SCHEMAS.glob("*.schema.json"):
        shutil.copy(schema, tmp_path / schema.name)
    broken = build_document()
    broken["operations"]["orchestratorReceivesOrchestratorQueue"]["messages"].append(
        {"$ref": "#/channels/stepQueue/messages/StepCommand"}
    )
    broken["components"]["messages"]["StepResult"]["payload"] = {"$ref": "Missing.schema.json"}
    path = tmp_path / DOCUMENT_FILENAME
    path.write_text(render(broken), encoding="utf-8")
    result = _validate(path)
    assert result.returncode != 0, result.stdout
    assert "Missing.schema.json" in result.stdout
    assert "asyncapi3-operation-messages-from-referred-channel" in result.stdout


# -- a message as it travelled, against its channel ----------------------------------------------


def _command_as_sent(**changes: Any) -> Sent:
    command = StepCommand(
        message_id="cmd:wf_1:validate:0:1",
        workflow_id="wf_1",
        workflow_name="formSubmission",
        step_name="validate",
        attempt=1,
        input={},
    )
    sent = Sent(
        exchange=DEFAULT.exchange,
        routing_key=step_key("validate"),
        properties={
            "message_id": command.message_id,
            "type": "StepCommand",
            "content_type": "application/json",
            "delivery_mode": 2,
        },
        headers={"x-schema-version": 1},
        body=encode(command),
    )
    return replace(sent, **changes)


def test_a_message_is_checked_against_its_own_channel() -> None:
    """What the e2e capture (tests/e2e/test_system.py) relies on: a message as relayflow sends
    it passes, and one on the wrong channel, with a body its channel does not say, a header or
    a property out of its schema, or an exchange the document does not know, fails, each saying
    why."""
    document = committed_document()
    assert channel_errors(document, _command_as_sent()) == ("stepRun", "StepCommand", [])
    wrong_channel = channel_errors(document, _command_as_sent(routing_key=RESULT_KEY))
    assert wrong_channel[2] == ["channel stepResult carries StepResult, not StepCommand"]
    other_body = channel_errors(document, _command_as_sent(routing_key=step_key("persist")))
    assert other_body[2] == [
        "routing key 'step.run.persist', but the payload says 'step.run.validate'"
    ]
    (header,) = channel_errors(document, _command_as_sent(headers={"x-schema-version": 7}))[2]
    assert header.startswith("header x-schema-version: 7 is not one of")
    unnamed = {k: v for k, v in _command_as_sent().properties.items() if k != "message_id"}
    (prop,) = channel_errors(document, _command_as_sent(properties=unnamed))[2]
    assert "'message_id' is a required property" in prop
    broken = orjson.loads(_command_as_sent().body) | {"attempt": 0}
    (payload,) = channel_errors(document, _command_as_sent(body=orjson.dumps(broken)))[2]
    assert payload.startswith("payload attempt: 0 is less than the minimum")
    assert channel_errors(document, _command_as_sent(exchange="elsewhere"))[2] == [
        "no channel of the document is 'step.run.validate' on exchange 'elsewhere'"
    ]
    assert in_document_namespace("e_1234.events", "e_1234") == "relayflow.events"
