"""The committed JSON Schemas under `schemas/` are the wire contract: they must match the models,
accept every message the models encode, and reject what `decode` rejects."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest

from relayflow.contracts import (
    MESSAGE_TYPES,
    BaseMessage,
    CancelWorkflow,
    ErrorInfo,
    EventType,
    ExternalReply,
    ExternalRequest,
    RetryWorkflow,
    SignalWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
    WorkflowEvent,
    WorkflowEventBatch,
    decode,
    encode,
    new_message_id,
    new_workflow_id,
    workflow_id_for_key,
)
from relayflow.contracts.export import rendered_schemas, stale_files
from tests.contract.schema_validation import (
    SCHEMA_DIRECTORY,
    schema_errors,
    validate_wire_message,
    validator_for,
)

WORKFLOW_ID = new_workflow_id()
NOW = datetime(2025, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def _examples() -> list[BaseMessage]:
    common: dict[str, Any] = {"message_id": new_message_id(), "workflow_id": WORKFLOW_ID}
    return [
        StartWorkflow(**common, workflow_name="form_submission", input={"email": "a@b.example"}),
        StartWorkflow(
            message_id=new_message_id(),
            workflow_id=workflow_id_for_key("form_submission", "key-1"),
            idempotency_key="key-1",
            created_at=NOW,
            workflow_name="form_submission",
            input={},
        ),
        StepCommand(
            **common,
            workflow_name="form_submission",
            step_name="validate",
            step_key="item-3",
            attempt=2,
            input={"nested": {"list": [1, 2.5, None, "x"]}},
            dependencies={"fetch": {"ok": True}},
        ),
        StepResult(
            **common,
            step_name="validate",
            attempt=1,
            status=StepResultStatus.SUCCEEDED,
            output=[1, "two", {"three": 3}],
            started_at=NOW,
            finished_at=NOW,
        ),
        StepResult(
            **common,
            step_name="charge",
            attempt=3,
            status=StepResultStatus.FAILED,
            error=ErrorInfo(type="CardDeclined", message="declined", retryable=False),
        ),
        ExternalRequest(
            **common, correlation_id="corr-1", reply_to="external.reply", payload={"q": 1}
        ),
        ExternalReply(**common, correlation_id="corr-1", payload={"answer": 42}),
        WorkflowEvent(
            **common, seq=1, event=EventType.WORKFLOW_STARTED, workflow_name="form_submission"
        ),
        WorkflowEvent(
            **common,
            seq=7,
            event=EventType.STEP_FAILED,
            workflow_name="form_submission",
            step_name="charge",
            data={"error": {"type": "Timeout", "message": "slow", "retryable": True}},
        ),
        WorkflowEventBatch(
            message_id=new_message_id(),
            events=[
                WorkflowEvent(
                    **common, seq=2, event=EventType.STEP_STARTED, workflow_name="form_submission"
                ),
                WorkflowEvent(
                    message_id=new_message_id(),
                    workflow_id="wf_other",
                    seq=9,
                    event=EventType.WORKFLOW_COMPLETED,
                    workflow_name="form_submission",
                    data={"output": {"ok": True}},
                ),
            ],
        ),
        CancelWorkflow(**common, reason="no longer needed"),
        RetryWorkflow(**common),
        SignalWorkflow(**common, signal_name="decision", payload={"approved": True}, sent_by="ada"),
    ]


EXAMPLES = _examples()


def _wire(message: BaseMessage) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(encode(message))
    return document


def test_committed_schemas_match_the_models() -> None:
    """Changing a model without regenerating the schemas would silently break other consumers."""
    stale = stale_files(SCHEMA_DIRECTORY)
    assert not stale, (
        f"schemas out of date: {', '.join(stale)}; run `.venv/bin/relayflow-schemas` "
        "from the repository root and commit the result"
    )


def test_every_message_type_has_a_schema_and_no_orphans() -> None:
    """A schema for a removed message type would mislead consumers into producing it."""
    expected = set(rendered_schemas())
    committed = {path.name for path in SCHEMA_DIRECTORY.glob("*.schema.json")}
    assert committed == expected


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_schemas_are_valid_draft_2020_12(message_type: str) -> None:
    """A malformed schema would make every downstream validator useless or crash."""
    schema = validator_for(message_type).schema
    assert isinstance(schema, Mapping), "an object schema, not a boolean one"
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{message_type}.schema.json")
    assert schema["title"] == message_type
    assert schema["description"]
    assert "type" in schema["required"]


def test_examples_cover_every_message_type() -> None:
    """Each schema must be exercised by at least one real message."""
    assert {type(message).__name__ for message in EXAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_encoded_messages_match_their_schema(message: BaseMessage) -> None:
    """What our services publish must be accepted by anyone validating with the schemas."""
    body = encode(message)
    validate_wire_message(body)
    assert decode(body) == message


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_missing_required_field_is_rejected_by_schema_and_decode(message: BaseMessage) -> None:
    """Schema and decoder must agree that an incomplete message is invalid."""
    document = _wire(message)
    schema = validator_for(document["type"]).schema
    assert isinstance(schema, Mapping), "an object schema, not a boolean one"
    for field in schema["required"]:
        broken = {key: value for key, value in document.items() if key != field}
        assert schema_errors(broken), f"schema accepted a message without {field!r}"
        with pytest.raises(pydantic.ValidationError):
            decode(json.dumps(broken).encode())


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("wrong_type", ["Bogus", 7, None])
def test_wrong_type_is_rejected_by_schema_and_decode(message: BaseMessage, wrong_type: Any) -> None:
    """A message with an unknown or mismatched `type` must never be dispatched."""
    document = {**_wire(message), "type": wrong_type}
    assert schema_errors(document)
    with pytest.raises(pydantic.ValidationError):
        decode(json.dumps(document).encode())
    # Correct shape, but claiming to be another message type: each schema pins its `type`.
    own = type(message).__name__
    for other in MESSAGE_TYPES:
        if other != own:
            assert list(validator_for(own).iter_errors({**_wire(message), "type": other}))


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"workflowId": "has spaces"}, "workflow id pattern"),
        ({"attempt": 0}, "attempt starts at 1"),
        ({"createdAt": "yesterday"}, "timestamps are RFC 3339"),
        ({"schemaVersion": 2}, "unknown schema version"),
        ({"extraField": 1}, "unknown fields are rejected"),
        ({"status": "maybe"}, "status is an enum"),
        ({"error": {"type": "X"}}, "error needs a message"),
    ],
)
def test_invalid_values_are_rejected_by_schema_and_decode(
    change: dict[str, Any], reason: str
) -> None:
    """Constraints beyond presence (patterns, bounds, enums, formats) hold on both sides."""
    message = next(m for m in EXAMPLES if isinstance(m, StepResult))
    document = {**_wire(message), **change}
    assert schema_errors(document), f"schema accepted it, but {reason}"
    with pytest.raises(pydantic.ValidationError):
        decode(json.dumps(document).encode())


def test_validate_wire_message_explains_failures() -> None:
    """The helper other tests reuse must say what is wrong, not just fail."""
    document = _wire(EXAMPLES[0])
    del document["workflowId"]
    with pytest.raises(AssertionError, match="workflowId"):
        validate_wire_message(json.dumps(document).encode())
    with pytest.raises(AssertionError, match="not JSON"):
        validate_wire_message(b"\xff not json")
    with pytest.raises(AssertionError, match="no committed schema"):
        validate_wire_message(b'{"type": "Nope"}')


def test_schema_directory_is_the_repository_one() -> None:
    """The check must look at the committed files, wherever pytest is started from."""
    assert Path(__file__).resolve().parents[2] / "schemas" == SCHEMA_DIRECTORY
    assert (SCHEMA_DIRECTORY / "StartWorkflow.schema.json").is_file()
