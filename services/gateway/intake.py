"""Turning a request into a StartWorkflow: validation, the request hash and the workflow id.
Plain functions over plain data; the HTTP handler wraps them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from relayflow.contracts import StartWorkflow, new_message_id, new_workflow_id, workflow_id_for_key
from relayflow.workflow import WorkflowDefinition
from services.gateway.models import FieldError

MAX_KEY_LENGTH = 200


class InputError(Exception):
    """The request body cannot start the workflow; `status` is the HTTP answer."""

    def __init__(self, status: int, message: str, fields: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields


def parse_body(body: bytes) -> Any:
    if not body.strip():
        raise InputError(400, "the request body is empty; send the workflow input as JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(400, f"the request body is not valid JSON: {exc}") from exc


def field_errors(exc: ValidationError) -> list[FieldError]:
    return [
        FieldError(loc=list(error["loc"]), message=error["msg"], type=error["type"])
        for error in exc.errors(include_url=False, include_context=False)
    ]


def validate_input(definition: WorkflowDefinition, data: Any) -> dict[str, Any]:
    """The input as the workflow will see it (normalised by its model), or `InputError` 422."""
    if not isinstance(data, dict):
        raise InputError(
            422,
            f"the input of workflow {definition.name!r} must be a JSON object, "
            f"got {type(data).__name__ if data is not None else 'null'}",
            [FieldError(loc=[], message="Input should be a JSON object", type="dict_type")],
        )
    try:
        model: BaseModel = definition.input_model.model_validate(data)
    except ValidationError as exc:
        raise InputError(
            422, f"invalid input for workflow {definition.name!r}", field_errors(exc)
        ) from exc
    validated: dict[str, Any] = model.model_dump(mode="json")
    return validated


def request_hash(validated: dict[str, Any]) -> str:
    """What an idempotency key is bound to: the validated input, canonically serialised."""
    return hashlib.sha256(orjson.dumps(validated, option=orjson.OPT_SORT_KEYS)).hexdigest()


def check_idempotency_key(key: str | None) -> str | None:
    if key is None:
        return None
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InputError(
            400,
            f"the Idempotency-Key header must be 1 to {MAX_KEY_LENGTH} printable characters",
        )
    return key


@dataclass(frozen=True, slots=True)
class StartRequest:
    workflow_name: str
    input: dict[str, Any]
    idempotency_key: str | None
    workflow_id: str

    @classmethod
    def create(
        cls, workflow_name: str, validated: dict[str, Any], idempotency_key: str | None
    ) -> StartRequest:
        """With a key the id is derived from it, so every replica (and a direct publisher)
        agrees; without one it is new."""
        workflow_id = (
            new_workflow_id()
            if idempotency_key is None
            else workflow_id_for_key(workflow_name, idempotency_key)
        )
        return cls(workflow_name, validated, idempotency_key, workflow_id)

    def message(self) -> StartWorkflow:
        return StartWorkflow(
            message_id=new_message_id(),
            workflow_id=self.workflow_id,
            idempotency_key=self.idempotency_key,
            workflow_name=self.workflow_name,
            input=self.input,
        )
