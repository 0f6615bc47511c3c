"""The OpenAPI 3.1 document of the gateway's HTTP API, built from the same pydantic models that
validate requests and shape answers.

A copy is committed at `schemas/openapi.json`; regenerate it with

    .venv/bin/python -m services.gateway.openapi > schemas/openapi.json
"""

from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Any

import orjson
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from relayflow.auth import Action
from relayflow.contracts import DEFAULT_MAX_INPUT_BYTES, WorkflowEvent
from relayflow.errors import ConfigurationError
from relayflow.workflow import VERSION_PATTERN, WorkflowRegistry
from services.gateway import access, checks, oidc_signin, sessions, stream_tokens
from services.gateway.input_schema import NO_NUL, STORABLE_JSON, as_applied, storable_json
from services.gateway.models import (
    WORKFLOW_STATUSES,
    Accepted,
    ActionAccepted,
    ActionOptions,
    DeadLetterDetail,
    DeadLetterPage,
    ErrorBody,
    FeedReset,
    Health,
    ItemPage,
    Readiness,
    Redriven,
    RedriveRequest,
    SignalAccepted,
    SignalReceived,
    SignedIn,
    SignIn,
    SignOut,
    StepSleeping,
    StreamToken,
    StreamTokenRequest,
    UnknownWorkflow,
    WorkflowPage,
    WorkflowView,
)
from services.gateway.settings import GatewaySettings, resolve_submit_workflow
from services.gateway.workflows import (
    CURSOR_PATTERN,
    DEFAULT_ITEMS,
    FIRST_ITEMS,
    ITEM_STATUSES,
    MAX_ITEM_INDEX,
    MAX_ITEMS,
    MAX_PAGE,
)

REF = "#/components/schemas/{model}"

_IDEMPOTENCY_KEY = {
    "name": checks.IDEMPOTENCY_HEADER,
    "in": "header",
    "required": False,
    "description": (
        "Makes retries safe: the same key always names the same workflow id. The same key with "
        "the same body publishes again and answers 202 with that id (the orchestrator starts an "
        "id once); the same key with a different body is refused with 409. 1 to "
        f"{checks.MAX_KEY_LENGTH} printable ASCII characters, spaces only between others."
    ),
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": checks.MAX_KEY_LENGTH,
        "pattern": checks.IDEMPOTENCY_KEY_PATTERN,
    },
}
_LIMITS = GatewaySettings.model_fields
_TOO_LARGE = (
    f"The body is larger than {_LIMITS['max_body_bytes'].default} bytes (RELAYFLOW_MAX_BODY_BYTES, "
    "the default), refused as it arrives; or the {input} as compact JSON is larger than "
    f"{DEFAULT_MAX_INPUT_BYTES} bytes (RELAYFLOW_MAX_INPUT_BYTES, the default; a start from the "
    "broker has the same limit)."
)
_JSON_LIMITS = (
    f"the JSON nests deeper than {_LIMITS['max_json_depth'].default} objects and arrays "
    f"(RELAYFLOW_MAX_JSON_DEPTH) or holds a string or key longer than "
    f"{_LIMITS['max_string_length'].default} characters (RELAYFLOW_MAX_STRING_LENGTH) (the "
    "defaults)"
)
_JSON_ONLY = (
    "The body must be sent as `Content-Type: application/json` (parameters such as charset are "
    "fine); anything else is refused with 415, so that pages on other sites cannot post here."
)


def _json(ref: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ref}}}


def _start_operation(
    name: str, input_ref: dict[str, Any], error_ref: dict[str, Any], accepted: dict[str, Any]
) -> dict[str, Any]:
    return {
        "operationId": f"start_{name}",
        "summary": f"Start a {name} workflow",
        "description": (
            "Validates the body against the workflow's input model and publishes a StartWorkflow "
            "with publisher confirms and mandatory routing. 202 only once the broker confirmed. "
            + _JSON_ONLY
        ),
        "tags": ["workflows"],
        "parameters": [_IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {"application/json": {"schema": input_ref}}},
        "responses": {
            "202": _json(accepted, "Accepted: the broker confirmed the StartWorkflow."),
            "400": _json(error_ref, "The body is not JSON, or the Idempotency-Key is invalid."),
            "409": _json(error_ref, "The Idempotency-Key was used with a different body."),
            "413": _json(error_ref, _TOO_LARGE.format(input="input")),
            "415": _json(error_ref, "The body was not sent as application/json."),
            "422": _json(
                error_ref,
                "The input does not validate, holds text PostgreSQL cannot store (NUL in a "
                f"string or key), or {_JSON_LIMITS}; `fields` says where and why.",
            ),
            "503": _json(
                error_ref,
                "The broker did not confirm the start (error, nack, timeout or unroutable); "
                "retry, with the same Idempotency-Key if one was sent.",
            ),
        },
    }


def _signal_operation(
    workflow_id: dict[str, Any],
    signal_name: dict[str, Any] | None,
    body: dict[str, Any],
    error_ref: dict[str, Any],
    accepted: dict[str, Any],
) -> dict[str, Any]:
    """`POST /workflows/{workflowId}/signals/{signalName}`: with `signal_name` the templated
    route, else the route of one declared signal name (its body that signal's model)."""
    return {
        "summary": "Send a named signal to a running workflow",
        "description": (
            "The body is the signal's payload, validated against the model the workflow's "
            "definition declares for that signal (the payload sent is the one the model "
            "normalised). Publishes a SignalWorkflow to the main exchange with routing key "
            "`workflow.signal` (confirmed, mandatory); 202 only once the broker confirmed. The "
            "orchestrator applies it once and emits `signal.received` (data `SignalReceived`); "
            "a wait step for that signal takes it, else it is kept for the next one (`mailbox` "
            "of GET /workflows/{workflowId}). `sentBy` is the `X-Relayflow-Sender` header as "
            "the client gives it, or null: the gateway does not authenticate callers yet. "
            "With an Idempotency-Key the signal id is derived from the key, workflow and "
            "signal, so a resend is the same message; the same key with another payload or "
            "sender is a 409. " + _JSON_ONLY
        ),
        "tags": ["workflows"],
        "parameters": [
            workflow_id,
            *([signal_name] if signal_name is not None else []),
            {
                **_IDEMPOTENCY_KEY,
                "description": (
                    "The same key names the same signal (`signalId`): the same request again "
                    "publishes the same message, which counts once; another payload or sender "
                    f"under the key is a 409. 1 to {checks.MAX_KEY_LENGTH} printable ASCII "
                    "characters, spaces only between others."
                ),
            },
            {
                "name": checks.SENDER_HEADER,
                "in": "header",
                "required": False,
                "description": (
                    "Who sends the signal, recorded as `sentBy` in the `signal.received` event "
                    "as given (not authenticated); null without it. 1 to "
                    f"{checks.MAX_SENDER_LENGTH} printable ASCII characters, spaces only "
                    "between others (400 otherwise)."
                ),
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": checks.MAX_SENDER_LENGTH,
                    "pattern": checks.SENDER_PATTERN,
                },
            },
        ],
        "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
        "responses": {
            "202": _json(accepted, "Accepted: the broker confirmed the SignalWorkflow."),
            "400": _json(
                error_ref,
                "The workflow id or the signal name does not match its pattern, the "
                "Idempotency-Key or X-Relayflow-Sender is invalid (or, with a workflow id and "
                "signal name near their limits, too long to derive a signal id from), or the "
                "body is empty or not JSON.",
            ),
            "404": _json(
                error_ref,
                "No workflow with this id, or its definition declares no such signal (the "
                "error names those it declares), or this gateway does not serve its definition.",
            ),
            "409": _json(
                error_ref,
                "The workflow is finished (completed, failed, cancelled, compensated…: it takes no "
                "more signals), or the "
                "Idempotency-Key was used with another payload or sender.",
            ),
            "413": _json(error_ref, _TOO_LARGE.format(input="payload")),
            "415": _json(error_ref, "The body was not sent as application/json."),
            "422": _json(
                error_ref,
                "The payload does not validate against the signal's model, holds text "
                f"PostgreSQL cannot store, or {_JSON_LIMITS}; `fields` says where and why.",
            ),
            "503": _json(
                error_ref,
                "The broker did not confirm the signal; retry, with the same Idempotency-Key "
                "if one was sent. Or the workflow was accepted moments ago and its start is not "
                "applied yet (the request waited 5 s for it); retry after Retry-After.",
            ),
        },
    }


def _declared_signals(registry: WorkflowRegistry) -> dict[str, list[tuple[str, type[BaseModel]]]]:
    """Each signal name any workflow declares, with the workflows and models that declare it."""
    found: dict[str, list[tuple[str, type[BaseModel]]]] = {}
    for definition in sorted(registry, key=lambda d: d.name):
        for name, model in sorted(definition.signals.items()):
            found.setdefault(name, []).append((definition.name, model))
    return dict(sorted(found.items()))


def build_openapi(
    registry: WorkflowRegistry, *, submit_workflow: str | None = None
) -> dict[str, Any]:
    """The document for `registry`; `submit_workflow` is the gateway's `gateway_submit_workflow`
    setting (None: unset), and `/submit` is in the document when that turns it on. A setting
    that names no workflow of `registry` raises `ConfigurationError`, as the gateway does."""
    signals = _declared_signals(registry)
    signal_models = list(
        dict.fromkeys(model for declared in signals.values() for _, model in declared)
    )
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = list(
        dict.fromkeys(
            [
                *((definition.input_model, "validation") for definition in registry),
                *((model, "validation") for model in signal_models),
                (ActionOptions, "validation"),
                (SignIn, "validation"),
                (SignOut, "validation"),
                (StreamTokenRequest, "validation"),
                (RedriveRequest, "validation"),
            ]
        )
    )
    answers: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "serialization")
        for model in (
            Accepted,
            ActionAccepted,
            ErrorBody,
            WorkflowView,
            WorkflowPage,
            ItemPage,
            Health,
            Readiness,
            WorkflowEvent,
            UnknownWorkflow,
            FeedReset,
            SignalAccepted,
            SignalReceived,
            StepSleeping,
            SignedIn,
            StreamToken,
            DeadLetterPage,
            DeadLetterDetail,
            Redriven,
        )
    ]
    refs, defs = models_json_schema([*inputs, *answers], by_alias=True, ref_template=REF)
    schemas = _inputs_as_applied(defs.get("$defs", {}), [refs[key] for key in inputs])

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        return dict(refs[(model, mode)])

    error_ref = ref(ErrorBody)
    accepted = ref(Accepted)
    paths: dict[str, Any] = {}

    submits = resolve_submit_workflow(submit_workflow, registry)
    form = registry.get(submits) if submits else None
    if form is not None:
        operation = _start_operation(
            form.name, ref(form.input_model, "validation"), error_ref, accepted
        )
        operation["operationId"] = "submit_form"
        operation["summary"] = f"Submit the contact form (starts {form.name})"
        paths["/submit"] = {"post": operation}
    for definition in sorted(registry, key=lambda d: d.name):
        post = _start_operation(
            definition.name, ref(definition.input_model, "validation"), error_ref, accepted
        )
        post["responses"]["404"] = _json(error_ref, "No workflow with this name.")
        paths[f"/workflows/{definition.name}"] = {"post": post}

    workflow_id = {
        "name": "workflowId",
        "in": "path",
        "required": True,
        "description": (
            "A workflow id. One that does not match the pattern can name no workflow: 400 on "
            "every route, before anything is looked up (404 is for a valid id that is unknown)."
        ),
        "schema": {"type": "string", "pattern": checks.WORKFLOW_ID_PATTERN},
    }
    bad_id = _json(error_ref, "The workflow id does not match its pattern.")
    paths["/workflows/{workflowId}"] = {
        "get": {
            "operationId": "get_workflow",
            "summary": "A workflow's state, steps in definition order",
            "description": (
                'Each step is a `StepView`; a map step (`kind` "map") is a `MapStepView`, '
                f"which adds its `progress` and its first {FIRST_ITEMS} `items` in item order, "
                "with `itemsNext`, the URL of the items after them (null when there are none). "
                "`signals` names the signals its definition declares (what "
                "POST /workflows/{workflowId}/signals/{signalName} takes) and `mailbox` counts, "
                "by name, the signals kept until a wait takes them."
            ),
            "tags": ["workflows"],
            "parameters": [workflow_id],
            "responses": {
                "200": _json(ref(WorkflowView), "The workflow as last committed."),
                "400": bad_id,
                "404": _json(error_ref, "No workflow with this id."),
            },
        }
    }
    paths["/workflows/{workflowId}/steps/{stepName}/items"] = {
        "get": {
            "operationId": "step_items",
            "summary": "A map step's items, in item order, page by page",
            "description": (
                "Keyset pagination by item index: each page's `next` is the URL of the following "
                "one (it keeps `status` and `limit`), null on the last; items that change status "
                "meanwhile never shift a page. A parameter that is given must be valid. Only a "
                "map step has items: any other step of the workflow is a 404, as is a step the "
                "workflow does not have."
            ),
            "tags": ["workflows"],
            "parameters": [
                workflow_id,
                {
                    "name": "stepName",
                    "in": "path",
                    "required": True,
                    "description": "A step of the workflow; a name no step can have is a 400.",
                    "schema": {"type": "string", "pattern": checks.STEP_NAME_PATTERN},
                },
                {
                    "name": "after",
                    "in": "query",
                    "required": False,
                    "description": "Items after this index (left out: from the first).",
                    "schema": {"type": "integer", "minimum": 0, "maximum": MAX_ITEM_INDEX},
                },
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "description": "Only the items with this status.",
                    "schema": {"type": "string", "enum": list(ITEM_STATUSES)},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_ITEMS,
                        "default": DEFAULT_ITEMS,
                    },
                },
            ],
            "responses": {
                "200": _json(ref(ItemPage), "A page of items."),
                "400": _json(
                    error_ref,
                    "The workflow id or the step name does not match its pattern, or a "
                    "parameter cannot be used; the error says which.",
                ),
                "404": _json(
                    error_ref,
                    "No workflow with this id, no such step in it, or the step is not a map "
                    "(only a map step has items).",
                ),
            },
        }
    }
    # The `data` of the events whose data has a fixed shape of its own, by event type.
    event_data = {"signal.received": ref(SignalReceived), "step.sleeping": ref(StepSleeping)}
    seq = {"type": "integer", "minimum": 0, "maximum": checks.MAX_SEQ}
    paths["/workflows/{workflowId}/events"] = {
        "get": {
            "operationId": "workflow_events",
            "summary": "The workflow's events as Server-Sent Events",
            "description": (
                "Replays the stored events after `Last-Event-ID` (or `lastEventId`), then follows "
                "live ones: each SSE event has `id` = the event's seq, `event` = its type and "
                "`data` = the WorkflowEvent JSON (schema `WorkflowEvent`). Every seq arrives once, "
                "in order. A map step's events: `step.started` (data `items`, the total), "
                "`step.progress` (data total, completed, failed, running; about once per "
                "hundredth of the items), `step.item.retrying` and `step.item.failed` (with the "
                "item's `stepKey`; data attempt, error and, when retrying, nextAttemptAt) and "
                "`step.completed` (data total, completed, failed, running). A sleep step sends "
                "`step.sleeping` (data attempt, wakeAt: schema `StepSleeping`); a signal that "
                "reached the workflow is a `signal.received` (data signal, payload, sentBy, "
                "signalId: schema `SignalReceived`); `x-event-data` names the schema of these "
                "events' `data`. The stream ends "
                "after the terminal event (`workflow.completed`, `workflow.failed` or "
                "`workflow.cancelled`) unless later events follow it (a "
                "retried workflow goes on with `workflow.retried`); a reconnect whose "
                "Last-Event-ID is at or past the terminal event of a finished workflow is "
                "answered 204, which makes browsers stop reconnecting. For a "
                "workflow id nobody knows yet, the stream waits (30 s by default, "
                "RELAYFLOW_GATEWAY_UNKNOWN_WORKFLOW_WAIT) for it to start, then sends one "
                "`workflow.unknown` event (schema `UnknownWorkflow`, no `id`) and ends. Comment "
                "pings keep the connection alive. Every parameter is checked before the stream "
                "opens: a bad one is a 400, never a stream that is cut."
            ),
            "tags": ["workflows"],
            "parameters": [
                workflow_id,
                {
                    "name": checks.LAST_EVENT_ID_HEADER,
                    "in": "header",
                    "required": False,
                    "description": (
                        f"Resume after this seq (it wins over {checks.LAST_EVENT_ID_QUERY})."
                    ),
                    "schema": seq,
                },
                {
                    "name": checks.LAST_EVENT_ID_QUERY,
                    "in": "query",
                    "required": False,
                    "description": "Resume after this seq (for clients that cannot set headers).",
                    "schema": seq,
                },
                _stream_token('this workflow (`{"workflowId": …}`)'),
            ],
            "responses": {
                "200": {
                    "description": "An event stream.",
                    "content": {
                        "text/event-stream": {
                            "schema": SSE_EVENT,
                            "x-event-schema": {"oneOf": [ref(WorkflowEvent), ref(UnknownWorkflow)]},
                            "x-event-data": event_data,
                        }
                    },
                },
                "204": {"description": "The client has seen the end of a finished workflow."},
                "400": _json(
                    error_ref,
                    "The workflow id does not match its pattern, or Last-Event-ID (lastEventId) "
                    "is not a seq.",
                ),
            },
        }
    }
    for action, applies in (("cancel", "a running"), ("retry", "a failed or cancelled")):
        paths[f"/workflows/{{workflowId}}/{action}"] = {
            "post": {
                "operationId": f"{action}_workflow",
                "summary": f"{action.capitalize()} {applies} workflow",
                "description": (
                    f"Publishes a {'CancelWorkflow' if action == 'cancel' else 'RetryWorkflow'} "
                    "to the main exchange with routing key `workflow.control` (confirmed, "
                    "mandatory); the orchestrator applies it once and emits "
                    f"`workflow.{'cancelled' if action == 'cancel' else 'retried'}`. With an "
                    "Idempotency-Key the message id is derived from it, so a repeated request is "
                    "the same message. The body is `{}` (no options are defined yet). " + _JSON_ONLY
                ),
                "tags": ["workflows"],
                "parameters": [
                    workflow_id,
                    {
                        **_IDEMPOTENCY_KEY,
                        "description": (
                            "The same key sends the same message. 1 to "
                            f"{checks.MAX_KEY_LENGTH} printable ASCII characters, spaces only "
                            "between others."
                        ),
                    },
                    {
                        "name": "reason",
                        "in": "query",
                        "required": False,
                        "description": (
                            f"Recorded in the event's data; at most {checks.MAX_REASON} "
                            "characters and no NUL (422 otherwise, never cut short)."
                        ),
                        "schema": {
                            "type": "string",
                            "maxLength": checks.MAX_REASON,
                            "pattern": NO_NUL,
                        },
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(ActionOptions, "validation")}},
                },
                "responses": {
                    "202": _json(ref(ActionAccepted), "The broker confirmed the message."),
                    "400": _json(
                        error_ref,
                        "The workflow id does not match its pattern, the Idempotency-Key is "
                        "invalid, or the body is empty or not JSON.",
                    ),
                    "404": _json(error_ref, "No workflow with this id."),
                    "409": _json(error_ref, f"Only {applies} workflow can be {action}ed."),
                    "413": _json(error_ref, "The body is too large to be `{}`."),
                    "415": _json(error_ref, "The request was not sent as application/json."),
                    "422": _json(
                        error_ref,
                        "The reason is too long or holds NUL, or the body is not `{}`; `fields` "
                        "says which.",
                    ),
                    "503": _json(error_ref, "The broker did not confirm; retry."),
                },
            }
        }
    signal_accepted = ref(SignalAccepted)
    any_signal = _signal_operation(
        workflow_id,
        {
            "name": "signalName",
            "in": "path",
            "required": True,
            "description": (
                "A signal the workflow's definition declares (`signals` of GET "
                "/workflows/{workflowId}); a name no signal can have is a 400."
            ),
            "schema": {"type": "string", "pattern": checks.STEP_NAME_PATTERN},
        },
        {
            "type": "object",
            "description": (
                "The payload: a JSON object that the workflow's model for this signal validates "
                "(each declared signal name has its own path below with that model)."
            ),
        },
        error_ref,
        signal_accepted,
    )
    any_signal["operationId"] = "signal_workflow"
    paths["/workflows/{workflowId}/signals/{signalName}"] = {"post": any_signal}
    for signal, declared in signals.items():
        models = list(dict.fromkeys(model for _, model in declared))
        refs_of = [ref(model, "validation") for model in models]
        body = refs_of[0] if len(refs_of) == 1 else {"anyOf": refs_of}
        operation = _signal_operation(workflow_id, None, body, error_ref, signal_accepted)
        operation["operationId"] = f"send_{signal}_signal"
        operation["summary"] = f"Send the {signal} signal to a running workflow"
        operation["description"] = (
            f"Declared by {', '.join(name for name, _ in declared)}: the body is the payload "
            "that signal's model validates. " + operation["description"]
        )
        paths[f"/workflows/{{workflowId}}/signals/{signal}"] = {"post": operation}
    list_filters = [
        {
            "name": "status",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": list(WORKFLOW_STATUSES)},
        },
        {
            "name": "workflow",
            "in": "query",
            "required": False,
            "description": "A workflow name.",
            "schema": {"type": "string", "pattern": checks.WORKFLOW_NAME_PATTERN},
        },
    ]
    paths["/workflows"] = {
        "get": {
            "operationId": "list_workflows",
            "summary": "Workflows, newest first, filtered and paginated",
            "description": (
                "Keyset pagination: pass a page's `next` as `before` for the following (older) "
                "page; rows created meanwhile never shift a page. A parameter that is given must "
                "be valid, even empty: leave out the ones that do not filter."
            ),
            "tags": ["workflows"],
            "parameters": [
                *list_filters,
                {
                    "name": "version",
                    "in": "query",
                    "required": False,
                    "description": (
                        "The version of its definition a run is pinned to (a workflow's "
                        "`version`): only the runs of that version."
                    ),
                    "schema": {"type": "string", "pattern": VERSION_PATTERN},
                },
                {
                    "name": "id",
                    "in": "query",
                    "required": False,
                    "description": "A workflow id or the start of one.",
                    "schema": {"type": "string", "pattern": checks.WORKFLOW_ID_PATTERN},
                },
                {
                    "name": "before",
                    "in": "query",
                    "required": False,
                    "description": (
                        "The `next` cursor of the previous page (400 for anything else)."
                    ),
                    "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_PAGE,
                        "default": 50,
                    },
                },
            ],
            "responses": {
                "200": _json(ref(WorkflowPage), "A page of workflows."),
                "400": _json(error_ref, "A parameter cannot be used; the error says which."),
            },
        }
    }
    paths["/events"] = {
        "get": {
            "operationId": "all_events",
            "summary": "Every workflow's events as Server-Sent Events (the dashboard's feed)",
            "description": (
                "`event` = the event type and `data` = the WorkflowEvent JSON, as on a "
                "workflow's stream, filtered by workflow name and by status (an event is sent to "
                "a status filter when it enters or leaves that status; step events count as "
                "`running`, undos' as `compensating`). Ids are `<epoch>.<position>` of the "
                "gateway process. The stream "
                "starts with a `reset` event (schema `FeedReset`): load the list "
                "(`GET /workflows`), then apply what follows. A reconnect with Last-Event-ID (or "
                "lastEventId) to the same gateway process "
                "resumes with the events missed, if it still holds them; otherwise — another "
                "replica, a restart, too long away, or a client that fell behind — it gets a "
                "`reset` again. Comment pings keep the connection alive; it never ends by itself."
            ),
            "tags": ["workflows"],
            "parameters": [
                *list_filters,
                {
                    "name": checks.LAST_EVENT_ID_HEADER,
                    "in": "header",
                    "required": False,
                    "description": "Resume after this id; one that cannot be resumed: `reset`.",
                    "schema": {"type": "string"},
                },
                {
                    "name": checks.LAST_EVENT_ID_QUERY,
                    "in": "query",
                    "required": False,
                    "description": "As Last-Event-ID, for clients that cannot set headers.",
                    "schema": {"type": "string"},
                },
                _stream_token('the list (`{"list": true}`)'),
            ],
            "responses": {
                "200": {
                    "description": "An event stream.",
                    "content": {
                        "text/event-stream": {
                            "schema": SSE_EVENT,
                            "x-event-schema": {"oneOf": [ref(WorkflowEvent), ref(FeedReset)]},
                            "x-event-data": event_data,
                        }
                    },
                },
                "400": _json(error_ref, "A filter cannot be used."),
            },
        }
    }
    html_answer = {
        "200": {
            "description": "An HTML page.",
            "content": {"text/html": {"schema": {"type": "string"}}},
        }
    }
    paths["/"] = {
        "get": {
            "operationId": "dashboard",
            "summary": "The dashboard: the contact form and the live workflow list",
            "description": (
                "Takes the list's parameters (status, workflow, version, id, before, limit). "
                "With POST /submit off, the page says how to start a workflow instead of "
                "showing the form."
            ),
            "tags": ["pages"],
            "responses": html_answer,
        }
    }
    paths["/ui/workflows/{workflowId}"] = {
        "get": {
            "operationId": "workflow_page",
            "summary": "A workflow's page: steps, events, cancel, retry and signals, live",
            "tags": ["pages"],
            "parameters": [workflow_id],
            "responses": {
                **html_answer,
                "400": {"description": "An HTML page: the id does not match its pattern."},
                "404": {"description": "An HTML page saying so."},
            },
        }
    }
    paths["/healthz"] = {
        "get": {
            "operationId": "healthz",
            "summary": "The process is up",
            "tags": ["operations"],
            "responses": {"200": _json(ref(Health), "Alive.")},
        }
    }
    paths["/readyz"] = {
        "get": {
            "operationId": "readyz",
            "summary": "PostgreSQL and RabbitMQ are reachable",
            "tags": ["operations"],
            "responses": {
                "200": _json(ref(Readiness), "Ready."),
                "503": _json(ref(Readiness), "Not ready; says which dependency is down."),
            },
        }
    }
    paths.update(_plain_paths())
    return _document(
        {
            **paths,
            **_operator_paths(ref, error_ref, html_answer),
            **_credential_paths(ref, error_ref),
            **_oidc_paths(),
        },
        schemas,
        error_ref,
    )


# One event of a stream, as OpenAPI 3.1 reads `schema` under text/event-stream; what `data`
# holds, by event type, is `x-event-schema` and `x-event-data`.
SSE_EVENT: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "description": "JSON: see x-event-schema"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}


_NAMESPACE_ONLY = (
    "Dead letters are the namespace's (any tenant's messages): a key of another tenant than "
    "`default` gets 403."
)
_BROKER_REFUSED = (
    "The broker refuses the gateway's user the dead-letter queue (it needs read on "
    "`<ns>.dead-letters`, which `relayflow broker setup` gives it)."
)


def _operator_paths(
    ref: Any, error_ref: dict[str, Any], html_answer: dict[str, Any]
) -> dict[str, Any]:
    """The dead letters (services.gateway.dead_letters) and the operator's pages."""
    message_id = {
        "name": "messageId",
        "in": "path",
        "required": True,
        "description": "The dead letter's AMQP message id (the first with it).",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    }

    def window(name: str, default: int, low: int, high: int, what: str) -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": what,
            "schema": {"type": "integer", "minimum": low, "maximum": high, "default": default},
        }

    def page(
        operation: str,
        summary: str,
        parameters: list[dict[str, Any]] | None = None,
        responses: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        get: dict[str, Any] = {"operationId": operation, "summary": summary, "tags": ["pages"]}
        if parameters:
            get["parameters"] = parameters
        get["responses"] = {**html_answer, **(responses or {})}
        return {"get": get}

    return {
        "/dead-letters": {
            "get": {
                "operationId": "list_dead_letters",
                "summary": "A page of the namespace's dead letters, in queue order",
                "description": (
                    "Nothing is consumed: the gateway takes the whole queue unacknowledged (up "
                    "to 10,000) and hands every message back in order. " + _NAMESPACE_ONLY
                ),
                "tags": ["dead letters"],
                "parameters": [
                    window("offset", 0, 0, 10_000, "Skip this many."),
                    window("limit", 50, 1, 500, "At most this many."),
                ],
                "responses": {
                    "200": _json(ref(DeadLetterPage), "The page."),
                    "422": _json(error_ref, "offset or limit out of range."),
                    "503": _json(error_ref, _BROKER_REFUSED),
                },
            }
        },
        "/dead-letters/{messageId}": {
            "get": {
                "operationId": "get_dead_letter",
                "summary": "One dead letter whole: why, from where, its headers and its body",
                "description": "Nothing is consumed. " + _NAMESPACE_ONLY,
                "tags": ["dead letters"],
                "parameters": [message_id],
                "responses": {
                    "200": _json(ref(DeadLetterDetail), "The dead letter."),
                    "400": _json(error_ref, "Not a message id (too long)."),
                    "404": _json(error_ref, "No dead letter has this message id."),
                    "503": _json(error_ref, _BROKER_REFUSED),
                },
            }
        },
        "/dead-letters/redrive": {
            "post": {
                "operationId": "redrive_dead_letters",
                "summary": "Send dead letters back to where they came from",
                "description": (
                    "Each is republished to the exchange and routing key it was dead-lettered "
                    "from, confirmed and mandatory, and acked from the queue only then. Named "
                    "ids that no dead letter has are a 404 (the others named are sent). "
                    + _NAMESPACE_ONLY
                    + " "
                    + _JSON_ONLY
                ),
                "tags": ["dead letters"],
                "parameters": [_csrf_header()],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(RedriveRequest, "validation")}},
                },
                "responses": {
                    "200": _json(ref(Redriven), "The dead letters sent back."),
                    "400": _json(error_ref, "The body is not JSON."),
                    "404": _json(error_ref, "A named message id matches no dead letter."),
                    "413": _json(error_ref, "The body is larger than RELAYFLOW_MAX_BODY_BYTES."),
                    "415": _json(error_ref, "The body was not sent as application/json."),
                    "422": _json(
                        error_ref,
                        f"Not exactly one of messageIds and all (true), or {_JSON_LIMITS}.",
                    ),
                    "503": _json(error_ref, _BROKER_REFUSED),
                },
            }
        },
        "/ui/overview": page(
            "overview_page",
            "The overview: the last hour's runs, queue depths and consumers, the outbox's lag",
        ),
        "/ui/dead-letters": page(
            "dead_letters_page",
            "The dead letters, with re-drive buttons for the operator role",
            parameters=[
                window("offset", 0, 0, 10_000, "Skip this many."),
                window("limit", 50, 1, 500, "At most this many."),
            ],
            responses={
                "403": {"description": "An HTML page: " + _NAMESPACE_ONLY},
                "422": {"description": "An HTML page: offset or limit out of range."},
                "503": {"description": "An HTML page: " + _BROKER_REFUSED},
            },
        ),
        "/ui/dead-letters/{messageId}": page(
            "dead_letter_page",
            "One dead letter's page: its headers and body, a re-drive button",
            parameters=[message_id],
            responses={
                "400": {"description": "An HTML page: not a message id."},
                "403": {"description": "An HTML page: " + _NAMESPACE_ONLY},
                "404": {"description": "An HTML page saying so."},
                "503": {"description": "An HTML page: " + _BROKER_REFUSED},
            },
        ),
    }


def _plain_paths() -> dict[str, Any]:
    """The routes that are not JSON: Prometheus's scrape and this document."""
    return {
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of this gateway process (no key, like the probes)",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": 'The Prometheus text format (README, "Metrics").',
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["operations"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def _stream_token(scope: str) -> dict[str, Any]:
    return {
        "name": stream_tokens.QUERY,
        "in": "query",
        "required": False,
        "description": (
            f"A stream token from POST /stream-tokens for {scope}, for clients that cannot send "
            "Authorization (a browser's EventSource). Forged, expired, made for another stream, "
            "or made with a key revoked since: 401. Used only when no Authorization is sent."
        ),
        "schema": {"type": "string", "maxLength": stream_tokens.MAX_LENGTH},
    }


def _credential_paths(ref: Any, error_ref: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """Signing in and out of the dashboard (services.gateway.sessions) and minting stream tokens
    (services.gateway.stream_tokens)."""
    html_answer = {"content": {"text/html": {"schema": {"type": "string"}}}}
    json_refusals = {
        "413": _json(error_ref, "The body is larger than RELAYFLOW_MAX_BODY_BYTES."),
        "415": _json(error_ref, "The body was not sent as application/json."),
    }
    cookie = sessions.COOKIE
    return {
        sessions.SIGN_IN_PATH: {
            "get": {
                "operationId": "sign_in_page",
                "summary": "The dashboard's sign-in page",
                "tags": ["pages"],
                "parameters": [
                    {
                        "name": "next",
                        "in": "query",
                        "required": False,
                        "description": "Where to go once signed in: a path on this site.",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {"description": "An HTML page.", **html_answer},
                    "303": {
                        "description": (
                            "Already signed in, or the gateway runs open: on to `next`."
                        ),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                },
            },
            "post": {
                "operationId": "sign_in",
                "summary": "Sign in to the dashboard with an API key",
                "description": (
                    f"Verifies the key and sets the `{cookie}` cookie (HttpOnly, "
                    "SameSite=Strict, Secure over HTTPS), signed by the gateway: it holds the "
                    "key's id and an expiry (RELAYFLOW_SESSION_SECONDS), never the key. Only from "
                    "this gateway's own pages (Origin). " + _JSON_ONLY
                ),
                "tags": ["pages"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(SignIn, "validation")}},
                },
                "responses": {
                    "200": {
                        **_json(ref(SignedIn), "Signed in; the cookie is set."),
                        "headers": {"Set-Cookie": {"schema": {"type": "string"}}},
                    },
                    "400": _json(error_ref, "The body is not JSON."),
                    "401": _json(error_ref, "Not a valid, unrevoked API key."),
                    "403": _json(
                        error_ref, "Not from this gateway's own pages, or the key cannot read."
                    ),
                    "409": _json(error_ref, "The gateway runs open: nothing to sign in to."),
                    **json_refusals,
                    "422": _json(error_ref, f'The body is not {{"key": …}}, or {_JSON_LIMITS}.'),
                },
            },
        },
        sessions.SIGN_OUT_PATH: {
            "post": {
                "operationId": "sign_out",
                "summary": "Sign out of the dashboard",
                "description": (
                    f"Clears the `{cookie}` cookie. With a valid session it needs the session's "
                    f"`{sessions.CSRF_HEADER}` and a same-site Origin, like every POST the cookie "
                    "authenticates. Revoking the key ends all of its sessions. " + _JSON_ONLY
                ),
                "tags": ["pages"],
                "parameters": [_csrf_header()],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref(SignOut, "validation")}},
                },
                "responses": {
                    "204": {"description": "Signed out; the cookie is cleared."},
                    "400": _json(error_ref, "The body is not JSON."),
                    "403": _json(error_ref, "Not from this site, or no valid CSRF token."),
                    **json_refusals,
                    "422": _json(error_ref, f"The body is not {{}}, or {_JSON_LIMITS}."),
                },
            }
        },
        "/stream-tokens": {
            "post": {
                "operationId": "mint_stream_token",
                "summary": "A short-lived token that opens one event stream (for EventSource)",
                "description": (
                    "For one workflow's events (`workflowId`; the workflow need not exist yet) "
                    "or the list's (`list: true`), used as `?token=` on that route. Valid for "
                    "RELAYFLOW_STREAM_TOKEN_SECONDS (300 by default) and only while the key it "
                    "was made with is unrevoked; a stream it opened goes on. " + _JSON_ONLY
                ),
                "tags": ["workflows"],
                "parameters": [_csrf_header()],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": ref(StreamTokenRequest, "validation")}
                    },
                },
                "responses": {
                    "200": _json(ref(StreamToken), "The token and when it expires."),
                    "400": _json(error_ref, "The body is not JSON."),
                    "409": _json(error_ref, "The gateway runs open: streams need no token."),
                    **json_refusals,
                    "422": _json(
                        error_ref,
                        "Not exactly one of workflowId (a workflow id) and list (true), or "
                        f"{_JSON_LIMITS}.",
                    ),
                },
            }
        },
    }


def _oidc_paths() -> dict[str, dict[str, dict[str, Any]]]:
    """The dashboard's sign-in through OIDC (services.gateway.oidc_signin): pages a browser
    follows, each answering HTML or a redirect."""

    def page(description: str) -> dict[str, Any]:
        return {
            "description": description,
            "content": {"text/html": {"schema": {"type": "string"}}},
        }

    redirect = {"Location": {"schema": {"type": "string"}}}
    flow = oidc_signin.FLOW_COOKIE
    not_configured = page("OIDC sign-in is not configured (RELAYFLOW_OIDC_ISSUER, _CLIENT_ID).")
    unreachable = page("The identity provider cannot be reached; retry shortly.")
    return {
        sessions.OIDC_SIGN_IN_PATH: {
            "get": {
                "operationId": "sign_in_oidc",
                "summary": "Sign in to the dashboard through the OIDC identity provider",
                "description": (
                    "Redirects to the provider's authorization endpoint (authorization code flow, "
                    "PKCE S256) with a fresh state and nonce, kept with the code verifier and "
                    f"`next` in the `{flow}` cookie (signed, HttpOnly, SameSite=Lax, 10 minutes)."
                ),
                "tags": ["pages"],
                "parameters": [
                    {
                        "name": "next",
                        "in": "query",
                        "required": False,
                        "description": "Where to go once signed in: a path on this site.",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "303": {"description": "To the identity provider.", "headers": redirect},
                    "404": not_configured,
                    "503": unreachable,
                },
            }
        },
        sessions.OIDC_CALLBACK_PATH: {
            "get": {
                "operationId": "sign_in_oidc_callback",
                "summary": "Where the identity provider sends the browser back",
                "description": (
                    f"Only with the `{flow}` cookie whose state matches `state`: exchanges `code` "
                    "with the PKCE verifier, verifies the id token (audience the client id, the "
                    f"nonce sent) and sets `{sessions.COOKIE}` as a key's sign-in does, holding "
                    "the person's subject, tenant and role until RELAYFLOW_SESSION_SECONDS or "
                    "the id token's expiry, whichever is sooner."
                ),
                "tags": ["pages"],
                "parameters": [
                    {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
                    for name in ("code", "state", "error")
                ],
                "responses": {
                    "303": {
                        "description": "Signed in: on to `/signin?next=…`, which goes on.",
                        "headers": {**redirect, "Set-Cookie": {"schema": {"type": "string"}}},
                    },
                    "400": page("No sign-in was started in this browser, or `state` differs."),
                    "401": page("The provider refused, or its answer could not be verified."),
                    "403": page("The person has no relayflow role or tenant, or cannot read."),
                    "404": not_configured,
                    "503": unreachable,
                },
            }
        },
    }


def _csrf_header() -> dict[str, Any]:
    return {
        "name": sessions.CSRF_HEADER,
        "in": "header",
        "required": False,
        "description": (
            "With the session cookie only: the session's CSRF token (the dashboard's pages hold "
            "it); a POST the cookie authenticates without it is 403. Bearer requests need none."
        ),
        "schema": {"type": "string"},
    }


def _document(
    paths: dict[str, Any], schemas: dict[str, Any], error_ref: dict[str, Any]
) -> dict[str, Any]:
    _document_outages(paths, error_ref)
    _document_security(paths, error_ref)
    for path in (  # access.PAGES
        "/",
        "/ui/workflows/{workflowId}",
        "/ui/overview",
        "/ui/dead-letters",
        "/ui/dead-letters/{messageId}",
    ):
        paths[path]["get"]["responses"]["303"] = {
            "description": "Not signed in (keys are required): to `/signin?next=<this page>`.",
            "headers": {"Location": {"schema": {"type": "string"}}},
        }
    _document_limits(paths, error_ref)
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "relayflow gateway",
            "version": metadata.version("relayflow"),
            "description": (
                "Starts durable workflows and shows their progress. Starting answers 202 only "
                "after RabbitMQ confirmed the StartWorkflow; errors are JSON "
                "{error, fields?}. Every POST takes only application/json (415 otherwise). "
                "Limits (services.gateway.limits; the defaults, each a setting): a request body "
                f"of at most {_LIMITS['max_body_bytes'].default} bytes (413), JSON nested at most "
                f"{_LIMITS['max_json_depth'].default} deep with strings of at most "
                f"{_LIMITS['max_string_length'].default} characters (422), "
                f"{_LIMITS['rate_limit'].default:g} requests a second in bursts of "
                f"{_LIMITS['rate_burst'].default} and {_LIMITS['max_streams'].default} open event "
                "streams per API key, or per client address while the gateway runs open (429), "
                "each counted by every gateway replica on its own."
            ),
        },
        "tags": [
            {"name": "workflows", "description": "Starting and following workflows"},
            {"name": "pages", "description": "HTML for people"},
            {"name": "dead letters", "description": "The namespace's dead-letter queue"},
            {"name": "operations", "description": "Health, readiness and this document"},
        ],
        "paths": paths,
        "security": [{"bearerAuth": []}, {"sessionCookie": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": _BEARER,
                "sessionCookie": _SESSION_COOKIE,
                "streamToken": _STREAM_TOKEN,
            },
        },
    }


_BEARER = {
    "type": "http",
    "scheme": "bearer",
    "description": (
        "An API key (`rf_<id>_<secret>`, made with `relayflow keys create`) as "
        "`Authorization: Bearer <key>`, or, when RELAYFLOW_OIDC_ISSUER is set, a person's JWT "
        "from that identity provider (signed with an asymmetric key of its JWKS, for "
        "RELAYFLOW_OIDC_AUDIENCE, its tenant and role in the configured claims; an authentic "
        "token naming no relayflow role or tenant is 403, and 503 while the provider cannot be "
        "reached). The role decides what it may do: `submit` starts "
        "workflows and sends signals; `read` lists, reads and streams; `operator` also "
        "cancels and retries; `admin` also manages keys. A gateway bound to a loopback "
        "address while no key exists and no issuer is set runs open and asks for none "
        "(services.gateway.access)."
    ),
}


_SESSION_COOKIE = {
    "type": "apiKey",
    "in": "cookie",
    "name": sessions.COOKIE,
    "description": (
        "The dashboard's session (POST /signin, or GET /signin/oidc): the key's id and an "
        "expiry, signed by the gateway, the key checked again on every request; or a person's "
        "subject, tenant and role, ending with their id token. A POST it authenticates also needs "
        f"`{sessions.CSRF_HEADER}` and a same-site Origin or Referer (403 otherwise)."
    ),
}
_STREAM_TOKEN = {
    "type": "apiKey",
    "in": "query",
    "name": stream_tokens.QUERY,
    "description": "A stream token (POST /stream-tokens), on the event stream it was made for.",
}


def _document_security(paths: dict[str, Any], error_ref: dict[str, Any]) -> None:
    """Each operation's credentials, from the one table of what each route needs
    (services.gateway.access.ACTIONS): none on the probes and the sign-in routes, 401 without
    valid credentials elsewhere, and 403 where the key's role matters."""
    for path, operations in paths.items():
        for method, operation in operations.items():
            if access.is_public(path) or path in access.SESSION_PATHS:
                operation["security"] = []
                continue
            action = access.action_for(path, method)
            if action is Action.STREAM and method == "get":
                operation["security"] = [
                    {"bearerAuth": []},
                    {"streamToken": []},
                    {"sessionCookie": []},
                ]
            responses = operation["responses"]
            responses["401"] = {
                **_json(
                    error_ref,
                    "No credentials, or not a valid, unrevoked API key or OIDC token (nor a "
                    "valid session cookie or stream token standing for one).",
                ),
                "headers": {
                    "WWW-Authenticate": {
                        "description": "`Bearer`: how to authenticate.",
                        "schema": {"type": "string"},
                    }
                },
            }
            if action is not None:
                refusal = f"The key's role does not allow this (it needs `{action}`)."
                if method == "post":
                    refusal += (
                        " Or, authenticated by the session cookie, the request is not from this "
                        f"site (Origin or Referer) or has no valid {sessions.CSRF_HEADER}."
                    )
                refused = _json(error_ref, refusal)
                page_refusal = responses.get("403")
                if page_refusal is not None:
                    # A page's own 403 (an HTML page) beside the role check's (JSON).
                    refused["description"] += f" Or: {page_refusal['description']}"
                    refused["content"] = {
                        **refused["content"],
                        "text/html": {"schema": {"type": "string"}},
                    }
                responses["403"] = refused


def _document_limits(paths: dict[str, Any], error_ref: dict[str, Any]) -> None:
    """The 429 of every route behind credentials (services.gateway.limits: the rate limit and,
    on event streams, the stream cap, which `access.guard` applies there and nowhere else)."""
    rate = (
        "Too many requests from this API key (from this client address while the gateway runs "
        f"open): by default {_LIMITS['rate_limit'].default:g} a second in bursts of "
        f"{_LIMITS['rate_burst'].default} (RELAYFLOW_RATE_LIMIT, RELAYFLOW_RATE_BURST), counted by "
        "each gateway replica; retry after the seconds in Retry-After."
    )
    streams = (
        f" Or the key (the address) already holds {_LIMITS['max_streams'].default} open event "
        "streams, the default of RELAYFLOW_MAX_STREAMS (without Retry-After): one must end first."
    )
    retry_after = {
        "Retry-After": {
            "description": "Seconds to wait, when the rate limit refused the request.",
            "schema": {"type": "string"},
        }
    }
    for path, operations in paths.items():
        if access.is_public(path):
            continue
        for method, operation in operations.items():
            stream = (
                method == "get"
                and path not in access.SESSION_PATHS
                and access.action_for(path, method) is Action.STREAM
            )
            operation["responses"]["429"] = {
                **_json(error_ref, rate + (streams if stream else "")),
                "headers": retry_after,
            }


# Routes that answer without PostgreSQL (or say what is down themselves).
_NEEDS_NO_DATABASE = (
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    sessions.SIGN_OUT_PATH,
    sessions.OIDC_SIGN_IN_PATH,  # these two answer their own 503, for the identity provider
    sessions.OIDC_CALLBACK_PATH,
)


def _document_outages(paths: dict[str, Any], error_ref: dict[str, Any]) -> None:
    """Every route that reads or writes PostgreSQL answers 503 with Retry-After while it is
    unreachable (services.gateway.outages): say so on each, beside a broker 503 if it has one."""
    outage = (
        "PostgreSQL (or the broker) cannot be reached right now; retry after the seconds "
        "in Retry-After."
    )
    retry_after = {"Retry-After": {"description": "Seconds to wait.", "schema": {"type": "string"}}}
    for path, operations in paths.items():
        if path in _NEEDS_NO_DATABASE:
            continue
        for operation in operations.values():
            responses = operation["responses"]
            if "503" in responses:
                responses["503"]["description"] += f" Also: {outage}"
            else:
                responses["503"] = _json(error_ref, outage)
            responses["503"]["headers"] = retry_after


def _inputs_as_applied(schemas: dict[str, Any], input_refs: list[dict[str, Any]]) -> dict[str, Any]:
    """The components, with those that requests use (and what they refer to) saying what the
    gateway refuses beyond the models (`services.gateway.input_schema`)."""
    pending = [ref["$ref"].rsplit("/", 1)[-1] for ref in input_refs]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen or name not in schemas:
            continue
        seen.add(name)
        pending.extend(target.rsplit("/", 1)[-1] for target in _refs(schemas[name]))
    applied = {
        name: as_applied(schema, REF) if name in seen else schema
        for name, schema in schemas.items()
    }
    if any(STORABLE_JSON in target for name in seen for target in _refs(applied[name])):
        applied[STORABLE_JSON] = storable_json(REF)
    return dict(sorted(applied.items()))


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def render(document: dict[str, Any]) -> str:
    """The committed form: sorted keys, 2-space indent, trailing newline."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the gateway's OpenAPI document.")
    parser.add_argument(
        "--workflows",
        help="comma-separated workflow modules (default: RELAYFLOW_WORKFLOWS or its default)",
    )
    args = parser.parse_args(argv)
    settings = GatewaySettings()
    modules = (
        [part.strip() for part in args.workflows.split(",") if part.strip()]
        if args.workflows
        else settings.workflows
    )
    registry = WorkflowRegistry.from_modules(modules)
    try:
        document = build_openapi(registry, submit_workflow=settings.gateway_submit_workflow)
    except ConfigurationError as exc:
        parser.exit(2, f"{parser.prog}: {exc}\n")
    sys.stdout.write(render(document))


if __name__ == "__main__":
    main()
