"""Turning a request into a StartWorkflow (validation, the request hash and the workflow id) or
into a signal's payload. Plain functions over plain data; the HTTP handlers wrap them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from relayflow.contracts import (
    DEFAULT_TENANT,
    StartWorkflow,
    describe_path,
    encoded_size,
    new_message_id,
    new_workflow_id,
    unstorable,
    wire_tenant,
    workflow_id_for_key,
)
from relayflow.workflow import WorkflowDefinition
from services.gateway.checks import InputError
from services.gateway.models import FieldError

M = TypeVar("M", bound=BaseModel)


def parse_body(body: bytes, *, expected: str = "the workflow input") -> Any:
    if not body.strip():
        raise InputError(400, f"the request body is empty; send {expected} as JSON")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InputError(400, f"the request body is not valid JSON: {exc}") from exc


def field_errors(exc: ValidationError) -> list[FieldError]:
    return [
        FieldError(loc=list(error["loc"]), message=error["msg"], type=error["type"])
        for error in exc.errors(include_url=False, include_context=False)
    ]


def strictly(model: type[M], data: dict[str, Any]) -> M:
    """`data` (parsed JSON) validated as `model` takes JSON in strict mode: what the API document
    publishes for it (the model's JSON Schema) is what passes — `0` is not a boolean, `"3"` not
    an integer — while JSON's own spellings (a date as an ISO string, an enum's value) still do."""
    return model.model_validate_json(orjson.dumps(data), strict=True)


def validate_input(definition: WorkflowDefinition, data: Any, *, max_bytes: int) -> dict[str, Any]:
    """The input as the workflow will see it (normalised by its model), or `InputError`: 422 for
    what the model refuses or PostgreSQL could not store, 413 for what is over `max_bytes` as
    compact JSON (the limit the orchestrator applies to a start from the broker too)."""
    if not isinstance(data, dict):
        raise InputError(
            422,
            f"the input of workflow {definition.name!r} must be a JSON object, "
            f"got {type(data).__name__ if data is not None else 'null'}",
            [FieldError(loc=[], message="Input should be a JSON object", type="dict_type")],
        )
    try:
        model: BaseModel = strictly(definition.input_model, data)
    except ValidationError as exc:
        raise InputError(
            422, f"invalid input for workflow {definition.name!r}", field_errors(exc)
        ) from exc
    validated: dict[str, Any] = model.model_dump(mode="json")
    _check_storable(f"invalid input for workflow {definition.name!r}", validated)
    # The model may add defaults, so the stored input can be larger than the body was.
    size = encoded_size(validated)
    if size > max_bytes:
        raise InputError(
            413,
            f"the input of workflow {definition.name!r} is {size} bytes as compact JSON; "
            f"the limit is {max_bytes} (RELAYFLOW_MAX_INPUT_BYTES)",
        )
    return validated


def validate_payload(
    workflow_name: str,
    signal_name: str,
    model: type[BaseModel],
    data: Any,
    *,
    max_bytes: int,
) -> dict[str, Any]:
    """A signal's payload as the workflow will see it (normalised by the signal's model, by
    alias, so that the orchestrator's own check of it passes), or `InputError`: 422 naming the
    fields the model refuses or PostgreSQL could not store, 413 over `max_bytes`."""
    what = f"signal {signal_name!r} of workflow {workflow_name!r}"
    if not isinstance(data, dict):
        raise InputError(
            422,
            f"the payload of {what} must be a JSON object, "
            f"got {type(data).__name__ if data is not None else 'null'}",
            [FieldError(loc=[], message="Input should be a JSON object", type="dict_type")],
        )
    try:
        payload = strictly(model, data)
    except ValidationError as exc:
        fields = field_errors(exc)
        named = "; ".join(
            f"{describe_path(tuple(field.loc))}: {field.message}" for field in fields[:3]
        )
        raise InputError(422, f"invalid payload for {what}: {named}", fields) from exc
    validated: dict[str, Any] = payload.model_dump(mode="json", by_alias=True)
    _check_storable(f"invalid payload for {what}", validated)
    size = encoded_size(validated)
    if size > max_bytes:
        raise InputError(
            413,
            f"the payload of {what} is {size} bytes as compact JSON; the limit is {max_bytes} "
            "(RELAYFLOW_MAX_INPUT_BYTES)",
        )
    return validated


def _check_storable(problem: str, validated: dict[str, Any]) -> None:
    """Valid for the model is not enough: a 202 for text PostgreSQL refuses is a false accept."""
    found = unstorable(validated)
    if found is None:
        return
    path, reason = found
    raise InputError(
        422,
        f"{problem}: {describe_path(path)} {reason}",
        [FieldError(loc=list(path), message=reason, type="unstorable")],
    )


def request_hash(validated: dict[str, Any]) -> str:
    """What an idempotency key is bound to: the validated input, canonically serialised."""
    return hashlib.sha256(orjson.dumps(validated, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(frozen=True, slots=True)
class StartRequest:
    workflow_name: str
    input: dict[str, Any]
    idempotency_key: str | None
    workflow_id: str
    tenant: str = DEFAULT_TENANT

    @classmethod
    def create(
        cls,
        workflow_name: str,
        validated: dict[str, Any],
        idempotency_key: str | None,
        tenant: str = DEFAULT_TENANT,
    ) -> StartRequest:
        """With a key the id is derived from it (and the tenant), so every replica (and a
        direct publisher) agrees; without one it is new."""
        workflow_id = (
            new_workflow_id()
            if idempotency_key is None
            else workflow_id_for_key(workflow_name, idempotency_key, tenant)
        )
        return cls(workflow_name, validated, idempotency_key, workflow_id, tenant)

    def message(self) -> StartWorkflow:
        return StartWorkflow(
            message_id=new_message_id(),
            workflow_id=self.workflow_id,
            idempotency_key=self.idempotency_key,
            workflow_name=self.workflow_name,
            input=self.input,
            tenant=wire_tenant(self.tenant),
        )
