"""JSON given on the command line: inline (`--input '{"a": 1}'`), from a file (`@input.json`)
or from standard input (`@-`)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from relayflow.cli.errors import CliError


def read_json(value: str, option: str) -> Any:
    """The JSON value `option` names; `CliError` naming the option, the file and the place at
    fault otherwise."""
    source = f"{option}"
    if value.startswith("@"):
        name = value[1:]
        if name == "-":
            text, source = sys.stdin.read(), f"{option} (standard input)"
        else:
            path = Path(name)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(f"{option}: cannot read {path}: {exc}") from exc
            source = f"{option} ({path})"
    else:
        text = value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{source} is not valid JSON: {exc}") from exc


def read_object(value: str, option: str, what: str) -> dict[str, Any]:
    """As `read_json`, for a value that must be a JSON object (`what` says whose)."""
    data = read_json(value, option)
    if not isinstance(data, dict):
        raise CliError(f"{option} must be a JSON object ({what})")
    return data
