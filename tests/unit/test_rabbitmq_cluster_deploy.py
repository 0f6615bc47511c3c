"""Static checks of the three-node RabbitMQ compose file (no Docker engine in CI): the nodes it
runs are those its peer discovery lists, they share one cookie, and every service is given
every node in an AMQP_URL the services accept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from relayflow.amqp.connection import broker_addresses
from tests.unit.test_deploy_files import SERVICE_NAMES, compose

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "deploy" / "compose.rabbitmq-cluster.yaml"
CONF = ROOT / "deploy" / "rabbitmq" / "cluster.conf"


def cluster() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(CLUSTER.read_text(encoding="utf-8"))
    return document


def listed_nodes() -> list[str]:
    return re.findall(
        r"^cluster_formation\.classic_config\.nodes\.\d+ = (\S+)$", CONF.read_text(), re.M
    )


def test_the_nodes_run_are_the_nodes_discovery_lists() -> None:
    services = cluster()["services"]
    nodes = {name: spec for name, spec in services.items() if name.startswith("rabbitmq")}
    assert sorted(f"rabbit@{spec['hostname']}" for spec in nodes.values()) == sorted(listed_nodes())
    assert len(nodes) == 3
    # The first node is compose.yaml's broker, which the services already wait for.
    assert "rabbitmq" in compose()["services"]
    for name, spec in nodes.items():
        assert spec["hostname"] == name, "the node name must resolve: rabbit@<service name>"
        mounts = [volume.split(":")[1] for volume in spec["volumes"]]
        assert "/etc/rabbitmq/conf.d/20-cluster.conf" in mounts
        assert "/var/lib/rabbitmq" in mounts, f"{name} keeps no data"


def test_every_node_and_its_cli_share_one_cookie() -> None:
    args = {
        (
            spec["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"].split(":?")[0],
            spec["environment"]["RABBITMQ_CTL_ERL_ARGS"].split(":?")[0],
        )
        for name, spec in cluster()["services"].items()
        if name.startswith("rabbitmq")
    }
    assert args == {("-setcookie ${RABBITMQ_ERLANG_COOKIE", "-setcookie ${RABBITMQ_ERLANG_COOKIE")}


def test_every_service_is_given_every_node() -> None:
    services = cluster()["services"]
    hosts = {
        f"{spec['hostname']}:5672" for name, spec in services.items() if name.startswith("rabbitmq")
    }
    for name in SERVICE_NAMES:
        env = services[name]["environment"]
        addresses = broker_addresses(env["AMQP_URL"])
        assert {address.split("@")[1].rstrip("/") for address in addresses} == hosts
        assert int(env["RELAYFLOW_QUORUM_SIZE"]) == len(hosts)
        assert set(services[name]["depends_on"]) >= {*(h.split(":")[0] for h in hosts), "postgres"}
