"""The committed `schemas/openapi.json` is the gateway's HTTP contract: it must be exactly what
the code builds, and well-formed enough for client generators."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from relayflow.errors import ConfigurationError
from relayflow.settings import Settings
from relayflow.workflow import WorkflowRegistry
from services.gateway import access
from services.gateway.openapi import build_openapi, render

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "schemas" / "openapi.json"
REGENERATE = ".venv/bin/python -m services.gateway.openapi > schemas/openapi.json"
# The workflows the run command serves: the committed document describes them.
SEED_WORKFLOWS = Settings().workflows


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return build_openapi(WorkflowRegistry.from_modules(SEED_WORKFLOWS))


def test_committed_document_matches_the_code(document: dict[str, Any]) -> None:
    """Clients are generated from the committed file; it must not drift from what is served."""
    assert COMMITTED.is_file(), f"schemas/openapi.json is missing; create it with `{REGENERATE}`"
    assert COMMITTED.read_text(encoding="utf-8") == render(document), (
        f"schemas/openapi.json differs from the code; regenerate it with `{REGENERATE}` "
        "and review the diff"
    )


def test_generator_command_prints_the_committed_document() -> None:
    """The regeneration command in the failure message must itself work, warning-free."""
    env = {k: v for k, v in os.environ.items() if k != "RELAYFLOW_WORKFLOWS"}
    result = subprocess.run(
        [sys.executable, "-W", "error", "-m", "services.gateway.openapi"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == COMMITTED.read_text(encoding="utf-8")


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_document_is_well_formed(document: dict[str, Any]) -> None:
    """Every $ref resolves and every component is valid JSON Schema 2020-12, as OpenAPI 3.1
    requires; a dangling ref breaks every client generator."""
    assert document["openapi"].startswith("3.1.")
    schemas = document["components"]["schemas"]
    for ref in _refs(document):
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in schemas, ref
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], f"{method.upper()} {path} documents no response"


def _validator(document: dict[str, Any], name: str) -> Draft202012Validator:
    # Resolve component refs by embedding the components as $defs of a wrapper schema.
    raw = json.dumps(document["components"]["schemas"]).replace("#/components/schemas/", "#/$defs/")
    return Draft202012Validator({"$defs": json.loads(raw), "$ref": f"#/$defs/{name}"})


def test_documented_shapes_match_real_requests_and_answers(document: dict[str, Any]) -> None:
    """The form schema accepts the form and refuses extras, and the documented answers describe
    what the gateway really sends."""
    submit = document["paths"]["/submit"]["post"]
    form_ref = submit["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    form = _validator(document, form_ref.rsplit("/", 1)[-1])
    assert form.is_valid({"name": "Ada", "email": "ada@example.com", "message": "hi"})
    assert not form.is_valid({"name": "Ada", "email": "ada@example.com", "message": "hi", "x": 1})
    assert not form.is_valid({"name": "Ada", "email": "ada@example.com"})
    assert set(submit["responses"]) >= {"202", "400", "409", "422", "503"}
    accepted = _validator(document, "Accepted")
    assert accepted.is_valid({"workflowId": "wf_01jd8n2w0a3k5y6q7r8s9t0v1w", "status": "accepted"})
    error = _validator(document, "ErrorBody")
    assert error.is_valid(
        {
            "error": "invalid",
            "fields": [{"loc": ["email"], "message": "bad", "type": "value_error"}],
        }
    )
    events = document["paths"]["/workflows/{workflowId}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]


def test_dashboard_endpoints_are_documented(document: dict[str, Any]) -> None:
    """The list, the feed and the actions are part of the HTTP contract like the rest: their
    answers are documented and the documented shapes describe what the gateway sends."""
    paths = document["paths"]
    for action in ("cancel", "retry"):
        assert set(paths[f"/workflows/{{workflowId}}/{action}"]["post"]["responses"]) >= {
            "202",
            "404",
            "409",
            "503",
        }
    assert "204" in paths["/workflows/{workflowId}/events"]["get"]["responses"]
    assert "text/event-stream" in paths["/events"]["get"]["responses"]["200"]["content"]
    page = _validator(document, "WorkflowPage")
    item: dict[str, Any] = {
        "workflowId": "wf_x",
        "name": "formSubmission",
        "status": "cancelled",
        "createdAt": "2026-01-01T00:00:00Z",
        "updatedAt": "2026-01-01T00:00:01Z",
        "finishedAt": None,
        "lastSeq": 3,
        "stepsTotal": 5,
        "stepsCompleted": 1,
        "activeSteps": [],
        "error": None,
    }
    assert page.is_valid({"items": [item], "next": None})
    assert not page.is_valid({"items": [{**item, "status": "sleeping"}], "next": None})
    accepted = _validator(document, "ActionAccepted")
    assert accepted.is_valid(
        {"workflowId": "wf_x", "action": "retry", "messageId": "m", "status": "accepted"}
    )


def _operations(document: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]


def test_every_post_takes_only_json_and_documents_415(document: dict[str, Any]) -> None:
    """The CSRF guard is part of the contract: every POST has a required JSON body (so a
    generated client always sends Content-Type: application/json) and documents the 415."""
    posts = [(path, op) for path, method, op in _operations(document) if method == "post"]
    assert len(posts) >= 4
    for path, operation in posts:
        body = operation["requestBody"]
        assert body["required"] is True, path
        assert list(body["content"]) == ["application/json"], path
        assert "415" in operation["responses"], path


def test_every_route_behind_credentials_documents_the_429_of_its_limits(
    document: dict[str, Any],
) -> None:
    """The rate limit applies wherever a key is asked for, the stream cap on event streams
    only, and neither on the probes (services.gateway.limits, applied by access.guard)."""
    for path, _, operation in _operations(document):
        responses = operation["responses"]
        if path in access.PUBLIC_PATHS:
            assert "429" not in responses, path
            continue
        assert "RELAYFLOW_RATE_LIMIT" in responses["429"]["description"], path
        assert "Retry-After" in responses["429"]["headers"], path
        is_stream = "text/event-stream" in responses.get("200", {}).get("content", {})
        assert ("RELAYFLOW_MAX_STREAMS" in responses["429"]["description"]) is is_stream, path
    for path, method, operation in _operations(document):
        if method == "post" and "/cancel" not in path and "/retry" not in path:
            assert "RELAYFLOW_MAX_BODY_BYTES" in operation["responses"]["413"]["description"]
            assert "RELAYFLOW_MAX_JSON_DEPTH" in operation["responses"]["422"]["description"]


def test_every_route_taking_a_workflow_id_documents_the_400_for_an_impossible_one(
    document: dict[str, Any],
) -> None:
    """One rule on every route: an id that cannot match the pattern is a 400, not a 404."""
    taking = [
        (path, operation)
        for path, _, operation in _operations(document)
        if any(p["name"] == "workflowId" for p in operation.get("parameters", []))
    ]
    assert len(taking) >= 5
    for path, operation in taking:
        assert "400" in operation["responses"], path


def test_inputs_document_what_postgresql_cannot_store() -> None:
    """A NUL passes an input model but not PostgreSQL, so the gateway refuses it (422): the
    schemas must refuse it too — in strings, in keys and deep inside values the model leaves
    open — or a client that trusts them is refused what they allow."""
    document = build_openapi(
        WorkflowRegistry.from_modules(
            ["apps.form_submission.workflows", "tests.integration.gateway_harness"]
        )
    )
    freeform = _validator(document, "Freeform")
    assert freeform.is_valid({"data": {"a": ["b", {"c": 1.5, "d": None}]}})
    for bad in ({"a\x00": 1}, {"a": "\x00"}, {"a": [{"b": ["x\x00"]}]}):
        assert not freeform.is_valid({"data": bad}), bad
    form = _validator(document, "ContactForm")
    good = {"name": "Ada", "email": "ada@example.com", "message": "hi"}
    assert form.is_valid(good)
    assert not form.is_valid({**good, "name": "A\x00da"})
    assert not form.is_valid({**good, "email": "ada@example.test"})


def test_submit_alias_follows_the_setting() -> None:
    """`/submit` is documented for the workflow RELAYFLOW_GATEWAY_SUBMIT_WORKFLOW names, with that
    workflow's input, and not at all when the setting is empty; one that names no served
    workflow is refused, as the gateway refuses to start with it."""
    registry = WorkflowRegistry.from_modules(SEED_WORKFLOWS)
    assert "/submit" not in build_openapi(registry, submit_workflow="")["paths"]
    with pytest.raises(ConfigurationError, match="RELAYFLOW_GATEWAY_SUBMIT_WORKFLOW='noSuchFlow'"):
        build_openapi(registry, submit_workflow="noSuchFlow")
    submit = build_openapi(registry, submit_workflow="batchImport")["paths"]["/submit"]["post"]
    assert submit["summary"] == "Submit the contact form (starts batchImport)"
    started = build_openapi(registry)["paths"]["/workflows/batchImport"]["post"]
    assert submit["requestBody"] == started["requestBody"]
