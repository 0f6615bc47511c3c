"""The workflow page's signal forms: one small form per signal the definition declares, derived
from the JSON Schema of the signal's model, and posted by the page's script to
`POST /workflows/{id}/signals/{name}`.

Each property becomes one control: a string an input (email, length limits as the schema says),
an integer or number a number input, an enum a select, a boolean a checkbox, anything else a JSON
text area. A model with exactly one boolean field gets a pair of buttons for it instead (the two
answers of a decision: `{approved: bool, by: str}` is an Approve/Reject pair). The form only
helps: the gateway validates the payload and the page shows its 422 next to the fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from html import escape
from typing import Any, Literal

import orjson
from pydantic import BaseModel

from relayflow.model import WorkflowStatus
from relayflow.workflow import WorkflowDefinition

Kind = Literal["boolean", "integer", "number", "string", "choice", "json"]
# The two answers of a boolean decision, by the field's name; other names get "<label>: yes/no".
ANSWERS: Mapping[str, tuple[str, str]] = {
    "approved": ("Approve", "Reject"),
    "approve": ("Approve", "Reject"),
    "accepted": ("Accept", "Decline"),
    "accept": ("Accept", "Decline"),
    "confirmed": ("Confirm", "Decline"),
    "confirm": ("Confirm", "Decline"),
}


def esc(value: object) -> str:
    return escape(str(value), quote=True)


@dataclass(frozen=True, slots=True)
class FormField:
    """One property of a signal's model, as a control: `name` is its JSON key (the alias)."""

    name: str
    label: str
    kind: Kind
    required: bool
    description: str = ""
    # Attributes of the control the schema gives (maxlength, min, max, step, type).
    attrs: dict[str, str] = field(default_factory=dict)
    choices: tuple[Any, ...] = ()
    default: Any = None


def form_fields(model: type[BaseModel]) -> list[FormField]:
    """The controls of a model's form, in field order."""
    schema = model.model_json_schema(by_alias=True)
    defs: dict[str, Any] = schema.get("$defs", {})
    required = set(schema.get("required", []))
    return [
        _field(name, _resolve(node, defs), defs, name in required)
        for name, node in schema.get("properties", {}).items()
    ]


def _resolve(node: Any, defs: Mapping[str, Any]) -> dict[str, Any]:
    """The node behind a local `$ref`, keeping the title and description of the reference."""
    if not isinstance(node, dict):
        return {}
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"), {})
        extra = {key: value for key, value in node.items() if key != "$ref"}
        return {**target, **extra}
    return node


def _field(name: str, node: dict[str, Any], defs: Mapping[str, Any], required: bool) -> FormField:
    label = str(node.get("title") or name)
    description = str(node.get("description") or "")
    default = node.get("default")
    branches = node.get("anyOf")
    if isinstance(branches, list):
        # Optional[X] is anyOf [X, null]: the control is X's, and it may be left empty.
        others = [
            _resolve(branch, defs)
            for branch in branches
            if not (isinstance(branch, dict) and branch.get("type") == "null")
        ]
        if len(others) == 1:
            node = {**others[0], **{k: v for k, v in node.items() if k != "anyOf"}}
        else:
            return FormField(name, label, "json", required, description, default=default)
    if "enum" in node or "const" in node:
        values = tuple(node["enum"]) if "enum" in node else (node["const"],)
        return FormField(
            name, label, "choice", required, description, choices=values, default=default
        )
    kind = node.get("type")
    if kind == "boolean":
        return FormField(name, label, "boolean", required, description, default=default)
    if kind in ("integer", "number"):
        attrs = {"step": "1" if kind == "integer" else "any"}
        for key, attr in (("minimum", "min"), ("maximum", "max")):
            if key in node:
                attrs[attr] = str(node[key])
        return FormField(name, label, kind, required, description, attrs, default=default)
    if kind == "string":
        attrs = {"type": "email" if node.get("format") == "email" else "text"}
        for key, attr in (("maxLength", "maxlength"), ("minLength", "minlength")):
            if key in node:
                attrs[attr] = str(node[key])
        return FormField(name, label, "string", required, description, attrs, default=default)
    return FormField(name, label, "json", required, description, default=default)


def decision_field(fields: list[FormField]) -> FormField | None:
    """The one boolean field whose two answers become the form's buttons, if there is one."""
    booleans = [item for item in fields if item.kind == "boolean"]
    return booleans[0] if len(booleans) == 1 else None


def _control(workflow_signal: str, item: FormField) -> str:
    control_id = f"sig-{workflow_signal}-{item.name}"
    data = (
        f'data-field="{esc(item.name)}" data-kind="{esc(item.kind)}"'
        f"{' data-required' if item.required else ''}"
    )
    required = " required" if item.required else ""
    if item.kind == "boolean":
        checked = " checked" if item.default is True else ""
        control = (
            f'<label class="check" for="{esc(control_id)}"><input type="checkbox" '
            f'id="{esc(control_id)}" name="{esc(item.name)}" {data}{checked}> '
            f"{esc(item.label)}</label>"
        )
    else:
        head = f'<label for="{esc(control_id)}">{esc(item.label)}</label>'
        if item.kind == "choice":
            options = "" if item.required else '<option value="">—</option>'
            options += "".join(
                f'<option data-json="{esc(orjson.dumps(value).decode())}"'
                f"{' selected' if value == item.default else ''}>{esc(value)}</option>"
                for value in item.choices
            )
            control = (
                f'{head}<select id="{esc(control_id)}" name="{esc(item.name)}" {data}{required}>'
                f"{options}</select>"
            )
        elif item.kind == "json":
            control = (
                f'{head}<textarea id="{esc(control_id)}" name="{esc(item.name)}" rows="3" '
                f'spellcheck="false" placeholder="JSON" {data}{required}></textarea>'
            )
        else:
            attrs = {"type": "number", **item.attrs} if item.kind != "string" else item.attrs
            shown = "".join(f' {esc(key)}="{esc(value)}"' for key, value in attrs.items())
            value = (
                f' value="{esc(item.default)}"'
                if item.default is not None and not isinstance(item.default, (dict, list))
                else ""
            )
            control = (
                f'{head}<input id="{esc(control_id)}" name="{esc(item.name)}"{shown}{value} '
                f'autocomplete="off" {data}{required}>'
            )
    hint = f'<p class="small muted">{esc(item.description)}</p>' if item.description else ""
    return f'{control}{hint}<p class="field-error" data-for="{esc(item.name)}"></p>'


def _buttons(signal: str, decision: FormField | None) -> str:
    if decision is None:
        return f'<button type="submit" class="btn primary">Send {esc(signal)}</button>'
    yes, no = ANSWERS.get(
        decision.name.lower(), (f"{decision.label}: yes", f"{decision.label}: no")
    )
    return (
        f'<button type="submit" class="btn primary" data-set="{esc(decision.name)}" '
        f'data-value="true">{esc(yes)}</button>'
        f'<button type="submit" class="btn danger" data-set="{esc(decision.name)}" '
        f'data-value="false">{esc(no)}</button>'
    )


def signal_form(signal: str, model: type[BaseModel]) -> str:
    fields = form_fields(model)
    decision = decision_field(fields)
    controls = "".join(_control(signal, item) for item in fields if item is not decision)
    return (
        f'<form class="signal-form" data-signal="{esc(signal)}" novalidate>'
        f"<h3>{esc(signal)}</h3>{controls}"
        '<p class="form-error" data-form-error role="alert"></p>'
        f'<div class="row-actions">{_buttons(signal, decision)}</div></form>'
    )


def signal_section(status: WorkflowStatus, definition: WorkflowDefinition | None) -> str:
    """The page's signals card, or nothing when the definition declares none. Shown while the
    workflow runs; the page's script hides it when it finishes (and shows it on a retry)."""
    if definition is None or not definition.signals:
        return ""
    forms = "".join(signal_form(name, model) for name, model in sorted(definition.signals.items()))
    hidden = "" if status is WorkflowStatus.RUNNING else " hidden"
    return f"""<section class="card" id="signals" aria-labelledby="signals-title"{hidden}>
  <div class="card-head"><h2 id="signals-title">Signals</h2></div>
  <p class="small muted">The workflow declares these signals; a waiting step takes one, or it is
  kept until one does.</p>
  <label for="signal-sender">Sent by <span class="muted">(optional, shown in the events)</span>
  </label>
  <input id="signal-sender" maxlength="200" autocomplete="name" spellcheck="false">
  <div class="signal-forms">{forms}</div>
</section>"""
