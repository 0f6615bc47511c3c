"""The JSON Schema of a workflow's input as the gateway really applies it.

A workflow's input model says what its author wants; the gateway refuses a little more, and the
OpenAPI document must say so, or clients (and fuzzers) that trust it get refusals they could not
foresee:

- no string and no object key may hold NUL (U+0000): PostgreSQL cannot store it
  (`relayflow.contracts.unstorable`), so every string gets a pattern that excludes it, every
  object's keys too, and a value the model leaves open (`Any`) becomes `StorableJson`, any JSON
  value without NUL;
- pydantic's `EmailStr` is checked by email-validator, which refuses the special-use domains of
  RFC 6761 (`.test`, `.localhost`, …) that JSON Schema's `format: email` allows: those are
  excluded by a pattern built from email-validator's own list.
"""

from __future__ import annotations

from typing import Any, Final

import email_validator

NO_NUL: Final = "^[^\\x00]*$"
STORABLE_JSON: Final = "StorableJson"
# Keywords that only annotate: a schema of nothing else accepts any value.
_ANNOTATIONS = frozenset({"title", "description", "default", "examples", "deprecated"})


def storable_json(ref_template: str) -> dict[str, Any]:
    """The schema of any JSON value PostgreSQL can store (strings and keys without NUL)."""
    ref = {"$ref": ref_template.format(model=STORABLE_JSON)}
    return {
        "title": STORABLE_JSON,
        "description": (
            "Any JSON value whose strings and object keys hold no NUL character (U+0000), "
            "which PostgreSQL cannot store."
        ),
        "anyOf": [
            {"type": ["null", "boolean", "number"]},
            {"type": "string", "pattern": NO_NUL},
            {"type": "array", "items": ref},
            {"type": "object", "propertyNames": {"pattern": NO_NUL}, "additionalProperties": ref},
        ],
    }


def as_applied(schema: Any, ref_template: str) -> Any:
    """`schema` (a model's, pydantic's output) with the gateway's own refusals added."""
    if schema is True or (isinstance(schema, dict) and set(schema) <= _ANNOTATIONS):
        extra = schema if isinstance(schema, dict) else {}
        return {**extra, "$ref": ref_template.format(model=STORABLE_JSON)}
    if not isinstance(schema, dict):
        return schema
    node = {key: _children(key, value, ref_template) for key, value in schema.items()}
    types = node.get("type")
    if types == "string" or (isinstance(types, list) and "string" in types):
        _require(node, NO_NUL)
        if node.get("format") == "email":
            node["allOf"] = [*node.get("allOf", []), {"not": {"pattern": special_use_domains()}}]
    if (types == "object" or "properties" in node) and node.get(
        "additionalProperties"
    ) is not False:
        node["propertyNames"] = {"pattern": NO_NUL}
    return node


def _children(key: str, value: Any, ref_template: str) -> Any:
    if key in ("properties", "patternProperties", "$defs") and isinstance(value, dict):
        return {name: as_applied(item, ref_template) for name, item in value.items()}
    if key in ("items", "additionalProperties", "not"):
        return as_applied(value, ref_template)
    if key in ("anyOf", "oneOf", "allOf", "prefixItems") and isinstance(value, list):
        return [as_applied(item, ref_template) for item in value]
    return value


def _require(node: dict[str, Any], pattern: str) -> None:
    """Add `pattern` to `node`, beside any pattern it has (one keyword holds one pattern)."""
    if "pattern" not in node:
        node["pattern"] = pattern
    elif node["pattern"] != pattern:
        node["allOf"] = [*node.get("allOf", []), {"pattern": pattern}]


def special_use_domains() -> str:
    """An ECMA-262 pattern matching addresses on the domains email-validator refuses, in any
    letter case (JSON Schema patterns take no flags)."""
    names = "|".join(_any_case(name) for name in sorted(email_validator.SPECIAL_USE_DOMAIN_NAMES))
    return f"@(?:[^@]*\\.)?(?:{names})$"


def _any_case(name: str) -> str:
    return "".join(
        f"[{char.lower()}{char.upper()}]" if char.isalpha() else "\\." if char == "." else char
        for char in name
    )
