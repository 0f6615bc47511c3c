"""Schema evolution: what each committed version of each message looks like, and whether the
current schema still accepts it.

Under `tests/contract/fixtures/messages/<Type>/`:

- `v<N>/*.json`: messages as producers of version N send them (`minimal.json`: only what the
  schema requires; `full.json`: every field; others: the shapes worth keeping);
- `v<N>.schema.json`: the JSON Schema of version N as last recorded, the baseline that
  `incompatibilities` compares the current schema with. Record a compatible change with

      .venv/bin/python -m tests.contract.evolution

  which refuses to record one that is not (that needs a new version: README, Schema evolution).

The rules are simple and conservative: the current schema must accept every message the
baseline accepted — no property removed (the models forbid unknown ones), no field newly
required, no type, enum, const, pattern, format or bound narrowed, no branch of a union dropped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from relayflow.contracts import MESSAGE_TYPES
from relayflow.contracts.asyncapi import current_schema_version
from relayflow.contracts.export import message_schema

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "messages"

Schema = dict[str, Any]

# Keys that say what a schema means to a reader, not what it accepts.
_ANNOTATIONS = frozenset({"title", "description", "$comment", "examples", "default", "$id"})
# Keys whose value is a map of names to schemas (where a `title` is a property, not a title).
_SCHEMA_MAPS = frozenset({"properties", "$defs", "patternProperties"})
_LOWER_BOUNDS = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties")
_UPPER_BOUNDS = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties")


def baseline_path(message_type: str, version: int) -> Path:
    return FIXTURES / message_type / f"v{version}.schema.json"


def fixture_directory(message_type: str, version: int) -> Path:
    return FIXTURES / message_type / f"v{version}"


def current_schema(message_type: str) -> Schema:
    return message_schema(message_type, MESSAGE_TYPES[message_type])


def normalized(schema: Any, *, in_map: bool = False) -> Any:
    """`schema` without annotations (titles, descriptions, defaults): what it accepts."""
    if isinstance(schema, dict):
        return {
            key: normalized(value, in_map=key in _SCHEMA_MAPS and not in_map)
            for key, value in schema.items()
            if in_map or key not in _ANNOTATIONS
        }
    if isinstance(schema, list):
        return [normalized(item) for item in schema]
    return schema


def incompatibilities(old: Schema, new: Schema) -> list[str]:
    """Why `new` rejects something `old` accepted (empty: `new` accepts all `old` did)."""
    return list(_Comparison(old, new).compare(old, new, "$"))


class _Comparison:
    def __init__(self, old_root: Schema, new_root: Schema) -> None:
        self._roots = (old_root, new_root)
        self._seen: set[tuple[str, str, str]] = set()

    def _deref(self, side: int, node: Any) -> Any:
        while isinstance(node, dict) and isinstance(node.get("$ref"), str):
            ref: str = node["$ref"]
            if not ref.startswith("#/"):
                raise ValueError(f"only local $refs are compared, not {ref!r}")
            target: Any = self._roots[side]
            for part in ref.removeprefix("#/").split("/"):
                target = target[part.replace("~1", "/").replace("~0", "~")]
            node = target
        return node

    def _branches(self, side: int, node: Any) -> list[Any]:
        node = self._deref(side, node)
        for keyword in ("anyOf", "oneOf"):
            if isinstance(node, dict) and keyword in node:
                rest = {k: v for k, v in node.items() if k != keyword}
                return [
                    branch
                    for option in node[keyword]
                    for branch in self._branches(side, {**rest, **self._deref(side, option)})
                ]
        return [node]

    def compare(self, old: Any, new: Any, path: str) -> Iterator[str]:
        key = (path, json.dumps(old, sort_keys=True), json.dumps(new, sort_keys=True))
        if key in self._seen:  # a recursive schema: this pair is being compared already
            return
        self._seen.add(key)
        new_branches = self._branches(1, new)
        for old_branch in self._branches(0, old):
            found = [list(self._single(old_branch, nb, path)) for nb in new_branches]
            if all(found):
                yield from min(found, key=len)

    def _single(self, old: Any, new: Any, path: str) -> Iterator[str]:
        if new is True or new == {}:
            return
        if old is False:
            return
        if new is False:
            yield f"{path}: accepts nothing now"
            return
        if old is True:
            old = {}
        yield from _type_changes(old, new, path)
        yield from _value_changes(old, new, path)
        for bound in _LOWER_BOUNDS:
            if bound in new and (bound not in old or new[bound] > old[bound]):
                yield f"{path}: {bound} raised to {new[bound]} (was {old.get(bound, 'none')})"
        for bound in _UPPER_BOUNDS:
            if bound in new and (bound not in old or new[bound] < old[bound]):
                yield f"{path}: {bound} lowered to {new[bound]} (was {old.get(bound, 'none')})"
        yield from self._object_changes(old, new, path)
        if "items" in new:
            yield from self.compare(old.get("items", {}), new["items"], f"{path}[]")

    def _object_changes(self, old: Schema, new: Schema, path: str) -> Iterator[str]:
        for name in sorted(set(new.get("required", [])) - set(old.get("required", []))):
            yield f"{path}: now requires {name!r}"
        old_properties: Schema = old.get("properties", {})
        new_properties: Schema = new.get("properties", {})
        old_extra = old.get("additionalProperties", True)
        new_extra = new.get("additionalProperties", True)
        for name, schema in old_properties.items():
            where = f"{path}.{name}"
            if name in new_properties:
                yield from self.compare(schema, new_properties[name], where)
            elif new_extra is False:
                yield f"{where}: removed (and unknown properties are refused)"
            else:
                yield from self.compare(schema, new_extra, where)
        if old_extra is False:
            return
        for name, schema in new_properties.items():
            if name not in old_properties:  # was allowed as an extra property: still must be
                yield from self.compare(old_extra, schema, f"{path}.{name}")
        if new_extra is False:
            yield f"{path}: refuses properties it did not name, which it accepted"
        elif new_extra is not True:
            yield from self.compare(old_extra, new_extra, f"{path}.*")


def _types(schema: Schema) -> set[str] | None:
    if "type" not in schema:
        return None
    value = schema["type"]
    return {value} if isinstance(value, str) else set(value)


def _type_changes(old: Schema, new: Schema, path: str) -> Iterator[str]:
    new_types = _types(new)
    if new_types is None:
        return
    old_types = _types(old)
    if "number" in new_types:
        new_types = new_types | {"integer"}
    if old_types is None or not old_types <= new_types:
        was = "any" if old_types is None else "/".join(sorted(old_types))
        yield f"{path}: type narrowed to {'/'.join(sorted(new_types))} (was {was})"


def _allowed(schema: Schema) -> list[Any] | None:
    if "const" in schema:
        return [schema["const"]]
    if "enum" in schema:
        return list(schema["enum"])
    return None


def _value_changes(old: Schema, new: Schema, path: str) -> Iterator[str]:
    new_values = _allowed(new)
    if new_values is not None:
        old_values = _allowed(old)
        if old_values is None:
            yield f"{path}: now only {new_values!r}"
        else:
            dropped = [value for value in old_values if value not in new_values]
            if dropped:
                yield f"{path}: no longer accepts {dropped!r}"
    for keyword in ("pattern", "format"):
        if keyword in new and new[keyword] != old.get(keyword):
            yield f"{path}: {keyword} {new[keyword]!r} (was {old.get(keyword, 'none')!r})"


def record(message_type: str) -> tuple[str, list[str]]:
    """Record the current schema as its version's baseline, unless it is incompatible with the
    one recorded. Returns what happened and the incompatibilities (then nothing is written)."""
    version = current_schema_version(MESSAGE_TYPES[message_type])
    path = baseline_path(message_type, version)
    schema = current_schema(message_type)
    if path.is_file():
        baseline = json.loads(path.read_text(encoding="utf-8"))
        problems = incompatibilities(baseline, schema)
        if problems:
            return "refused", problems
        if normalized(baseline) == normalized(schema):
            return "unchanged", []
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return "recorded", []


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.contract.evolution",
        description="Record compatible schema changes as their version's baseline.",
    )
    parser.parse_args(argv)
    refused = False
    for message_type in MESSAGE_TYPES:
        outcome, problems = record(message_type)
        if outcome != "unchanged":
            print(f"{message_type}: {outcome}")
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        refused = refused or bool(problems)
    if refused:
        print(
            "incompatible changes need a new schemaVersion (README.md, Schema evolution)",
            file=sys.stderr,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
