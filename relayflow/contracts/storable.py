"""What PostgreSQL can store, checked before anything is accepted.

jsonb and text refuse the NUL character (U+0000) and text that is not valid UTF-8 (a lone
surrogate). A value holding either would be accepted by JSON Schema yet fail at the insert, after
the gateway had answered 202 — a false accept. Every entry point (HTTP and broker) runs
`unstorable` on what it is about to store and refuses it naming the place.

The size limit lives here too, so that both entry points apply the same one.
"""

from __future__ import annotations

from typing import Any, Final

import orjson

# The largest workflow input, in bytes of compact JSON, whether it comes by HTTP or the broker.
# `RELAYFLOW_MAX_INPUT_BYTES` overrides it for a deployment (see `relayflow.settings`).
DEFAULT_MAX_INPUT_BYTES: Final = 1024 * 1024

# How NUL appears in JSON text: a raw NUL byte is not valid JSON, so this escape is the only way.
_ESCAPED_NUL: Final = b"\\u0000"


def _text_problem(text: str) -> str | None:
    if "\x00" in text:
        return "contains the NUL character (\\u0000), which cannot be stored"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "is not valid UTF-8 (it holds a lone surrogate), so it cannot be stored"
    return None


Path = tuple[str | int, ...]


def unstorable(value: Any, path: Path = ()) -> tuple[Path, str] | None:
    """The first place in `value` that PostgreSQL cannot store, as (path, reason), or None."""
    if isinstance(value, str):
        problem = _text_problem(value)
        return (path, problem) if problem else None
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and (problem := _text_problem(key)):
                return (*path, key), f"the key {problem.removeprefix('is ')}"
            found = unstorable(item, (*path, key))
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = unstorable(item, (*path, index))
            if found:
                return found
    return None


def describe_path(path: Path) -> str:
    return ".".join(str(part) for part in path) or "<root>"


def body_may_be_unstorable(body: bytes) -> bool:
    """A cheap first look at JSON bytes: False means no string in them holds NUL. (Lone
    surrogates are refused by the JSON parser itself.)"""
    return _ESCAPED_NUL in body


def encoded_size(value: Any) -> int:
    return len(orjson.dumps(value))
