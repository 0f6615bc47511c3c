"""Applications: the packages of workflows and step bodies the services serve (`RELAYFLOW_APPS`).

An application is any importable package laid out as those under `apps/` are:

    orders_app/
        __init__.py     may define PROCESSES = {"name": "module"}: processes of its own that the
                        run command starts beside the core services (`python -m module`)
        workflows.py    WORKFLOWS, a list of its workflow definitions
        steps.py        steps, a StepRegistry of its step bodies, naming its migration set
        migrations/     0001_….sql: its own tables, applied by the services that serve its steps

`RELAYFLOW_APPS=orders_app` (or `relayflow-run --app orders_app`) serves it: the services import
`orders_app.workflows` and `orders_app.steps`. `RELAYFLOW_WORKFLOWS` and
`RELAYFLOW_STEP_MODULES`, when set, replace those module lists as they stand (tests and layouts
of another shape use them). Imports nothing of the services: the settings read this module.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Sequence
from types import ModuleType

from relayflow.errors import ConfigurationError, DefinitionError
from relayflow.workflow import WorkflowRegistry

# What the README's run command serves.
DEFAULT_APPS = ("apps.form_submission", "apps.batch_import", "apps.approval", "apps.quote")
WORKFLOWS_MODULE = "workflows"
STEPS_MODULE = "steps"


def workflow_modules(apps: Iterable[str]) -> list[str]:
    return [f"{app}.{WORKFLOWS_MODULE}" for app in apps]


def step_modules(apps: Iterable[str]) -> list[str]:
    return [f"{app}.{STEPS_MODULE}" for app in apps]


def import_app(package: str) -> ModuleType:
    """The application's package, or a ConfigurationError that names it and says why not."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ConfigurationError(
            f"RELAYFLOW_APPS: application {package!r} does not import ({type(exc).__name__}: "
            f"{exc}); is its package installed in the Python environment the services run in?"
        ) from exc


def processes(apps: Sequence[str]) -> dict[str, str]:
    """The processes the applications declare (`PROCESSES` in each package), name -> module."""
    found: dict[str, str] = {}
    for app in apps:
        declared = getattr(import_app(app), "PROCESSES", {})
        if not isinstance(declared, dict) or not all(
            isinstance(name, str) and isinstance(module, str) for name, module in declared.items()
        ):
            raise ConfigurationError(
                f"application {app!r}: PROCESSES must be a dict of process name -> module"
            )
        clashes = sorted(set(found) & set(declared))
        if clashes:
            raise ConfigurationError(
                f"application {app!r} declares processes {clashes} that another application "
                "declares too; set RELAYFLOW_APP_PROCESSES to name them apart"
            )
        found.update(declared)
    return found


def load_workflows(apps: Sequence[str], modules: Sequence[str]) -> WorkflowRegistry:
    """What a service loads from `modules` (RELAYFLOW_WORKFLOWS, by default those of `apps`),
    with every application of `apps` whose workflows module is among them checked to import
    and define at least one workflow: a ConfigurationError names the one that does not."""
    for app in apps:
        import_app(app)
        module = f"{app}.{WORKFLOWS_MODULE}"
        if module not in modules:
            continue
        try:
            definitions = getattr(importlib.import_module(module), "WORKFLOWS", None)
        except ImportError as exc:
            raise ConfigurationError(
                f"RELAYFLOW_APPS: application {app!r} has no workflows: {module} does not import "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        if not definitions:
            raise ConfigurationError(
                f"RELAYFLOW_APPS: application {app!r} has no workflows: {module} must define "
                "WORKFLOWS, a non-empty list of workflow definitions"
            )
    try:
        return WorkflowRegistry.from_modules(modules)
    except DefinitionError as exc:
        raise ConfigurationError(str(exc)) from exc
