"""`relayflow broker setup`'s users: each right names exactly the resources its service
uses (checked here against the regular expressions RabbitMQ will apply), and the hash is
RabbitMQ's format."""

from __future__ import annotations

import base64
import hashlib
import re

import pytest

from relayflow.amqp.definitions import broker_users, definitions, password_hash, senders_setting
from relayflow.amqp.senders import Senders
from relayflow.topology import Topology

NS = "shop.v1"  # a dot in the namespace must not match any character
T = Topology(NS)
EXCHANGES = [T.exchange, T.events_exchange, T.dead_letter_exchange]
QUEUES = [T.orchestrator_queue, T.external_queue, T.dead_letter_queue, T.step_queue("validate")]
OTHERS = ["shopXv1", "shop.v1x", "other.orchestrator", "amq_1234", "amq.gen-abc"]


def allowed(pattern: str) -> set[str]:
    return {name for name in [*EXCHANGES, *QUEUES, *OTHERS] if re.search(pattern, name)}


@pytest.mark.parametrize(
    ("service", "write", "read", "configure"),
    [
        ("orchestrator", set(EXCHANGES), {T.orchestrator_queue}, set()),
        ("steps", set(EXCHANGES), {T.step_queue("validate")}, set()),
        (
            "gateway",
            {T.exchange, T.dead_letter_exchange, "amq_1234", "amq.gen-abc"},
            # The dead letters: its operator pages browse and re-drive them.
            {T.events_exchange, T.dead_letter_queue, "amq_1234", "amq.gen-abc"},
            {"amq_1234", "amq.gen-abc"},
        ),
        ("external", {T.exchange, T.dead_letter_exchange}, {T.external_queue}, set()),
        ("app", {T.exchange}, set(), set()),
        ("admin", {T.exchange, T.dead_letter_exchange}, {T.dead_letter_queue}, set()),
    ],
)
def test_each_user_may_touch_only_what_its_service_uses(
    service: str, write: set[str], read: set[str], configure: set[str]
) -> None:
    (user,) = [u for u in broker_users(NS) if u.service == service]
    assert allowed(user.write) == write
    assert allowed(user.read) == read
    assert allowed(user.configure) == configure


def test_isolated_steps_report_results_only() -> None:
    (steps,) = [u for u in broker_users(NS, isolated_steps=True) if u.service == "steps"]
    assert T.events_exchange not in allowed(steps.write)
    senders = Senders.parse(senders_setting(broker_users(NS, isolated_steps=True)))
    assert senders.refusal("StepCommand", steps.name) is not None
    assert senders.refusal("StepResult", steps.name) is None


def test_a_step_served_from_outside_python_gets_a_user_for_its_queue_alone() -> None:
    """A foreign step service (examples/node, examples/pika) consumes one queue and answers
    results: it may read that queue, publish to the main exchange (and dead-letter), and send
    StepResults only — never a command or an event."""
    users = broker_users(NS, foreign_steps=["price", "price"])
    (price,) = [u for u in users if u.service == "step-price"]
    assert price.name == f"rf-{NS}-step-price"
    assert allowed(price.read) == set()  # not validate's queue, nor any other listed
    assert re.search(price.read, T.step_queue("price"))
    assert not re.search(price.read, T.step_queue("pricex"))
    assert allowed(price.write) == {T.exchange, T.dead_letter_exchange}
    assert allowed(price.configure) == set()
    senders = Senders.parse(senders_setting(users))
    assert senders.refusal("StepResult", price.name) is None
    assert senders.refusal("StepCommand", price.name) is not None
    assert senders.refusal("WorkflowEventBatch", price.name) is not None


def test_the_setting_gives_each_user_its_role() -> None:
    users = broker_users(NS)
    senders = Senders.parse(senders_setting(users))
    by = {u.service: u.name for u in users}
    assert senders.refusal("StepCommand", by["steps"]) is None  # it advances workflows
    assert senders.refusal("StartWorkflow", by["app"]) is None
    assert senders.refusal("StepCommand", by["app"]) is not None
    assert senders.refusal("ExternalReply", by["external"]) is None


def test_password_hash_is_rabbitmqs_salted_sha256() -> None:
    salt = b"\x01\x02\x03\x04"
    decoded = base64.b64decode(password_hash("secret", salt))
    assert decoded == salt + hashlib.sha256(salt + b"secret").digest()


def test_the_definitions_hold_the_topology_and_never_a_password() -> None:
    users = broker_users(NS)
    document = definitions(users, "prod", T, ["validate"])
    assert {q["name"] for q in document["queues"]} == set(QUEUES)
    assert {e["name"] for e in document["exchanges"]} == set(EXCHANGES)
    keys = {(b["destination"], b["routing_key"]) for b in document["bindings"]}
    assert (T.step_queue("validate"), "step.run.validate") in keys
    assert (T.dead_letter_queue, "") in keys
    text = str(document)
    assert not any(user.password in text for user in users)
