"""Static checks of the PostgreSQL primary + synchronous standby override of the compose file,
which CI cannot run (no Docker engine): the names that must agree across its files do, and the
services' URLs are ones they accept."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from relayflow.db.urls import check_database_url, hosts_of
from tests.unit.test_deploy_files import settings_of

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
OVERRIDE = DEPLOY / "compose.postgres-ha.yaml"


def override() -> dict[str, Any]:
    services: dict[str, Any] = yaml.safe_load(OVERRIDE.read_text(encoding="utf-8"))["services"]
    return services


def test_the_services_name_both_servers_for_writes_and_reads() -> None:
    """Every database service writes through both hosts with read-write; the gateway reads
    preferring the standby; each variable is one its settings read."""
    services = override()
    for name in ("gateway", "orchestrator", "steps"):
        environment = services[name]["environment"]
        assert set(environment) <= settings_of(name), name
        url = check_database_url(environment["DATABASE_URL"])
        assert hosts_of(url) == ["postgres:5432", "postgres-standby:5432"], name
        assert services[name]["depends_on"]["postgres-standby"]["condition"] == "service_healthy"
    read_url = services["gateway"]["environment"]["RELAYFLOW_READ_DATABASE_URL"]
    assert check_database_url(read_url, writes=False).endswith("=prefer-standby")
    assert hosts_of(read_url)[0] == "postgres-standby:5432"


def test_the_primary_waits_for_the_standby_it_names() -> None:
    """synchronous_standby_names must name the application_name the standby connects with, and
    the slot the primary creates must be the one the standby streams from; else commits would
    not be synchronous (or would wait forever)."""
    services = override()
    primary = " ".join(services["postgres"]["command"])
    standby_name = services["postgres-standby"]["environment"]["STANDBY_NAME"]
    assert f"synchronous_standby_names=FIRST 1 ({standby_name})" in primary
    assert "synchronous_commit=on" in primary
    init = (DEPLOY / "postgres-ha" / "primary-init.sh").read_text(encoding="utf-8")
    assert f"pg_create_physical_replication_slot('{standby_name}')" in init
    assert re.search(r"^echo \"host replication ", init, re.MULTILINE)
    standby = (DEPLOY / "postgres-ha" / "standby.sh").read_text(encoding="utf-8")
    assert "application_name=$STANDBY_NAME" in standby
    assert "primary_slot_name = '$STANDBY_NAME'" in standby
    for mount in [*services["postgres"]["volumes"], *services["postgres-standby"]["volumes"]]:
        source = mount.split(":", 1)[0]
        if source.startswith("./"):
            assert (DEPLOY / source).is_file(), source
