"""Static checks of the deployment files and scripts, which CI cannot build or run (no Docker
engine): they must name real entry points and settings, run as non-root, and wait for healthy
dependencies."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from relayflow.auth import AuthSettings, OidcSettings
from relayflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "deploy" / "compose.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
# Each service in the stack and the package of its settings: the core's, and formSubmission's
# external system.
SETTINGS_PACKAGES = {
    "gateway": "services.gateway",
    "orchestrator": "services.orchestrator",
    "steps": "services.steps",
    "external": "apps.form_submission.external",
}
# Settings a service reads beside its own module's: the gateway checks API keys and OIDC tokens.
READS_ALSO: dict[str, list[type[BaseSettings]]] = {"gateway": [AuthSettings, OidcSettings]}
SERVICE_NAMES = tuple(SETTINGS_PACKAGES)
INFRASTRUCTURE = ("rabbitmq", "postgres")


def project() -> dict[str, Any]:
    with (ROOT / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return document


def app_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return {name: spec for name, spec in services.items() if name not in INFRASTRUCTURE}


def env_names(settings: type[BaseSettings]) -> set[str]:
    """The environment variables a settings class reads (pydantic-settings is case-insensitive)."""
    prefix = str(settings.model_config.get("env_prefix", ""))
    names = set()
    for name, field in settings.model_fields.items():
        alias = field.validation_alias
        names.add((alias if isinstance(alias, str) else prefix + name).upper())
    return names


def settings_of(service: str) -> set[str]:
    module = importlib.import_module(f"{SETTINGS_PACKAGES[service]}.settings")
    classes = [
        cls
        for _, cls in inspect.getmembers(module, inspect.isclass)
        if issubclass(cls, BaseSettings) and cls.__module__ == module.__name__
    ]
    assert classes, f"{module.__name__} defines no settings class"
    classes += READS_ALSO.get(service, [])
    return set().union(env_names(Settings), *(env_names(cls) for cls in classes))


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in lines
        if line and not line.startswith("#")
    ]


def final_stage() -> list[tuple[str, str]]:
    instructions = dockerfile_instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_compose_runs_every_service_from_the_image() -> None:
    """Each service must run in the stack, from one image, with the broker and database."""
    services = compose()["services"]
    assert set(services) == {*INFRASTRUCTURE, *SERVICE_NAMES}
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13-management")
    assert services["postgres"]["image"].startswith("postgres:16")
    images = {spec["image"] for spec in app_services().values()}
    assert len(images) == 1
    builds = [spec["build"] for spec in app_services().values() if "build" in spec]
    assert builds == [{"context": "..", "dockerfile": "deploy/Dockerfile"}]
    assert (COMPOSE.parent / builds[0]["context"] / builds[0]["dockerfile"]).resolve() == (
        DOCKERFILE
    )


def test_every_command_is_a_declared_console_script() -> None:
    """A typo in `command:` would only show when the container crash-loops."""
    scripts = project()["project"]["scripts"]
    commands = {name: spec["command"] for name, spec in app_services().items()}
    for name, command in commands.items():
        assert isinstance(command, list), f"{name}: use the exec form, so SIGTERM reaches it"
        assert command[0] in scripts, f"{name}: {command[0]} is not in [project.scripts]"
        assert command[0] == f"relayflow-{name}"


def test_services_wait_for_healthy_broker_and_database() -> None:
    """Starting before RabbitMQ and PostgreSQL answer turns a cold start into a restart loop."""
    services = compose()["services"]
    for name in INFRASTRUCTURE:
        assert services[name]["healthcheck"]["test"], f"{name} needs a healthcheck"
    for name, spec in app_services().items():
        assert spec["depends_on"] == {
            infra: {"condition": "service_healthy"} for infra in INFRASTRUCTURE
        }, name
        assert spec["restart"] in ("unless-stopped", "always", "on-failure"), name


def test_environment_names_are_settings_the_services_read() -> None:
    """A misspelt variable is silently ignored by pydantic-settings; catch it here."""
    for name, spec in app_services().items():
        environment = spec["environment"]
        assert isinstance(environment, dict), f"{name}: use the mapping form for environment"
        unknown = set(map(str.upper, environment)) - settings_of(name)
        assert not unknown, f"{name} sets variables no settings class reads: {sorted(unknown)}"
        assert environment["AMQP_URL"].split("@", 1)[1].startswith("rabbitmq:5672")
        assert environment["DATABASE_URL"].split("@", 1)[1].startswith("postgres:5432/")


def test_gateway_is_published_and_steps_are_replicated() -> None:
    """The gateway must listen beyond the container; steps scale out by competing consumers."""
    services = compose()["services"]
    gateway = services["gateway"]
    assert gateway["environment"]["RELAYFLOW_GATEWAY_HOST"] == "0.0.0.0"
    assert "8000:8000" in gateway["ports"]
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert services["steps"]["deploy"]["replicas"] >= 2


def test_dockerfile_runs_the_installed_package_as_non_root() -> None:
    """Root in a container is a needless risk; an editable or dev install would ship the tests."""
    instructions = dockerfile_instructions()
    stages = [args for op, args in instructions if op == "FROM"]
    assert all(stage.split()[0] == "python:3.11-slim" for stage in stages)
    final = final_stage()
    users = [args for op, args in final if op == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1].split(":")[0] not in ("root", "0")
    runs = " ".join(args for op, args in final if op == "RUN")
    assert "pip install" in runs
    assert "--editable" not in runs
    assert " -e " not in runs
    assert "[dev]" not in runs
    assert ("EXPOSE", "8000") in final
    cmd = [args for op, args in final if op == "CMD"]
    assert cmd == ['["relayflow-gateway"]']


def test_dockerfile_copies_what_the_package_needs() -> None:
    """The build copies sources explicitly; each must exist, and every package must be copied."""
    copied = []
    for op, args in dockerfile_instructions():
        if op == "COPY" and not args.startswith("--from"):
            copied.extend(args.split()[:-1])
    for source in copied:
        assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"
    find = project()["tool"]["setuptools"]["packages"]["find"]["include"]
    for pattern in find:
        assert pattern.rstrip("*") in copied, f"package {pattern} is not copied into the image"


def test_python_version_matches_the_project() -> None:
    """The image's Python must satisfy requires-python."""
    assert project()["project"]["requires-python"] == ">=3.11"


@pytest.mark.parametrize(
    "script", ["scripts/bootstrap", "scripts/run", "scripts/test", "scripts/lint", ".ci/run"]
)
def test_scripts_are_executable_bash_with_strict_mode(script: str) -> None:
    """CI and the README call these directly; a lost +x bit or missing `set -e` hides failures."""
    path = ROOT / script
    assert os.access(path, os.X_OK), f"chmod +x {script}"
    text = path.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
