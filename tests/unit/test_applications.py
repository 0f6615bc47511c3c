"""Applications as a setting (`RELAYFLOW_APPS`, `relayflow-run --app`): what the services load
follows from the packages named, and a package that cannot serve is refused, named, at once."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from relayflow import applications, supervisor
from relayflow.errors import ConfigurationError
from relayflow.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = """
from pydantic import BaseModel
from relayflow.workflow import define_workflow, task

class Hello(BaseModel):
    name: str

WORKFLOWS = [define_workflow("hello", input_model=Hello, steps=[task("greet")])]
"""
STEPS = """
from typing import Any
from relayflow.steps import StepContext, StepRegistry

steps = StepRegistry()

@steps.step("greet")
async def greet(ctx: StepContext[Any]) -> dict[str, str]:
    return {"hello": "world"}
"""


def make_app(root: Path, name: str, files: dict[str, str]) -> None:
    package = root / name
    package.mkdir()
    for filename, text in {"__init__.py": "", **files}.items():
        (package / filename).write_text(textwrap.dedent(text))


@pytest.fixture
def app_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A directory on the import path for packages made by a test, forgotten afterwards (a
    later test's package of the same name must not find this one's modules cached)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    for var in ("RELAYFLOW_APPS", "RELAYFLOW_WORKFLOWS", "RELAYFLOW_STEP_MODULES"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("RELAYFLOW_APP_PROCESSES", raising=False)
    yield tmp_path
    for name, module in list(sys.modules.items()):
        if Path(getattr(module, "__file__", None) or "/").is_relative_to(tmp_path):
            del sys.modules[name]


def test_the_modules_follow_from_the_applications(monkeypatch: pytest.MonkeyPatch) -> None:
    """One setting names an application; the module lists, set, replace what it gives."""
    monkeypatch.setenv("RELAYFLOW_APPS", "orders_app, billing")
    settings = Settings()
    assert settings.workflows == ["orders_app.workflows", "billing.workflows"]
    assert settings.step_modules == ["orders_app.steps", "billing.steps"]
    monkeypatch.setenv("RELAYFLOW_WORKFLOWS", "tests.tools.ledger")
    assert Settings().workflows == ["tests.tools.ledger"]
    assert Settings().step_modules == ["orders_app.steps", "billing.steps"]


def test_the_default_is_what_the_run_command_always_served(app_root: Path) -> None:
    """The quick start keeps serving every example workflow, and the external system."""
    settings = Settings()
    assert settings.apps == list(applications.DEFAULT_APPS)
    assert settings.workflows == [f"{app}.workflows" for app in applications.DEFAULT_APPS]
    assert supervisor.programs(settings)["external"] == "apps.form_submission.external"


def test_a_name_that_is_no_module_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAYFLOW_APPS", "orders app")
    with pytest.raises(ValueError, match="dotted module names"):
        Settings()


def test_an_application_that_does_not_import_is_named(
    app_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo or a package not installed where the services run stops the run command before
    it starts anything, naming the package."""
    with pytest.raises(SystemExit) as exit_info:
        supervisor.main(["--app", "ordrs_app"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "application 'ordrs_app' does not import" in err
    assert "installed" in err


@pytest.mark.parametrize(
    ("name", "files", "why"),
    [
        ("bare_app", {}, r"'bare_app' has no workflows: bare_app\.workflows does not import"),
        ("empty_app", {"workflows.py": "WORKFLOWS = []"}, "must define WORKFLOWS, a non-empty"),
    ],
)
def test_an_application_without_workflows_is_named(
    app_root: Path, name: str, files: dict[str, str], why: str
) -> None:
    make_app(app_root, name, files)
    with pytest.raises(ConfigurationError, match=why):
        supervisor.check_apps(Settings(apps=[name]))


def test_an_application_without_its_step_bodies_is_named(app_root: Path) -> None:
    make_app(app_root, "no_steps", {"workflows.py": WORKFLOW})
    with pytest.raises(ConfigurationError, match=r"step module 'no_steps\.steps'.*does not import"):
        supervisor.check_apps(Settings(apps=["no_steps"]))


def test_a_whole_application_loads_and_declares_its_processes(app_root: Path) -> None:
    """An application's own processes come with it; RELAYFLOW_APP_PROCESSES still rules."""
    make_app(
        app_root,
        "hello_app",
        {"workflows.py": WORKFLOW, "steps.py": STEPS, "__init__.py": "PROCESSES = {'bell': 'x.y'}"},
    )
    settings = Settings(apps=["hello_app"])
    supervisor.check_apps(settings)
    assert supervisor.programs(settings) == {**supervisor.SERVICES, "bell": "x.y"}
    assert supervisor.programs(Settings(apps=["hello_app"], app_processes="")) == (
        supervisor.SERVICES
    )


def test_app_flag_refuses_module_lists_that_would_replace_it(
    app_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--app with RELAYFLOW_STEP_MODULES exported would serve other bodies than it says."""
    monkeypatch.setenv("RELAYFLOW_STEP_MODULES", "apps.approval.steps")
    with pytest.raises(SystemExit) as exit_info:
        supervisor.main(["--app", "apps.approval", "--check"])
    assert exit_info.value.code == 2
    assert "RELAYFLOW_STEP_MODULES set in the environment" in capsys.readouterr().err


async def test_a_service_started_alone_names_the_application_too(app_root: Path) -> None:
    """Deployments start each service with RELAYFLOW_APPS (no run command to check first): an
    application without workflows stops it, exit 2, saying so — not a service serving nothing."""
    make_app(app_root, "hollow_app", {"workflows.py": "WORKFLOWS = []", "steps.py": STEPS})
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("RELAYFLOW_")},
        "RELAYFLOW_APPS": "hollow_app",
        "PYTHONPATH": os.pathsep.join([str(app_root), str(ROOT)]),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.orchestrator",
        cwd=app_root,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2, output.decode()
    assert "application 'hollow_app' has no workflows" in output.decode()
