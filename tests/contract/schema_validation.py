"""Validate raw wire messages against the committed JSON Schemas, as a non-Python consumer would.

Reusable by any test that captures message bodies (e.g. from a live run):

    from tests.contract.schema_validation import validate_wire_message
    validate_wire_message(message.body)
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator, FormatChecker

SCHEMA_DIRECTORY = Path(__file__).resolve().parents[2] / "schemas"


def _format_checker() -> FormatChecker:
    # jsonschema only checks `date-time` when the optional rfc3339-validator is installed; check
    # it ourselves so that a malformed timestamp fails here too, not only in pydantic.
    fresh = FormatChecker(formats=())
    fresh.checkers = dict(Draft202012Validator.FORMAT_CHECKER.checkers)

    @fresh.checks("date-time", raises=ValueError)
    def _date_time(value: object) -> bool:
        if not isinstance(value, str):
            return True
        parsed = datetime.fromisoformat(value)
        return "T" in value.upper() and parsed.tzinfo is not None

    return fresh


@functools.cache
def validator_for(message_type: str) -> Draft202012Validator:
    path = SCHEMA_DIRECTORY / f"{message_type}.schema.json"
    if not path.is_file():
        raise AssertionError(f"no committed schema for message type {message_type!r} at {path}")
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=_format_checker())


def schema_errors(document: Any) -> list[str]:
    """Every reason the committed schema of `document["type"]` rejects it (empty when valid)."""
    if not isinstance(document, dict) or not isinstance(document.get("type"), str):
        return ["message is not a JSON object with a string `type`"]
    try:
        validator = validator_for(document["type"])
    except AssertionError as exc:
        return [str(exc)]
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def validate_wire_message(body: bytes) -> None:
    """Fail (AssertionError) unless `body` is a message its committed schema accepts."""
    try:
        document = json.loads(body)
    except ValueError as exc:
        raise AssertionError(f"message body is not JSON: {exc}: {body[:200]!r}") from exc
    errors = schema_errors(document)
    if errors:
        raise AssertionError(
            "message does not match its committed schema:\n  " + "\n  ".join(errors)
        )
