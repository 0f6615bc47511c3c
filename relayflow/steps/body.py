"""Calling one step body: its input parsed into the declared model, its return value encoded as
the JSON that will be stored, and anything that goes wrong turned into data (`ErrorInfo`)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from pydantic_core import PydanticSerializationError, to_jsonable_python

from relayflow import logs, tracing
from relayflow.contracts import (
    ErrorInfo,
    StepCommand,
    body_may_be_unstorable,
    describe_path,
    unstorable,
)
from relayflow.errors import StepError
from relayflow.steps.context import DbConnection, PublishFn, Reads, StepContext
from relayflow.steps.invocation import Outcome, Succeeded
from relayflow.steps.registry import StepDefinition

log = logging.getLogger(__name__)

_MAX_ERROR_TYPE = 200
_MAX_ERROR_MESSAGE = 4000


class OutputNotStorable(StepError):
    """The body returned an output PostgreSQL cannot store (a NUL character or a lone surrogate
    in a string or key, an integer beyond 64 bits). A re-run would return the same, so the
    invocation fails for good, here, rather than its result being refused downstream."""

    def __init__(self, message: str) -> None:
        super().__init__(message, non_retryable=True)


def encode_output(value: Any) -> Succeeded:
    """A body's return value as the JSON to store: models by alias, anything else as pydantic
    would. Raises `PydanticSerializationError` for what is not JSON, `OutputNotStorable` for
    JSON that PostgreSQL (or orjson, which encodes it for PostgreSQL) refuses."""
    data = (
        value.model_dump(mode="json", by_alias=True)
        if isinstance(value, BaseModel)
        else to_jsonable_python(value)
    )
    try:
        encoded = orjson.dumps(data)
    except orjson.JSONEncodeError as exc:  # lone surrogates, integers beyond 64 bits
        raise OutputNotStorable(
            _not_storable(data) or f"the output cannot be stored: {exc}"
        ) from exc
    # NUL is escaped in JSON text, so only an output whose encoding holds the escape needs a look.
    if body_may_be_unstorable(encoded) and (problem := _not_storable(data)):
        raise OutputNotStorable(problem)
    return Succeeded(encoded)


def _not_storable(data: Any) -> str | None:
    found = unstorable(data)
    if found is None:
        return None
    path, reason = found
    return f"the output cannot be stored: at {describe_path(path)}, it {reason}"


def error_from(exc: BaseException) -> ErrorInfo:
    """A step body's exception as data."""
    if isinstance(exc, StepError):
        return ErrorInfo(
            type=_storable(exc.type)[:_MAX_ERROR_TYPE],
            message=_storable(exc.message)[:_MAX_ERROR_MESSAGE],
            retryable=not exc.non_retryable,
        )
    return ErrorInfo(
        type=type(exc).__name__[:_MAX_ERROR_TYPE],
        message=_storable(str(exc) or repr(exc))[:_MAX_ERROR_MESSAGE],
        retryable=True,
    )


def _storable(text: str) -> str:
    """`text` with what PostgreSQL refuses (NUL, lone surrogates) written as visible escapes:
    an error that quotes a bad value must not itself be impossible to record."""
    if "\x00" in text:
        text = text.replace("\x00", "\\u0000")
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode(errors="backslashreplace").decode()
    return text


async def call(
    definition: StepDefinition,
    command: StepCommand,
    *,
    publish: PublishFn,
    connection: DbConnection | None = None,
    reads: Reads | None = None,
) -> Outcome:
    """Run the body of `definition` for `command`; `connection` for a transactional step.
    Every line logged meanwhile (the body's too) says which invocation it is about."""
    span = tracing.active(command.message_id) if tracing.on else None
    with (
        logs.bound(
            workflow_id=command.workflow_id,
            step=command.step_name,
            step_key=command.step_key,
            attempt=command.attempt,
        ),
        tracing.in_span(span),
    ):
        return await _call(definition, command, publish, connection, reads)


async def _call(
    definition: StepDefinition,
    command: StepCommand,
    publish: PublishFn,
    connection: DbConnection | None,
    reads: Reads | None,
) -> Outcome:
    try:
        # A map item's body takes the item as its input.
        raw = command.input if command.item_index is None else command.item
        value = definition.parse_input(raw)
    except ValidationError as exc:
        return ErrorInfo(
            type="InvalidInput", message=_storable(str(exc))[:_MAX_ERROR_MESSAGE], retryable=False
        )
    context: StepContext[Any] = StepContext(
        workflow_id=command.workflow_id,
        workflow_name=command.workflow_name,
        step_name=command.step_name,
        step_key=command.step_key,
        item_index=command.item_index,
        attempt=command.attempt,
        input=value,
        dependencies=command.dependencies,
        publish=publish,
        connection=connection,
        reads=reads,
    )
    try:
        return encode_output(await definition.function(context))
    except PydanticSerializationError as exc:
        return ErrorInfo(
            type="InvalidOutput",
            message=_storable(f"the step returned something that is not JSON: {exc}")[
                :_MAX_ERROR_MESSAGE
            ],
            retryable=False,
        )
    except Exception as exc:
        log.info(
            "step %s of %s failed on attempt %d: %r",
            command.step_name,
            command.workflow_id,
            command.attempt,
            exc,
        )
        return error_from(exc)
