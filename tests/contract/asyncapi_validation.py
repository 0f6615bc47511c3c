"""Check a message as it travelled — exchange, routing key, AMQP properties, headers and body —
against the committed AsyncAPI document, as a team reading only that document would:

    errors = channel_errors(committed_document(), Sent(exchange, routing_key, properties, headers,
                                                      body))

It finds the channel (an exchange and a routing key, `step.run.{body}` matching any body name;
a fanout's channel matching any key), checks that the channel carries the body's `type`, and
validates the body against that message's payload schema (the committed JSON Schema it
references), the headers against its `headers` and the properties against its
`x-amqp-properties`. Names are the default namespace's, as in the document: a message of
another namespace is read with that prefix taken back to `relayflow`.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from aio_pika.abc import AbstractIncomingMessage
from jsonschema import Draft202012Validator

from relayflow.contracts.asyncapi import DEAD_LETTER_MESSAGE, DOCUMENT_FILENAME
from tests.contract.schema_validation import SCHEMA_DIRECTORY, validator_for

DOCUMENT_NAMESPACE = "relayflow"
# A parameter of a channel's address (`{body}`): one name, as the topology's names are.
_PARAMETER = "[A-Za-z][A-Za-z0-9_-]{0,63}"


@dataclass(frozen=True, slots=True)
class Sent:
    """One message as a consumer received it."""

    exchange: str
    routing_key: str
    properties: dict[str, Any]
    headers: dict[str, Any]
    body: bytes

    @classmethod
    def received(cls, message: AbstractIncomingMessage, namespace: str) -> Sent:
        """A message a consumer of `namespace` received, named as the document names things."""
        properties = {
            "message_id": message.message_id,
            "type": message.type,
            "content_type": message.content_type,
            "delivery_mode": None if message.delivery_mode is None else int(message.delivery_mode),
            "user_id": message.user_id,
            "correlation_id": message.correlation_id,
        }
        return cls(
            exchange=in_document_namespace(message.exchange or "", namespace),
            routing_key=message.routing_key or "",
            properties={name: value for name, value in properties.items() if value is not None},
            headers=dict(message.headers),
            body=message.body,
        )


@functools.cache
def committed_document(path: Path = SCHEMA_DIRECTORY / DOCUMENT_FILENAME) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return document


def in_document_namespace(name: str, namespace: str) -> str:
    """`name` (an exchange of `namespace`) as the document spells it."""
    if name == namespace or name.startswith(f"{namespace}."):
        return DOCUMENT_NAMESPACE + name.removeprefix(namespace)
    return name


def _matches(address: str | None, routing_key: str, fanout: bool) -> bool:
    if fanout:
        return True
    if address is None:
        return False
    pattern = re.escape(address).replace(r"\{body\}", _PARAMETER)
    return re.fullmatch(pattern, routing_key) is not None


def _resolve(document: dict[str, Any], ref: str) -> Any:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def find_channel(document: dict[str, Any], exchange: str, routing_key: str) -> str | None:
    """The id of the routing-key channel that `exchange` + `routing_key` is, if any."""
    for channel_id, channel in document["channels"].items():
        amqp = channel["bindings"]["amqp"]
        if amqp["is"] != "routingKey" or amqp["exchange"]["name"] != exchange:
            continue
        if _matches(channel["address"], routing_key, amqp["exchange"]["type"] == "fanout"):
            return str(channel_id)
    return None


def _schema_errors(schema: dict[str, Any], instance: object, what: str) -> list[str]:
    validator = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return [
        f"{what} {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]


def channel_errors(document: dict[str, Any], sent: Sent) -> tuple[str | None, str, list[str]]:
    """(the channel id, the message name, every way `sent` departs from the document)."""
    channel_id = find_channel(document, sent.exchange, sent.routing_key)
    if channel_id is None:
        where = f"{sent.routing_key!r} on exchange {sent.exchange!r}"
        return None, "", [f"no channel of the document is {where}"]
    channel = document["channels"][channel_id]
    body: Any = None
    name = DEAD_LETTER_MESSAGE
    # A dead letter's body is whatever arrived; any other channel's is a message's JSON.
    if channel["messages"].keys() != {DEAD_LETTER_MESSAGE}:
        try:
            body = json.loads(sent.body)
        except ValueError as exc:
            return channel_id, "", [f"body is not JSON: {exc}"]
        if not isinstance(body, dict) or not isinstance(body.get("type"), str):
            return channel_id, "", ["body is not a JSON object with a string `type`"]
        name = body["type"]
    if name not in channel["messages"]:
        carried = ", ".join(channel["messages"])
        return channel_id, name, [f"channel {channel_id} carries {carried}, not {name}"]
    message = _resolve(document, channel["messages"][name]["$ref"])
    errors: list[str] = []
    payload_ref = message["payload"].get("$ref")
    if payload_ref is not None:
        # The committed JSON Schema the message's payload points at.
        validator = validator_for(payload_ref.removesuffix(".schema.json"))
        errors += [
            f"payload {'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(body)
        ]
    if channel.get("parameters") and isinstance(body, dict):
        # `step.run.{body}`: the command's body, or its step name when it has none.
        expected = channel["address"].replace("{body}", body.get("body") or body.get("stepName"))
        if sent.routing_key != expected:
            errors.append(f"routing key {sent.routing_key!r}, but the payload says {expected!r}")
    errors += _schema_errors(message["headers"], sent.headers, "header")
    properties = message.get("bindings", {}).get("amqp", {}).get("x-amqp-properties")
    if properties is not None:
        errors += _schema_errors(properties, sent.properties, "property")
    return channel_id, name, errors
