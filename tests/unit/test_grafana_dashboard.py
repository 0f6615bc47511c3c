"""The Grafana dashboard in deploy/grafana: it must load, take its Prometheus data source as a
variable, and query only metrics the services export — names read from the registry the code
fills, so that renaming a metric without the dashboard fails here, not on an operator's
screen."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import REGISTRY

import relayflow.metrics
import services.gateway.metrics

# Imported for what they register: every metric of every service is defined in these two.
REGISTERING = (relayflow.metrics, services.gateway.metrics)
DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "relayflow.json"
_NAME = re.compile(r"\brelayflow_[a-z_]+\b")
# The samples each kind of metric family is exposed as.
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def exported() -> dict[str, str]:
    """Every sample name our services expose, mapped to its family's name."""
    names = {}
    for family in REGISTRY.collect():
        if family.name.startswith("relayflow_"):
            for suffix in _SUFFIXES[family.type]:
                names[family.name + suffix] = family.name
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in panels(dashboard) for target in panel.get("targets", [])]


def test_the_dashboard_loads_with_prometheus_as_a_variable() -> None:
    """Imported into any Grafana, it asks which Prometheus to use rather than naming one."""
    dashboard = orjson.loads(DASHBOARD.read_bytes())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [panel["id"] for panel in panels(dashboard)]
    assert len(ids) == len(set(ids))


def test_every_metric_queried_is_exported_and_every_one_exported_is_shown() -> None:
    """A query of a name no service exports draws an empty panel silently; a metric no panel
    shows is one nobody looks at."""
    names = exported()
    used = {
        name
        for expr in queries(orjson.loads(DASHBOARD.read_bytes()))
        for name in _NAME.findall(expr)
    }
    assert used
    assert used <= names.keys(), sorted(used - names.keys())
    assert {names[name] for name in used} == set(names.values())
