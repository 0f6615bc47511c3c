"""AMQP_URL as one broker or a list of a cluster's nodes: what is accepted, and what is refused
with the entry named."""

from __future__ import annotations

import re

import pytest
from pydantic import ValidationError

from relayflow.amqp.connection import broker_addresses, redact
from relayflow.settings import Settings
from relayflow.topology import Topology

A = "amqp://u:secret@rabbit-a:5672/vh"
B = "amqp://u:secret@rabbit-b:5673/vh"


def test_one_url_is_one_node() -> None:
    assert broker_addresses("amqp://guest:guest@127.0.0.1:5672/") == (
        "amqp://guest:guest@127.0.0.1:5672/",
    )


def test_a_list_is_its_nodes_in_order_spaces_allowed() -> None:
    assert broker_addresses(f"{A}, {B}") == (A, B)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        (f"{A},,{B}", "entry 2 (empty): an empty address between commas"),
        (f"{A},http://rabbit-b:5672/vh", "entry 2 (http://rabbit-b:5672/vh): the scheme"),
        (f"{A},amqp://u:secret@:5672/vh", "entry 2 (amqp://:5672/vh): no host"),
        (f"{A},amqp://u:secret@rabbit-b:99999/vh", "entry 2 (amqp://rabbit-b:99999/vh): not a URL"),
        (f"{A},amqp://u:other@rabbit-b:5672/vh", "entry 2 (amqp://rabbit-b:5672/vh): every node"),
        (f"{A},amqp://u:secret@rabbit-b:5672/other", "entry 2 (amqp://rabbit-b:5672/other)"),
        ("", "is empty"),
    ],
)
def test_a_malformed_entry_is_refused_by_position_without_its_password(
    value: str, named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)) as raised:
        broker_addresses(value)
    assert "secret" not in str(raised.value)


def test_settings_refuse_a_malformed_list_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQP_URL", f"{A},rabbit-b:5672")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "AMQP_URL" in str(raised.value) or "amqp_url" in str(raised.value)
    assert "entry 2" in str(raised.value)


def test_redact_drops_every_nodes_credentials() -> None:
    assert redact(f"{A},{B}") == "amqp://rabbit-a:5672/vh,amqp://rabbit-b:5673/vh"


def test_quorum_queues_ask_for_the_configured_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLOW_QUORUM_SIZE", "5")
    topology = Topology.from_settings(Settings())
    assert topology.work_queue_arguments()["x-quorum-initial-group-size"] == 5
    assert topology.queue_arguments() == {
        "x-queue-type": "quorum",
        "x-quorum-initial-group-size": 5,
    }
    classic = Topology("ns", queue_type="classic")
    assert "x-quorum-initial-group-size" not in classic.work_queue_arguments()
