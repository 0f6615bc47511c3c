"""The broker contract as an AsyncAPI 3.0 document: `schemas/asyncapi.yaml`, by `relayflow-schemas`.

Built from three sources of truth, so that it cannot say something the code does not do:
the message registry (`MESSAGE_TYPES`, each payload a `$ref` to its committed JSON Schema), the
topology (`relayflow.topology`: exchanges, routing keys, queues and their arguments, for the
default namespace) and `MAY_SEND` (which role may send which message: one send operation per
pair). What no code states as data — which routing key each message travels on, and who reads
each queue — is the two tables below; tests/contract/test_asyncapi.py checks them against the
topology and the consumers' routing.

Channels come in two kinds, as AMQP 0-9-1 has them: a routing key on an exchange (where senders
publish) and a queue (where receivers consume); each queue channel lists the keys bound to it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, get_args

from relayflow.amqp.senders import MAY_SEND, Role
from relayflow.amqp.settle import DEAD_AT_HEADER, EXCHANGE_HEADER, QUEUE_HEADER, REASON_HEADER
from relayflow.contracts.messages import MESSAGE_TYPES, SCHEMA_VERSION, BaseMessage
from relayflow.topology import (
    CONTROL_KEY,
    EXTERNAL_REQUEST_KEY,
    RESULT_KEY,
    SIGNAL_KEY,
    START_KEY,
    Topology,
    step_key,
)
from relayflow.tracing import TRACEPARENT

ASYNCAPI_VERSION: Final = "3.0.0"
AMQP_BINDING_VERSION: Final = "0.3.0"
DOCUMENT_FILENAME: Final = "asyncapi.yaml"
# The namespace the document spells out; `<ns>` in its descriptions is RELAYFLOW_NAMESPACE.
DEFAULT_NAMESPACE: Final = "relayflow"
# The step command channel is one per step body: its name is this parameter.
BODY_PARAMETER: Final = "body"
_BODY = "{" + BODY_PARAMETER + "}"
# The routing key the fanouts are published with (a fanout ignores it).
FANOUT_KEY: Final = ""
SCHEMA_VERSION_HEADER: Final = "x-schema-version"
PERSISTENT, TRANSIENT = 2, 1


def message_schema_file(message_type: str) -> str:
    """The committed JSON Schema of a message, relative to the document (both in `schemas/`)."""
    return f"{message_type}.schema.json"


# -- what travels where --------------------------------------------------------------------------

# The routing key each message is published with on the main exchange; FANOUT_KEY: the events
# fanout. ExternalReply goes to its request's `replyTo`, which must be one of the orchestrator's
# keys: the applications here use workflow.signal.
ROUTES: Final[Mapping[str, str]] = {
    "StartWorkflow": START_KEY,
    "SignalWorkflow": SIGNAL_KEY,
    "ExternalReply": SIGNAL_KEY,
    "CancelWorkflow": CONTROL_KEY,
    "RetryWorkflow": CONTROL_KEY,
    "StepResult": RESULT_KEY,
    "StepCommand": step_key(_BODY),
    "ExternalRequest": EXTERNAL_REQUEST_KEY,
    "WorkflowEventBatch": FANOUT_KEY,
    # The single-event form the gateway still accepts on the fanout; relayflow sends batches.
    "WorkflowEvent": FANOUT_KEY,
}


@dataclass(frozen=True, slots=True)
class Party:
    """Someone who sends or receives: `role` is its MAY_SEND role when it sends."""

    id: str
    title: str
    role: Role | None = None


ORCHESTRATOR = Party(
    "orchestrator",
    "the orchestrator — and step services that advance workflows themselves "
    "(RELAYFLOW_STEP_ADVANCE), which act as it does",
    Role.ENGINE,
)
STEP_SERVICE = Party("stepService", "a step service running step bodies", Role.STEP)
GATEWAY = Party("gateway", "the HTTP gateway", Role.START)
PUBLISHER = Party(
    "externalPublisher",
    "an external publisher: any program whose broker user has the start role "
    "(`relayflow … --broker`, another team's service)",
    Role.START,
)
EXTERNAL_SYSTEM = Party(
    "externalSystem", "the external system that answers ExternalRequests", Role.EXTERNAL
)
OPERATOR = Party("operator", "an operator, with `relayflow dead-letters list|show|redrive`")
CONSUMER = Party(
    "anyConsumer",
    "every relayflow consumer (a message it can never handle), and RabbitMQ itself "
    "(a work queue's x-dead-letter-exchange, past its x-delivery-limit)",
)
SENDERS: Final = (ORCHESTRATOR, STEP_SERVICE, GATEWAY, PUBLISHER, EXTERNAL_SYSTEM)

# When each sender sends what MAY_SEND lets it.
_ENGINE_BODY = "a step body it runs (a local step, or one on an advancing step service)"
_CLI = "`relayflow workflows {0} --broker`, or any program"
SEND_NOTES: Final[Mapping[tuple[str, str], str]] = {
    ("StartWorkflow", "orchestrator"): "a child step starts its workflow",
    ("StartWorkflow", "gateway"): "POST /workflows/{name}",
    ("StartWorkflow", "externalPublisher"): "any program starting a workflow from the broker",
    ("SignalWorkflow", "orchestrator"): _ENGINE_BODY,
    ("SignalWorkflow", "gateway"): "POST /workflows/{id}/signals/{name}",
    ("SignalWorkflow", "externalPublisher"): _CLI.format("signal"),
    ("CancelWorkflow", "orchestrator"): "stops a child its parent step no longer waits for",
    ("CancelWorkflow", "gateway"): "POST /workflows/{id}/cancel",
    ("CancelWorkflow", "externalPublisher"): _CLI.format("cancel"),
    ("RetryWorkflow", "orchestrator"): _ENGINE_BODY,
    ("RetryWorkflow", "gateway"): "POST /workflows/{id}/retry",
    ("RetryWorkflow", "externalPublisher"): _CLI.format("retry"),
    ("StepResult", "orchestrator"): (
        "a child workflow's outcome, to its parent's step; the outcome of a step an advancing "
        "step service ran"
    ),
    ("StepResult", "stepService"): "the outcome of each StepCommand",
    ("ExternalReply", "orchestrator"): _ENGINE_BODY,
    ("ExternalReply", "externalSystem"): "its answer to an ExternalRequest, to the replyTo",
    ("StepCommand", "orchestrator"): "dispatches a step invocation to its body's queue",
    ("WorkflowEventBatch", "orchestrator"): "the events of one transaction, after it commits",
    ("ExternalRequest", "orchestrator"): _ENGINE_BODY,
    ("ExternalRequest", "stepService"): "a step body's request to the external system",
}


@dataclass(frozen=True, slots=True)
class Queue:
    """A queue, who reads it, and the routing keys bound to it."""

    channel: str
    name: str | None  # None: server-named
    receiver: Party
    keys: tuple[str, ...]
    exchange: str
    summary: str
    arguments: Mapping[str, str | int]
    durable: bool = True
    exclusive: bool = False
    auto_delete: bool = False


# Channel ids of the routing keys on the main exchange.
KEY_CHANNELS: Final[Mapping[str, str]] = {
    START_KEY: "workflowStart",
    SIGNAL_KEY: "workflowSignal",
    CONTROL_KEY: "workflowControl",
    RESULT_KEY: "stepResult",
    step_key(_BODY): "stepRun",
    EXTERNAL_REQUEST_KEY: "externalRequest",
}
KEY_SUMMARIES: Final[Mapping[str, str]] = {
    START_KEY: "Starts of workflows (top-level and children).",
    SIGNAL_KEY: "Signals to running workflows, and external systems' replies (their replyTo).",
    CONTROL_KEY: "Cancel and retry requests.",
    RESULT_KEY: "Step results: a step invocation's outcome, or a child workflow's.",
    step_key(_BODY): "Step commands for one step body.",
    EXTERNAL_REQUEST_KEY: "Requests to the external system.",
}
EVENTS_CHANNEL: Final = "workflowEvents"
DEAD_LETTER_CHANNEL: Final = "deadLetters"
DEAD_LETTER_MESSAGE: Final = "DeadLetter"


def queues(topology: Topology) -> list[Queue]:
    """Every queue of the topology, with its bindings (from `Topology.queue_bindings`)."""
    bindings = topology.queue_bindings([_BODY])
    work = topology.work_queue_arguments()
    work_arguments = {k: v for k, v in work.items() if isinstance(v, str | int)}
    readers = {
        topology.orchestrator_queue: (
            "orchestratorQueue",
            ORCHESTRATOR,
            "Everything that advances a workflow; the orchestrator dispatches by `type`.",
        ),
        topology.step_queue(_BODY): (
            "stepQueue",
            STEP_SERVICE,
            "The step commands of one step body, for the step services serving it.",
        ),
        topology.external_queue: (
            "externalQueue",
            EXTERNAL_SYSTEM,
            "Requests for the external system.",
        ),
    }
    found = [
        Queue(
            channel,
            name,
            receiver,
            tuple(bindings[name]),
            topology.exchange,
            summary,
            work_arguments,
        )
        for name, (channel, receiver, summary) in readers.items()
    ]
    missing = set(bindings) - set(readers)
    if missing:  # a queue added to the topology must be given its reader here
        raise ValueError(f"no reader documented for queue(s) {', '.join(sorted(missing))}")
    return [
        *found,
        Queue(
            "gatewayEventsQueue",
            None,
            GATEWAY,
            (FANOUT_KEY,),
            topology.events_exchange,
            "One server-named queue per gateway replica, living as long as its connection: each "
            "replica receives every event for its own SSE subscribers.",
            {"x-queue-type": "classic"},
            durable=False,
            exclusive=True,
            auto_delete=True,
        ),
        Queue(
            "deadLetterQueue",
            topology.dead_letter_queue,
            OPERATOR,
            (FANOUT_KEY,),
            topology.dead_letter_exchange,
            "Every dead letter, kept until an operator looks at it or re-drives it.",
            {k: v for k, v in topology.queue_arguments().items() if isinstance(v, str | int)},
        ),
    ]


# -- the document -------------------------------------------------------------------------------


def schema_versions(model: type[BaseMessage]) -> tuple[int, ...]:
    """The schemaVersions `model` accepts (its `schemaVersion` field's Literal)."""
    versions = get_args(model.model_fields["schema_version"].annotation)
    return tuple(sorted(int(v) for v in versions))


def current_schema_version(model: type[BaseMessage]) -> int:
    """The schemaVersion `model` is sent with today (its field's default)."""
    default = model.model_fields["schema_version"].default
    assert isinstance(default, int)
    return default


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


def _doc(model: type[BaseMessage]) -> str:
    return " ".join((model.__doc__ or "").split())


def _headers(model: type[BaseMessage]) -> dict[str, Any]:
    versions = list(schema_versions(model))
    return {
        "type": "object",
        "description": "AMQP application headers.",
        "properties": {
            SCHEMA_VERSION_HEADER: {
                "type": "integer",
                "enum": versions,
                "description": (
                    "The body's schemaVersion, sent by every relayflow publisher. Consumers go "
                    "by the body's `schemaVersion`; a publisher may leave the header out."
                ),
            },
            TRACEPARENT: {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
                "description": (
                    "W3C trace context of the span that sent it, while tracing is on (OTEL_*); "
                    "consumers continue that trace. Optional."
                ),
            },
        },
    }


def _amqp_properties(message_type: str, correlated: bool, persistent: bool) -> dict[str, Any]:
    """The AMQP basic properties a relayflow publisher sets, as a JSON Schema (an extension:
    AMQP bindings 0.3.0 have no field for them)."""
    properties: dict[str, Any] = {
        "message_id": {"type": "string", "description": "The body's `messageId`."},
        "type": {"const": message_type, "description": "The body's `type`."},
        "content_type": {"const": "application/json"},
        "delivery_mode": {
            "const": PERSISTENT if persistent else TRANSIENT,
            "description": (
                "2: persistent, like every work message."
                if persistent
                else "1: transient; what a broadcast carries is also in PostgreSQL."
            ),
        },
        "user_id": {
            "type": "string",
            "description": (
                "The broker user the sender connected as (RabbitMQ refuses any other value). "
                "Where senders are checked (RELAYFLOW_BROKER_SENDERS) it is required, and its "
                "role must be one MAY_SEND allows this message (see the send operations)."
            ),
        },
    }
    required = ["message_id", "type", "content_type", "delivery_mode"]
    if correlated:
        properties["correlation_id"] = {
            "type": "string",
            "description": "The body's `correlationId`.",
        }
        required.append("correlation_id")
    return {
        "type": "object",
        "description": (
            "What every relayflow publisher sets. relayflow's consumers read only the body and "
            "require none of them (but `user_id` where senders are checked): another program "
            "may leave them out. `message_id` is what `relayflow dead-letters` lists, shows and "
            "redrives by, so set it to the body's `messageId`."
        ),
        "properties": properties,
        "required": required,
    }


def _message(message_type: str, model: type[BaseMessage]) -> dict[str, Any]:
    correlated = "correlation_id" in model.model_fields
    persistent = ROUTES[message_type] != FANOUT_KEY
    message: dict[str, Any] = {
        "name": message_type,
        "title": message_type,
        "summary": _doc(model),
        "contentType": "application/json",
        "headers": _headers(model),
        "payload": {"$ref": message_schema_file(message_type)},
    }
    if correlated:
        message["correlationId"] = {
            "description": "Echoed from the request by its reply.",
            "location": "$message.payload#/correlationId",
        }
    message["bindings"] = {
        "amqp": {
            "messageType": message_type,
            "bindingVersion": AMQP_BINDING_VERSION,
            "x-amqp-properties": _amqp_properties(message_type, correlated, persistent),
        }
    }
    return message


def _dead_letter_message() -> dict[str, Any]:
    return {
        "name": DEAD_LETTER_MESSAGE,
        "title": "Dead letter",
        "summary": (
            "A message no consumer could ever handle (invalid JSON or schema, a refused sender, "
            "unroutable), or one past its queue's delivery limit: its body and properties as "
            "they arrived, with the reason in the headers."
        ),
        "headers": {
            "type": "object",
            "description": "The message's own headers, and these.",
            "properties": {
                REASON_HEADER: {"type": "string", "description": "Why it was dead-lettered."},
                QUEUE_HEADER: {"type": "string", "description": "The routing key it came with."},
                EXCHANGE_HEADER: {"type": "string", "description": "The exchange it came to."},
                DEAD_AT_HEADER: {
                    "type": "string",
                    "format": "date-time",
                    "description": "When it was dead-lettered.",
                },
                "x-death": {
                    "type": "array",
                    "description": "Set by RabbitMQ when it dead-lettered the message itself.",
                },
            },
        },
        "payload": {"description": "The body as it arrived: usually one of the messages here."},
    }


def _key_channel(key: str, topology: Topology, types: list[str]) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "address": key,
        "title": f"{topology.exchange} / {key}",
        "summary": KEY_SUMMARIES[key],
        "messages": {t: _ref("components", "messages", t) for t in types},
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": topology.exchange,
                    "type": "direct",
                    "durable": True,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }
    if _BODY in key:
        channel["parameters"] = {BODY_PARAMETER: _body_parameter()}
    return channel


def _body_parameter() -> dict[str, Any]:
    return {
        "description": (
            "The step body: the command's `body`, or its `stepName` when it has none (a name "
            "matching ^[A-Za-z][A-Za-z0-9_-]{0,63}$)."
        ),
        "examples": ["validate"],
    }


def _fanout_channel(
    exchange: str, address: str | None, summary: str, messages: dict[str, Any]
) -> dict[str, Any]:
    key = "routing key ''" if address == FANOUT_KEY else "the message's original routing key"
    return {
        "address": address,
        "title": f"{exchange} (fanout)",
        "summary": summary,
        "description": f"Published to the fanout `{exchange}` with {key}, which it ignores.",
        "messages": messages,
        "bindings": {
            "amqp": {
                "is": "routingKey",
                "exchange": {
                    "name": exchange,
                    "type": "fanout",
                    "durable": True,
                    "autoDelete": False,
                    "vhost": "/",
                },
                "bindingVersion": AMQP_BINDING_VERSION,
            }
        },
    }


def _queue_channel(queue: Queue, messages: dict[str, Any]) -> dict[str, Any]:
    bound = ", ".join(f"`{k}`" for k in queue.keys) if queue.keys != (FANOUT_KEY,) else "all"
    channel: dict[str, Any] = {
        "address": queue.name,
        "title": queue.name or "(server-named)",
        "summary": queue.summary,
        "description": f"Bound to `{queue.exchange}`, routing keys: {bound}.",
        "messages": messages,
        "bindings": {
            "amqp": {
                "is": "queue",
                "queue": {
                    **({"name": queue.name} if queue.name is not None else {}),
                    "durable": queue.durable,
                    "exclusive": queue.exclusive,
                    "autoDelete": queue.auto_delete,
                    "vhost": "/",
                },
                "bindingVersion": AMQP_BINDING_VERSION,
                # RabbitMQ's queue arguments: its type and dead-lettering.
                "x-arguments": dict(queue.arguments),
                "x-bindings": [
                    {"exchange": queue.exchange, "routingKey": key} for key in queue.keys
                ],
            }
        },
    }
    if queue.name is not None and _BODY in queue.name:
        channel["parameters"] = {BODY_PARAMETER: _body_parameter()}
    return channel


def _types_on(key: str) -> list[str]:
    return [t for t in MESSAGE_TYPES if ROUTES[t] == key]


def _send_channel(message_type: str) -> str:
    key = ROUTES[message_type]
    return EVENTS_CHANNEL if key == FANOUT_KEY else KEY_CHANNELS[key]


def _operation_bindings(persistent: bool) -> dict[str, Any]:
    """Work messages are persistent and mandatory (unroutable is an error); broadcasts neither."""
    return {
        "amqp": {
            "deliveryMode": PERSISTENT if persistent else TRANSIENT,
            "mandatory": persistent,
            "bindingVersion": AMQP_BINDING_VERSION,
        }
    }


def send_operation_id(sender: Party, message_type: str) -> str:
    return f"{sender.id}Sends{message_type}"


def receive_operation_id(queue: Queue) -> str:
    return f"{queue.receiver.id}Receives{queue.channel[0].upper()}{queue.channel[1:]}"


def _operations(all_queues: list[Queue]) -> dict[str, Any]:
    operations: dict[str, Any] = {}
    for message_type in MESSAGE_TYPES:
        roles = MAY_SEND.get(message_type, frozenset())
        channel = _send_channel(message_type)
        persistent = ROUTES[message_type] != FANOUT_KEY
        for sender in SENDERS:
            if sender.role not in roles:
                continue
            operation: dict[str, Any] = {
                "action": "send",
                "channel": _ref("channels", channel),
                "title": f"{sender.id} sends {message_type}",
                "summary": f"Sent by {sender.title}: {SEND_NOTES[message_type, sender.id]}.",
                "description": (
                    f"A broker user of the `{sender.role}` role may send a {message_type} "
                    "(MAY_SEND, relayflow/amqp/senders.py)."
                ),
                "messages": [_ref("channels", channel, "messages", message_type)],
                "bindings": _operation_bindings(persistent),
                "tags": [{"name": sender.id}, {"name": f"role:{sender.role}"}],
                "x-relayflow-role": str(sender.role),
            }
            if message_type == "StepCommand":
                operation["reply"] = {
                    "channel": _ref("channels", "orchestratorQueue"),
                    "messages": [_ref("channels", "orchestratorQueue", "messages", "StepResult")],
                }
            operations[send_operation_id(sender, message_type)] = operation
    operations[f"{CONSUMER.id}DeadLetters"] = {
        "action": "send",
        "channel": _ref("channels", DEAD_LETTER_CHANNEL),
        "title": "dead-lettering",
        "summary": f"Sent by {CONSUMER.title}.",
        "messages": [_ref("channels", DEAD_LETTER_CHANNEL, "messages", DEAD_LETTER_MESSAGE)],
        "bindings": _operation_bindings(True),
        "tags": [{"name": CONSUMER.id}],
    }
    for queue in all_queues:
        channel_messages = _queue_message_types(queue)
        operation = {
            "action": "receive",
            "channel": _ref("channels", queue.channel),
            "title": f"{queue.receiver.id} receives from {queue.name or 'its events queue'}",
            "summary": f"Received by {queue.receiver.title}.",
            "messages": [_ref("channels", queue.channel, "messages", t) for t in channel_messages],
            "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
            "tags": [{"name": queue.receiver.id}],
        }
        if queue.channel == "stepQueue":
            operation["reply"] = {
                "channel": _ref("channels", KEY_CHANNELS[RESULT_KEY]),
                "messages": [_ref("channels", KEY_CHANNELS[RESULT_KEY], "messages", "StepResult")],
            }
        if queue.channel == "externalQueue":
            operation["reply"] = {
                "address": {
                    "description": "The request's replyTo: a routing key on the main exchange.",
                    "location": "$message.payload#/replyTo",
                },
                "channel": _ref("channels", KEY_CHANNELS[SIGNAL_KEY]),
                "messages": [
                    _ref("channels", KEY_CHANNELS[SIGNAL_KEY], "messages", "ExternalReply")
                ],
            }
        operations[receive_operation_id(queue)] = operation
    return operations


def _queue_message_types(queue: Queue) -> list[str]:
    if queue.channel == "deadLetterQueue":
        return [DEAD_LETTER_MESSAGE]
    return [t for key in queue.keys for t in _types_on(key)]


def build_document(topology: Topology | None = None) -> dict[str, Any]:
    """The AsyncAPI document of the broker contract, for `topology` (default namespace)."""
    topology = topology or Topology(namespace=DEFAULT_NAMESPACE)
    all_queues = queues(topology)
    channels: dict[str, Any] = {}
    for key, channel_id in KEY_CHANNELS.items():
        channels[channel_id] = _key_channel(key, topology, _types_on(key))
    channels[EVENTS_CHANNEL] = _fanout_channel(
        topology.events_exchange,
        FANOUT_KEY,
        "Every workflow event, in batches, for the gateways' live streams.",
        {t: _ref("components", "messages", t) for t in _types_on(FANOUT_KEY)},
    )
    channels[DEAD_LETTER_CHANNEL] = _fanout_channel(
        topology.dead_letter_exchange,
        None,
        "What could never be handled, from every work queue.",
        {DEAD_LETTER_MESSAGE: _ref("components", "messages", DEAD_LETTER_MESSAGE)},
    )
    for queue in all_queues:
        channels[queue.channel] = _queue_channel(
            queue,
            {t: _ref("components", "messages", t) for t in _queue_message_types(queue)},
        )
    messages: dict[str, Any] = {
        name: _message(name, model) for name, model in MESSAGE_TYPES.items()
    }
    messages[DEAD_LETTER_MESSAGE] = _dead_letter_message()
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": "relayflow broker contract",
            "version": str(SCHEMA_VERSION),
            "description": _INFO.format(ns=topology.namespace),
            "license": {
                "name": "Apache-2.0",
                "url": "https://www.apache.org/licenses/LICENSE-2.0",
            },
        },
        "defaultContentType": "application/json",
        "servers": {
            "broker": {
                "host": "127.0.0.1:5672",
                "protocol": "amqp",
                "protocolVersion": "0.9.1",
                "description": "RabbitMQ, at AMQP_URL (this is the development default).",
            }
        },
        "channels": channels,
        "operations": _operations(all_queues),
        "components": {"messages": messages},
    }


_INFO = (
    "The messages relayflow's services exchange over RabbitMQ: where each is published, who "
    "may send it, who consumes it, and its JSON Schema. Names are those of the default "
    "namespace `{ns}`: with RELAYFLOW_NAMESPACE=<ns> every exchange and queue name starts with "
    "<ns> instead (`<ns>`, `<ns>.events`, `<ns>.dlx`, `<ns>.orchestrator`, …); routing keys do "
    "not change. Work queues are quorum queues (RELAYFLOW_QUEUE_TYPE) with x-delivery-limit "
    "(RELAYFLOW_DELIVERY_LIMIT) and the dead-letter exchange.\n\n"
    "Every message body carries `schemaVersion` (absent: 1); see the README's Schema "
    "evolution for how a version changes. Generated by `relayflow-schemas` from "
    "relayflow/contracts, relayflow/topology.py and relayflow/amqp/senders.py: do not edit."
)


# -- YAML --------------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_.$-]*$")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, str):
        # A JSON string is a YAML double-quoted scalar: no quoting rule to get wrong.
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _key(key: str) -> str:
    return key if _PLAIN_KEY.match(key) and key not in {"null", "true", "false"} else _scalar(key)


def _yaml_lines(value: Any, indent: int) -> Iterable[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, dict | list) and item:
                yield f"{pad}{_key(key)}:"
                yield from _yaml_lines(item, indent + (1 if isinstance(item, dict) else 0))
            else:
                yield f"{pad}{_key(key)}: {_inline(item)}"
    else:
        for item in value:
            if isinstance(item, dict) and item:
                first, *rest = list(_yaml_lines(item, indent + 1))
                yield f"{pad}- {first.lstrip()}"
                yield from rest
            elif isinstance(item, list) and item:
                yield f"{pad}-"
                yield from _yaml_lines(item, indent + 1)
            else:
                yield f"{pad}- {_inline(item)}"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[]"
    return _scalar(value)


def render(document: Mapping[str, Any]) -> str:
    """`document` as block-style YAML (keys in the order built, every string JSON-quoted)."""
    header = "# Generated by `relayflow-schemas` (relayflow/contracts/asyncapi.py): do not edit.\n"
    return header + "\n".join(_yaml_lines(dict(document), 0)) + "\n"


def rendered_document() -> str:
    return render(build_document())
