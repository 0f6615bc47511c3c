"""What the commands print. Results go to stdout: text for people, or with `--json` JSON for
programs (one object, or one object per line for lists and streams); everything else (progress,
warnings, what was done beside the result) goes to stderr."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from relayflow.amqp.dead_letters import jsonable
from relayflow.cli.follow import Event

__all__ = ["jsonable"]  # also the JSON form of the commands' own values


def write_json(value: Any) -> None:
    """One JSON document on one line."""
    sys.stdout.write(orjson.dumps(jsonable(value)).decode() + "\n")


def write_lines(lines: Iterable[str]) -> None:
    sys.stdout.writelines(line + "\n" for line in lines)
    sys.stdout.flush()


def notice(text: str) -> None:
    sys.stderr.write(f"relayflow: {text}\n")
    sys.stderr.flush()


def warn(text: str) -> None:
    notice(f"warning: {text}")


def table(header: Sequence[str], rows: Iterable[Sequence[str | None]]) -> list[str]:
    """Tab-separated lines (for `cut -f`), `-` for what is missing."""
    return ["\t".join(header)] + ["\t".join(cell or "-" for cell in row) for row in rows]


def compact(value: Any, limit: int = 200) -> str:
    text = orjson.dumps(jsonable(value)).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def error_text(error: Any) -> str:
    """A failure as data (`ErrorView`) in a few words."""
    if not isinstance(error, Mapping):
        return compact(error)
    kind, message = error.get("type"), error.get("message")
    text = f"{kind}: {message}" if kind and message else str(message or kind or compact(error))
    step = error.get("step")
    return f"{text} (step {step})" if step else text


def _event_detail(event: Event) -> str:
    data = event.body.get("data")
    if not isinstance(data, Mapping):
        return ""
    detail = ""
    if "error" in data:
        detail = error_text(data["error"])
        if "nextAttemptAt" in data:
            detail += f"; next attempt at {data['nextAttemptAt']}"
    elif event.event == "signal.received":
        by = data.get("sentBy")
        detail = f"{data.get('signal')}" + (f" from {by}" if by else "")
    elif event.event == "step.sleeping":
        detail = f"until {data.get('wakeAt')}"
    elif "total" in data and "completed" in data:
        detail = f"{data['completed']}/{data['total']} items, {data.get('failed', 0)} failed"
    elif "childWorkflowId" in data:
        detail = f"child {data['childWorkflowId']}"
    elif event.event == "workflow.completed":
        detail = f"output {compact(data.get('output'))}"
    return detail


def event_line(event: Event) -> str:
    """One event as `tail` prints it: seq, time, event, step (and item), detail."""
    body = event.body
    at = str(body.get("createdAt") or "")
    step = body.get("stepName") or ""
    if body.get("stepKey"):
        step = f"{step}[{body['stepKey']}]"
    parts = [f"{event.seq:>4}", at, f"{event.event:<26}", str(step)]
    detail = _event_detail(event)
    if detail:
        parts.append(detail)
    return "  ".join(parts).rstrip()


def status_lines(view: Mapping[str, Any]) -> list[str]:
    """A workflow's state (`WorkflowView`) as `status` prints it."""
    version = f" (version {view['version']})" if view.get("version") else ""
    lines = [f"{view.get('workflowId')}  {view.get('name')}{version}  {view.get('status')}"]
    for label, key in (
        ("created", "createdAt"),
        ("updated", "updatedAt"),
        ("finished", "finishedAt"),
    ):
        if view.get(key):
            lines.append(f"  {label:<9}{view[key]}")
    if view.get("parentWorkflowId"):
        lines.append(f"  {'parent':<9}{view['parentWorkflowId']}")
    if view.get("error"):
        lines.append(f"  {'error':<9}{error_text(view['error'])}")
    if view.get("output") is not None:
        lines.append(f"  {'output':<9}{compact(view['output'])}")
    if view.get("signals"):
        lines.append(f"  {'signals':<9}{', '.join(view['signals'])}")
    steps = view.get("steps") or []
    lines.append(f"  steps ({len(steps)}):")
    for step in steps:
        if not isinstance(step, Mapping):
            continue
        extra = []
        if step.get("attempts"):
            extra.append(f"attempts {step['attempts']}")
        if step.get("compensation"):
            extra.append(str(step["compensation"]))
        progress = step.get("progress")
        if isinstance(progress, Mapping):
            extra.append(f"{progress.get('completed')}/{progress.get('total')} items")
        if step.get("error"):
            extra.append(error_text(step["error"]))
        lines.append(
            f"    {step.get('name')!s:<20} {step.get('status')!s:<10} {'; '.join(extra)}".rstrip()
        )
    return lines


def summary_rows(items: Iterable[Mapping[str, Any]]) -> list[list[str | None]]:
    """The rows of `workflows list`."""
    return [
        [
            str(item.get("workflowId")),
            str(item.get("name")),
            str(item.get("status")),
            f"{item.get('stepsCompleted')}/{item.get('stepsTotal')}",
            ",".join(item.get("activeSteps") or []) or None,
            item.get("createdAt"),
            item.get("updatedAt"),
        ]
        for item in items
    ]
