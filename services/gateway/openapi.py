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

from relayflow.contracts import WorkflowEvent
from relayflow.settings import Settings
from relayflow.workflow import WorkflowRegistry
from services.gateway.models import Accepted, ErrorBody, Health, Readiness, WorkflowView

REF = "#/components/schemas/{model}"
FORM_WORKFLOW = "formSubmission"

_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": (
        "Makes retries safe: the same key always names the same workflow id. The same key with "
        "the same body publishes again and answers 202 with that id (the orchestrator starts an "
        "id once); the same key with a different body is refused with 409."
    ),
    "schema": {"type": "string", "minLength": 1, "maxLength": 200},
}


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
            "with publisher confirms and mandatory routing. 202 only once the broker confirmed."
        ),
        "tags": ["workflows"],
        "parameters": [_IDEMPOTENCY_KEY],
        "requestBody": {"required": True, "content": {"application/json": {"schema": input_ref}}},
        "responses": {
            "202": _json(accepted, "Accepted: the broker confirmed the StartWorkflow."),
            "400": _json(error_ref, "The body is not JSON, or the Idempotency-Key is invalid."),
            "409": _json(error_ref, "The Idempotency-Key was used with a different body."),
            "413": _json(error_ref, "The body is too large."),
            "422": _json(error_ref, "The input does not validate; `fields` says where and why."),
            "503": _json(
                error_ref,
                "The broker did not confirm the start (error, nack, timeout or unroutable); "
                "retry, with the same Idempotency-Key if one was sent.",
            ),
        },
    }


def build_openapi(registry: WorkflowRegistry) -> dict[str, Any]:
    inputs: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (definition.input_model, "validation") for definition in registry
    ]
    answers: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "serialization")
        for model in (Accepted, ErrorBody, WorkflowView, Health, Readiness, WorkflowEvent)
    ]
    refs, defs = models_json_schema([*inputs, *answers], by_alias=True, ref_template=REF)

    def ref(model: type[BaseModel], mode: JsonSchemaMode = "serialization") -> dict[str, Any]:
        return dict(refs[(model, mode)])

    error_ref = ref(ErrorBody)
    accepted = ref(Accepted)
    paths: dict[str, Any] = {}

    form = registry.get(FORM_WORKFLOW)
    if form is not None:
        operation = _start_operation(
            FORM_WORKFLOW, ref(form.input_model, "validation"), error_ref, accepted
        )
        operation["operationId"] = "submit_form"
        operation["summary"] = "Submit the contact form (starts formSubmission)"
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
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
    }
    paths["/workflows/{workflowId}"] = {
        "get": {
            "operationId": "get_workflow",
            "summary": "A workflow's state, steps in definition order",
            "tags": ["workflows"],
            "parameters": [workflow_id],
            "responses": {
                "200": _json(ref(WorkflowView), "The workflow as last committed."),
                "404": _json(error_ref, "No workflow with this id."),
            },
        }
    }
    paths["/workflows/{workflowId}/events"] = {
        "get": {
            "operationId": "workflow_events",
            "summary": "The workflow's events as Server-Sent Events",
            "description": (
                "Replays the stored events after `Last-Event-ID` (or `lastEventId`), then follows "
                "live ones: each SSE event has `id` = the event's seq, `event` = its type and "
                "`data` = the WorkflowEvent JSON (schema `WorkflowEvent`). Every seq arrives once, "
                "in order; the stream ends after `workflow.completed` or `workflow.failed`. For a "
                "workflow id nobody knows yet, the stream waits (30 s by default, "
                "RELAYFLOW_GATEWAY_UNKNOWN_WORKFLOW_WAIT) for it to start, then sends one "
                "`workflow.unknown` event ({error, workflowId}) and ends. Comment pings keep the "
                "connection alive."
            ),
            "tags": ["workflows"],
            "parameters": [
                workflow_id,
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "Resume after this seq.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                {
                    "name": "lastEventId",
                    "in": "query",
                    "required": False,
                    "description": "Resume after this seq (for clients that cannot set headers).",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            ],
            "responses": {
                "200": {
                    "description": "An event stream.",
                    "content": {
                        "text/event-stream": {
                            "schema": {"type": "string"},
                            "x-event-schema": ref(WorkflowEvent),
                        }
                    },
                },
                "400": _json(error_ref, "Last-Event-ID is not a seq."),
            },
        }
    }
    paths["/"] = {
        "get": {
            "operationId": "form_page",
            "summary": "The contact form, following its workflow live",
            "tags": ["pages"],
            "responses": {
                "200": {
                    "description": "An HTML page.",
                    "content": {"text/html": {"schema": {"type": "string"}}},
                }
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
    paths["/openapi.json"] = {
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
    }
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "relayflow gateway",
            "version": metadata.version("relayflow"),
            "description": (
                "Starts durable workflows and shows their progress. Starting answers 202 only "
                "after RabbitMQ confirmed the StartWorkflow; errors are JSON "
                "{error, fields?}."
            ),
        },
        "tags": [
            {"name": "workflows", "description": "Starting and following workflows"},
            {"name": "pages", "description": "HTML for people"},
            {"name": "operations", "description": "Health, readiness and this document"},
        ],
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }


def render(document: dict[str, Any]) -> str:
    """The committed form: sorted keys, 2-space indent, trailing newline."""
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode() + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print the gateway's OpenAPI document.")
    parser.add_argument(
        "--workflows",
        help="comma-separated workflow modules (default: RELAYFLOW_WORKFLOWS or the seed one)",
    )
    args = parser.parse_args(argv)
    modules = (
        [part.strip() for part in args.workflows.split(",") if part.strip()]
        if args.workflows
        else Settings().workflows
    )
    sys.stdout.write(render(build_openapi(WorkflowRegistry.from_modules(modules))))


if __name__ == "__main__":
    main()
