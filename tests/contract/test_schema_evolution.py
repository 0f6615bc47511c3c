"""Old producers keep working: every committed version of every message (its fixtures) is still
accepted by the current code, and a schema that stops accepting what its version accepted fails
here until it gets a new schemaVersion (tests/contract/evolution.py, README: Schema evolution)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from relayflow.contracts import MESSAGE_TYPES, WorkflowEventBatch, decode
from relayflow.contracts.asyncapi import current_schema_version, schema_versions
from tests.contract import evolution
from tests.contract.evolution import (
    FIXTURES,
    Schema,
    baseline_path,
    current_schema,
    fixture_directory,
    incompatibilities,
    normalized,
    record,
)
from tests.contract.schema_validation import schema_errors

FIXTURE_FILES = sorted(FIXTURES.glob("*/v*/*.json"))


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _fixture_id(path: Path) -> str:
    return str(path.relative_to(FIXTURES))


def _version(path: Path) -> int:
    return int(path.parent.name.removeprefix("v"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=_fixture_id)
def test_every_fixture_decodes_with_the_current_code(path: Path) -> None:
    """A message a producer of that version sends must still be understood."""
    message = decode(path.read_bytes())
    assert type(message).__name__ == path.parent.parent.name
    assert message.schema_version == _version(path)


def _current(path: Path) -> bool:
    return _version(path) == current_schema_version(MESSAGE_TYPES[path.parent.parent.name])


@pytest.mark.parametrize("path", [p for p in FIXTURE_FILES if _current(p)], ids=_fixture_id)
def test_every_current_fixture_matches_the_committed_schema(path: Path) -> None:
    """Consumers in other languages validate with schemas/ (the current versions): they must
    accept what current producers send."""
    assert schema_errors(_load(path)) == []


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_every_accepted_version_has_fixtures(message_type: str) -> None:
    """Each version the code accepts is pinned by a minimal and a full example, and no fixture
    is kept for a version it no longer accepts (retiring one deletes its fixtures with it)."""
    model = MESSAGE_TYPES[message_type]
    accepted = schema_versions(model)
    assert current_schema_version(model) in accepted
    kept = sorted(int(d.name[1:]) for d in (FIXTURES / message_type).glob("v*") if d.is_dir())
    assert kept == list(accepted), f"{message_type}: fixtures for {kept}, accepted {accepted}"
    for version in accepted:
        names = {p.name for p in fixture_directory(message_type, version).glob("*.json")}
        assert {"minimal.json", "full.json"} <= names, (message_type, version, names)


def test_fixtures_are_only_of_known_message_types() -> None:
    """A fixture for a type that no longer exists would pin nothing."""
    assert {d.name for d in FIXTURES.iterdir() if d.is_dir()} == set(MESSAGE_TYPES)


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_fixtures_use_every_field_of_the_current_version(message_type: str) -> None:
    """A field no fixture carries (one just added, say) is not protected from a later removal:
    add it to the version's full.json."""
    version = current_schema_version(MESSAGE_TYPES[message_type])
    seen: set[str] = set()
    for path in fixture_directory(message_type, version).glob("*.json"):
        seen |= set(_load(path))
    if message_type == "WorkflowEvent":  # events also travel inside batches
        for path in fixture_directory("WorkflowEventBatch", version).glob("*.json"):
            for event in _load(path)["events"]:
                seen |= set(event)
    properties = set(current_schema(message_type)["properties"])
    assert properties - seen == set(), f"no {message_type} v{version} fixture has these fields"


def test_batch_fixtures_carry_events_of_the_same_version() -> None:
    """A batch and its events are one producer's: the same schemaVersion."""
    for path in fixture_directory("WorkflowEventBatch", 1).glob("*.json"):
        batch = decode(path.read_bytes())
        assert isinstance(batch, WorkflowEventBatch)
        assert {event.schema_version for event in batch.events} == {batch.schema_version}


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_the_schema_still_accepts_what_its_version_accepted(message_type: str) -> None:
    """Removing a field, requiring a new one or narrowing a type breaks producers of this
    version: that needs a new schemaVersion and a migration (README: Schema evolution)."""
    version = current_schema_version(MESSAGE_TYPES[message_type])
    path = baseline_path(message_type, version)
    assert path.is_file(), (
        f"no recorded schema for {message_type} v{version}: add fixtures under "
        f"{fixture_directory(message_type, version)} and run "
        "`.venv/bin/python -m tests.contract.evolution`"
    )
    problems = incompatibilities(_load(path), current_schema(message_type))
    assert problems == [], (
        f"{message_type} changed incompatibly without a new schemaVersion "
        f"(it is still v{version}):\n  " + "\n  ".join(problems)
    )


@pytest.mark.parametrize("message_type", sorted(MESSAGE_TYPES))
def test_compatible_changes_are_recorded(message_type: str) -> None:
    """The baseline follows every compatible change (so a field added today is protected
    tomorrow): `.venv/bin/python -m tests.contract.evolution` records it."""
    version = current_schema_version(MESSAGE_TYPES[message_type])
    baseline = _load(baseline_path(message_type, version))
    assert normalized(baseline) == normalized(current_schema(message_type)), (
        f"{message_type} v{version} differs from its recorded baseline; if the change is "
        "compatible (test_the_schema_still_accepts_what_its_version_accepted passes), record "
        "it with `.venv/bin/python -m tests.contract.evolution` and commit the baseline"
    )


def test_recording_refuses_an_incompatible_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorder is the only way to move a baseline, and it never hides a breaking change."""
    monkeypatch.setattr(evolution, "FIXTURES", tmp_path)
    baseline = current_schema("StartWorkflow")
    baseline["properties"]["legacyField"] = {"type": "string"}
    path = evolution.baseline_path("StartWorkflow", 1)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(baseline), encoding="utf-8")
    outcome, problems = record("StartWorkflow")
    assert outcome == "refused"
    assert problems == ["$.legacyField: removed (and unknown properties are refused)"]
    assert json.loads(path.read_text(encoding="utf-8")) == baseline


# -- the rules themselves -------------------------------------------------------------------------


def _object(properties: Schema, required: list[str] | None = None) -> Schema:
    return {
        "type": "object",
        "properties": properties,
        "required": required or [],
        "additionalProperties": False,
    }


STRING = {"type": "string"}
NULLABLE = {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "null"}], "default": None}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (_object({"a": STRING}), _object({"a": STRING, "b": NULLABLE}), []),
        (_object({"a": STRING}, ["a"]), _object({"a": STRING}), []),
        (_object({"a": {"type": "integer"}}), _object({"a": {"type": "number"}}), []),
        (_object({"a": NULLABLE}), _object({"a": {**NULLABLE, "title": "A"}}), []),
        (
            _object({"a": {"enum": ["x"]}}),
            _object({"a": {"enum": ["x", "y"]}}),
            [],
        ),
        (
            _object({"a": STRING, "b": STRING}),
            _object({"a": STRING}),
            ["$.b: removed (and unknown properties are refused)"],
        ),
        (
            _object({"a": STRING, "b": STRING}),
            _object({"a": STRING, "b": STRING}, ["b"]),
            ["$: now requires 'b'"],
        ),
        (
            _object({"a": {"type": "number"}}),
            _object({"a": {"type": "integer"}}),
            ["$.a: type narrowed to integer (was number)"],
        ),
        (
            _object({"a": NULLABLE}),
            _object({"a": {"type": "string", "maxLength": 10}}),
            ["$.a: type narrowed to string (was null)", "$.a: maxLength lowered to 10 (was none)"],
        ),
        (
            _object({"a": {"enum": ["x", "y"]}}),
            _object({"a": {"enum": ["x"]}}),
            ["$.a: no longer accepts ['y']"],
        ),
        (
            _object({"a": {"type": "string", "maxLength": 200}}),
            _object({"a": {"type": "string", "maxLength": 100}}),
            ["$.a: maxLength lowered to 100 (was 200)"],
        ),
        (
            _object({"a": {"type": "integer", "minimum": 0}}),
            _object({"a": {"type": "integer", "minimum": 1}}),
            ["$.a: minimum raised to 1 (was 0)"],
        ),
        (
            _object({"a": STRING}),
            _object({"a": {"type": "string", "pattern": "^[a-z]+$"}}),
            ["$.a: pattern '^[a-z]+$' (was 'none')"],
        ),
        (
            _object({"a": {"type": "object", "additionalProperties": True}}),
            _object({"a": {"type": "object", "additionalProperties": False}}),
            ["$.a: refuses properties it did not name, which it accepted"],
        ),
        (
            _object({"a": {"type": "array", "items": {}}}),
            _object({"a": {"type": "array", "items": STRING}}),
            ["$.a[]: type narrowed to string (was any)"],
        ),
        (
            {
                "$defs": {"P": _object({"x": STRING, "y": STRING})},
                **_object({"p": {"$ref": "#/$defs/P"}}),
            },
            {"$defs": {"P": _object({"x": STRING})}, **_object({"p": {"$ref": "#/$defs/P"}})},
            ["$.p.y: removed (and unknown properties are refused)"],
        ),
    ],
    ids=[
        "optional field added",
        "field made optional",
        "integer widened to number",
        "annotation changed",
        "enum value added",
        "field removed",
        "field made required",
        "number narrowed to integer",
        "null no longer accepted",
        "enum value removed",
        "max length lowered",
        "minimum raised",
        "pattern added",
        "extra properties refused",
        "array items narrowed",
        "field removed behind a $ref",
    ],
)
def test_incompatibility_rules(old: Schema, new: Schema, expected: list[str]) -> None:
    """Each rule fires on the change it is for, and only on breaking ones."""
    assert incompatibilities(old, new) == expected


def test_the_current_schemas_are_compatible_with_themselves() -> None:
    """The rules have no false positives on the real schemas (anyOf, $defs, enums, formats)."""
    for message_type in MESSAGE_TYPES:
        schema = current_schema(message_type)
        assert incompatibilities(schema, schema) == [], message_type
