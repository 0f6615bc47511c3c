"""What a request carries besides its input — path, query, headers, content type — checked
before anything reads PostgreSQL or talks to the broker (the body's size and shape are
`services.gateway.limits`).

A value that can never be valid is refused at once with a status and a message naming it:

- a workflow id that does not match `WorkflowId` is a 400 on every route that takes one (never a
  lookup: PostgreSQL refuses NUL in text, and an event stream must not open, and then wait, for
  an id that cannot appear);
- a `Last-Event-ID` that is not a seq PostgreSQL's integer column can hold is a 400;
- a step or signal name in a path that no step or signal can have is a 400;
- an `Idempotency-Key` or `X-Relayflow-Sender` header that is not 1 to 200 printable ASCII
  characters (spaces only between others) is a 400;
- a POST whose Content-Type is not `application/json` is a 415. That is the CSRF guard: a page on
  another origin can send `text/plain`, a form or no body at all without asking, but not JSON —
  the browser asks first (CORS preflight), and the gateway grants no origin.

The OpenAPI document (`openapi.py`) is built from the same patterns and limits, so what it
promises and what is refused here cannot drift apart.
"""

from __future__ import annotations

import re
from typing import Final

import annotated_types
from pydantic import BaseModel, TypeAdapter
from starlette.requests import Request

from relayflow.contracts import CancelWorkflow, RetryWorkflow, SignalWorkflow, unstorable
from relayflow.contracts.messages import StepName, WorkflowId
from relayflow.workflow import VERSION_PATTERN
from services.gateway.models import FieldError

WORKFLOW_ID_PATTERN: Final[str] = TypeAdapter(WorkflowId).json_schema()["pattern"]
# Workflow names follow the step-name rule (`StartWorkflow.workflowName`).
WORKFLOW_NAME_PATTERN: Final[str] = TypeAdapter(StepName).json_schema()["pattern"]
MAX_KEY_LENGTH: Final = 200
# Printable ASCII, not starting or ending with a space: HTTP strips those spaces, so a key that
# had them would not be the key the client sent. (Non-ASCII header bytes have no agreed
# encoding, so they could not name the same key on every client either.)
IDEMPOTENCY_KEY_PATTERN: Final = rf"^[!-~](?:[ -~]{{0,{MAX_KEY_LENGTH - 2}}}[!-~])?$"
# `workflow_events.seq` is an integer column.
MAX_SEQ: Final = 2**31 - 1

IDEMPOTENCY_HEADER: Final = "Idempotency-Key"
# Who sends a signal, as the client says (until the gateway authenticates its callers).
SENDER_HEADER: Final = "X-Relayflow-Sender"
LAST_EVENT_ID_HEADER: Final = "Last-Event-ID"
LAST_EVENT_ID_QUERY: Final = "lastEventId"
JSON_MEDIA_TYPE: Final = "application/json"

_WORKFLOW_ID = re.compile(WORKFLOW_ID_PATTERN)
_WORKFLOW_NAME = re.compile(WORKFLOW_NAME_PATTERN)
# A definition's version, by the rule `define_workflow` applies.
_VERSION = re.compile(VERSION_PATTERN)
STEP_NAME_PATTERN: Final[str] = TypeAdapter(StepName).json_schema()["pattern"]
_STEP_NAME = re.compile(STEP_NAME_PATTERN)
_IDEMPOTENCY_KEY = re.compile(IDEMPOTENCY_KEY_PATTERN)
# ASCII digits only: str.isdigit() also takes "\u00b2" (which int() refuses) and "\u0661"
# (which it reads as 1).
_SEQ = re.compile(r"[0-9]{1,10}")
_SHOWN = 64


class InputError(Exception):
    """The request cannot be served as sent; `status` is the HTTP answer and `fields` says where
    the input was at fault. The app turns it into the JSON error body."""

    def __init__(self, status: int, message: str, fields: list[FieldError] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.fields = fields


def shown(value: str) -> str:
    """`value` for an error message: quoted, escaped, and cut short (a 60 KB id is not echoed)."""
    if len(value) <= _SHOWN:
        return repr(value)
    return f"{value[:_SHOWN]!r}… ({len(value)} characters)"


def _max_length(model: type[BaseModel], field: str) -> int:
    for rule in model.model_fields[field].metadata:
        if isinstance(rule, annotated_types.MaxLen):
            return rule.max_length
    raise LookupError(f"{model.__name__}.{field} declares no maximum length")


# The contract's limit, so that the gateway refuses what the orchestrator could not take.
MAX_REASON: Final = min(_max_length(CancelWorkflow, "reason"), _max_length(RetryWorkflow, "reason"))
# `SignalWorkflow.sentBy` is optional, so its limit is in the schema's non-null branch.
MAX_SENDER_LENGTH: Final[int] = next(
    branch["maxLength"]
    for branch in SignalWorkflow.model_json_schema(by_alias=True)["properties"]["sentBy"]["anyOf"]
    if "maxLength" in branch
)
# Printable ASCII like an idempotency key, for the same reasons.
SENDER_PATTERN: Final = rf"^[!-~](?:[ -~]{{0,{MAX_SENDER_LENGTH - 2}}}[!-~])?$"
_SENDER = re.compile(SENDER_PATTERN)


def workflow_id(raw: str) -> str:
    if _WORKFLOW_ID.fullmatch(raw):
        return raw
    raise InputError(
        400,
        f"{shown(raw)} is not a workflow id: an id is 1 to 128 characters of A-Z, a-z, 0-9, "
        "'_', '.', ':' and '-'",
    )


def is_workflow_name(raw: str) -> bool:
    return _WORKFLOW_NAME.fullmatch(raw) is not None


def is_version(raw: str) -> bool:
    return _VERSION.fullmatch(raw) is not None


def step_name(raw: str) -> str:
    """A step name in a path: one no step can have is a 400, like an impossible workflow id."""
    if _STEP_NAME.fullmatch(raw):
        return raw
    raise InputError(
        400,
        f"{shown(raw)} is not a step name: a name is a letter, then up to 63 letters, digits, "
        "'_' or '-'",
    )


def signal_name(raw: str) -> str:
    """A signal name in a path: signal names follow the step-name rule
    (`SignalWorkflow.signalName`), so one that breaks it is a 400, not a lookup."""
    if _STEP_NAME.fullmatch(raw):
        return raw
    raise InputError(
        400,
        f"{shown(raw)} is not a signal name: a name is a letter, then up to 63 letters, digits, "
        "'_' or '-'",
    )


def sender(request: Request) -> str | None:
    """Who sends a signal (`SignalWorkflow.sentBy`): the `X-Relayflow-Sender` header as given,
    or None without one. It is what the client says, shown in the history as such."""
    value = request.headers.get(SENDER_HEADER)
    if value is None or _SENDER.fullmatch(value):
        return value
    raise InputError(
        400,
        f"the {SENDER_HEADER} header must be 1 to {MAX_SENDER_LENGTH} printable ASCII "
        f"characters (spaces only between others), got {shown(value)}",
    )


def idempotency_key(request: Request) -> str | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None or _IDEMPOTENCY_KEY.fullmatch(key):
        return key
    raise InputError(
        400,
        f"the {IDEMPOTENCY_HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII "
        f"characters (spaces only between others), got {shown(key)}",
    )


def last_event_seq(request: Request) -> int | None:
    """Where a workflow's stream resumes: the header (what a reconnecting EventSource sends) or
    else the query parameter (what a page sets on its first connection). Each one given must be
    a seq, even the one that is not used."""
    given = (
        (LAST_EVENT_ID_HEADER, request.headers.get(LAST_EVENT_ID_HEADER)),
        (LAST_EVENT_ID_QUERY, request.query_params.get(LAST_EVENT_ID_QUERY)),
    )
    seqs = [_seq(name, raw) for name, raw in given if raw is not None]
    return seqs[0] if seqs else None


def _seq(name: str, raw: str) -> int:
    if _SEQ.fullmatch(raw) and int(raw) <= MAX_SEQ:
        return int(raw)
    raise InputError(
        400, f"{name} must be an event seq, an integer from 0 to {MAX_SEQ}, got {shown(raw)}"
    )


def action_reason(request: Request) -> str:
    """A cancel's or retry's `reason`: recorded in the event, so it must fit and be storable."""
    reason = request.query_params.get("reason", "")
    if len(reason) > MAX_REASON:
        detail = f"at most {MAX_REASON} characters, got {len(reason)}"
        raise _bad_reason(f"the reason is too long: {detail}", detail, "string_too_long")
    found = unstorable(reason)
    if found is not None:
        raise _bad_reason(f"the reason {found[1]}", found[1], "unstorable")
    return reason


def _bad_reason(message: str, detail: str, kind: str) -> InputError:
    field = FieldError(loc=["query", "reason"], message=detail, type=kind)
    return InputError(422, message, [field])


def require_json(request: Request) -> None:
    """Only JSON may be posted (any parameters, such as charset, are fine)."""
    declared = request.headers.get("content-type")
    media_type = (declared or "").split(";", 1)[0].strip().lower()
    if media_type == JSON_MEDIA_TYPE:
        return
    raise InputError(
        415,
        f"send the request as JSON with Content-Type: {JSON_MEDIA_TYPE}, not "
        f"{shown(declared) if declared else 'without a Content-Type'} (other types are refused "
        "so that pages on other sites cannot post here)",
    )
