"""relayflow from synchronous Python with pika, written from schemas/ and the README alone (it
imports nothing of relayflow): start a `quote` workflow through the broker, and serve its
`price` step.

    python examples/pika/quote.py start --key order-42 [--input '{"currency": "eur", ...}']
    python examples/pika/quote.py serve

`start` prints {"workflowId": ..., "messageId": ...} once the broker confirmed the start; `serve`
prints {"serving": "<queue>"} once it consumes, then one JSON line per command answered.
AMQP_URL and RELAYFLOW_NAMESPACE as for the services.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import uuid
from collections import OrderedDict
from datetime import UTC, datetime
from typing import Any

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel
from pika.spec import Basic, BasicProperties

AMQP_URL = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
NAMESPACE = os.environ.get("RELAYFLOW_NAMESPACE", "relayflow")
# The topology (schemas/asyncapi.yaml, channels): one direct exchange named like the namespace.
EXCHANGE = NAMESPACE
START_KEY = "workflow.start"
RESULT_KEY = "step.result"
BODY = "price"
QUEUE = f"{NAMESPACE}.step.{BODY}"
PREFETCH = 16
# Answers kept for commands seen again (a redelivery, a copy), sent as they were the first time.
REMEMBERED = 10_000
SUPPORTED_CURRENCIES = ("EUR", "USD", "GBP")
CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
EXAMPLE_INPUT = {
    "currency": "eur",
    "items": [
        {"sku": "B-2", "qty": 1, "unitCents": 1000},
        {"sku": "A-1", "qty": 3, "unitCents": 250},
    ],
}


def now() -> str:
    return datetime.now(UTC).isoformat()


def base32(data: bytes) -> str:
    """26 Crockford-base32 digits of 16 bytes read as one big-endian 128-bit number, most
    significant first (26 x 5 = 130 bits: the first digit is always 0-7)."""
    number = int.from_bytes(data, "big")
    return "".join(CROCKFORD[(number >> (5 * i)) & 31] for i in reversed(range(26)))


def workflow_id_for_key(workflow_name: str, key: str, tenant: str = "default") -> str:
    """The id the gateway gives a run started with this Idempotency-Key (README)."""
    text = f"{workflow_name}\x00{key}"
    if tenant != "default":
        text = f"tenant:{tenant}\x00{text}"
    return "wf_" + base32(hashlib.sha256(text.encode()).digest()[:16])


def properties(message: dict[str, Any]) -> BasicProperties:
    """What every relayflow publisher sets. Consumers read only the body, so none of it is
    required; `message_id` is what `relayflow dead-letters` lists, shows and redrives by."""
    return BasicProperties(
        content_type="application/json",
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message["messageId"],
        type=message["type"],
        headers={"x-schema-version": message["schemaVersion"]},
    )


def publish(channel: BlockingChannel, routing_key: str, message: dict[str, Any]) -> None:
    """Publish and wait for the broker's confirm (the channel is in confirm mode): pika raises
    UnroutableError when no queue is bound (mandatory) and NackError when the broker refuses."""
    channel.basic_publish(
        EXCHANGE,
        routing_key,
        json.dumps(message).encode(),
        properties(message),
        mandatory=True,
    )


def start(key: str, workflow: str, workflow_input: dict[str, Any]) -> None:
    message = {
        "type": "StartWorkflow",
        "schemaVersion": 1,
        "messageId": f"msg_{uuid.uuid4()}",
        "workflowId": workflow_id_for_key(workflow, key),
        "idempotencyKey": key,
        "createdAt": now(),
        "workflowName": workflow,
        "input": workflow_input,
    }
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        try:
            publish(channel, START_KEY, message)
        except pika.exceptions.UnroutableError:
            sys.exit(
                f"no queue is bound to {START_KEY} on exchange {EXCHANGE}: is relayflow running "
                f"with RELAYFLOW_NAMESPACE={NAMESPACE}?"
            )
    finally:
        connection.close()
    print(json.dumps({"workflowId": message["workflowId"], "messageId": message["messageId"]}))


class StepFailure(Exception):
    def __init__(self, type_: str, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.type = type_
        self.retryable = retryable


def price(command: dict[str, Any]) -> dict[str, Any]:
    """The step: total the lines `normalize` produced (in `dependencies`, by step name)."""
    normalized = command.get("dependencies", {}).get("normalize")
    if not isinstance(normalized, dict) or not isinstance(normalized.get("lines"), list):
        raise StepFailure(
            "InvalidDependencies",
            "expected dependencies.normalize with `currency` and `lines`",
            retryable=False,
        )
    currency, lines = normalized.get("currency"), normalized["lines"]
    if currency not in SUPPORTED_CURRENCIES:
        # Trying again cannot help: not retryable, the workflow fails at once.
        raise StepFailure(
            "UnsupportedCurrency",
            f"cannot price in {currency}; this service prices in "
            + ", ".join(SUPPORTED_CURRENCIES),
            retryable=False,
        )
    if command["attempt"] == 1 and any(str(line["sku"]).startswith("flaky") for line in lines):
        # A passing failure: retryable, so the orchestrator sends attempt 2 after its back-off.
        raise StepFailure("PriceListReloading", "the price list is being reloaded", retryable=True)
    return {
        "currency": currency,
        "lines": len(lines),
        "units": sum(line["qty"] for line in lines),
        "totalCents": sum(line["qty"] * line["unitCents"] for line in lines),
        "pricedBy": "pika",
    }


def answer(command: dict[str, Any], started_at: str) -> dict[str, Any]:
    step_key = command.get("stepKey", "0")
    finished_at = now()
    result: dict[str, Any] = {
        "type": "StepResult",
        "schemaVersion": 1,
        # Deterministic: an answer sent twice is one input to the orchestrator's inbox.
        "messageId": f"res:{command['workflowId']}:{command['stepName']}:{step_key}:"
        f"{command['attempt']}",
        "workflowId": command["workflowId"],
        "stepName": command["stepName"],
        "stepKey": step_key,
        "attempt": command["attempt"],
        "startedAt": started_at,
        "finishedAt": finished_at,
        "createdAt": finished_at,
    }
    if command.get("idempotencyKey"):
        result["idempotencyKey"] = command["idempotencyKey"]
    try:
        return {**result, "status": "succeeded", "output": price(command)}
    except StepFailure as failure:
        error = {"type": failure.type, "message": str(failure), "retryable": failure.retryable}
        return {**result, "status": "failed", "error": error}


def command_of(body: bytes) -> tuple[dict[str, Any] | None, str]:
    """A command this service can answer, or why not."""
    try:
        command = json.loads(body)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    if not isinstance(command, dict) or command.get("type") != "StepCommand":
        return None, "not a StepCommand"
    if (command.get("body") or command.get("stepName")) != BODY:
        return None, f"a command for another body than {BODY}"
    if command.get("schemaVersion", 1) != 1:
        return None, f"schemaVersion {command['schemaVersion']}; this service reads version 1"
    if not isinstance(command.get("workflowId"), str) or not isinstance(
        command.get("attempt"), int
    ):
        return None, "a StepCommand without workflowId or attempt"
    return command, ""


def serve() -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    try:
        channel.queue_declare(QUEUE, passive=True)
    except pika.exceptions.ChannelClosedByBroker:
        sys.exit(
            f"the broker has no queue {QUEUE}: start relayflow (scripts/run) with "
            f"RELAYFLOW_NAMESPACE={NAMESPACE} first"
        )
    channel.confirm_delivery()
    channel.basic_qos(prefetch_count=PREFETCH)
    answered: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def on_command(
        channel: BlockingChannel,
        method: Basic.Deliver,
        props: BasicProperties,
        body: bytes,
    ) -> None:
        tag = method.delivery_tag
        assert tag is not None, "a delivery always has its tag"
        command, reason = command_of(body)
        if command is None:
            print(f"dead-lettering {props.message_id or 'a message'}: {reason}", file=sys.stderr)
            # No requeue: the queue's dead-letter exchange takes it to <ns>.dead-letters.
            channel.basic_nack(tag, requeue=False)
            return
        stored = answered.get(command["messageId"])
        result = stored if stored is not None else answer(command, now())
        try:
            publish(channel, RESULT_KEY, result)
        except (pika.exceptions.UnroutableError, pika.exceptions.NackError) as exc:
            print(f"could not publish {result['messageId']}: {exc}; handing back", file=sys.stderr)
            channel.basic_nack(tag, requeue=True)
            return
        # Acked only now that the broker confirmed the answer: a crash before leaves the command
        # on the queue, to be answered again under the same result id.
        channel.basic_ack(tag)
        answered[command["messageId"]] = result
        if len(answered) > REMEMBERED:
            answered.popitem(last=False)
        line = {
            "command": command["messageId"],
            "result": result["messageId"],
            "status": result["status"],
            "repeated": stored is not None or bool(method.redelivered),
        }
        print(json.dumps(line), flush=True)

    def stop(signum: int, _frame: object) -> None:
        print(f"quote.py: signal {signum}: stopping", file=sys.stderr)
        # Not from inside the handler: on the connection's loop, between deliveries.
        connection.add_callback_threadsafe(channel.stop_consuming)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    channel.basic_consume(QUEUE, on_command)
    print(json.dumps({"serving": QUEUE}), flush=True)
    try:
        channel.start_consuming()
    finally:
        connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    starting = commands.add_parser("start", help="start a workflow through the broker")
    starting.add_argument("--key", required=True, help="the idempotency key")
    starting.add_argument("--workflow", default="quote")
    starting.add_argument("--input", type=json.loads, default=EXAMPLE_INPUT, help="its JSON")
    commands.add_parser("serve", help="serve the `price` step")
    args = parser.parse_args()
    if args.command == "start":
        start(args.key, args.workflow, args.input)
    else:
        serve()


if __name__ == "__main__":
    main()
