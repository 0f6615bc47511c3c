"""The README's "Build your own workflows" works as written: the files its shell block writes
make an application the run command accepts, and its workflow gives the output the block
promises (in memory here; tests/e2e/test_wheel_app.py runs an application from the wheel)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from relayflow.model import WorkflowStatus
from relayflow.settings import Settings
from relayflow.steps import StepRegistry
from relayflow.supervisor import check_apps
from relayflow.testing import WorkflowTestEnv

ROOT = Path(__file__).resolve().parents[2]
SECTION = re.compile(r"^### Build your own workflows\n(.*?)^### ", re.MULTILINE | re.DOTALL)
SHELL = re.compile(r"^```sh\n(.*?)^```", re.MULTILINE | re.DOTALL)
HEREDOC = re.compile(r"^cat > (\S+) <<'EOF'\n(.*?)^EOF$", re.MULTILINE | re.DOTALL)


def readme_block() -> str:
    section = SECTION.search((ROOT / "README.md").read_text())
    assert section is not None, "README.md has no 'Build your own workflows' section"
    block = SHELL.search(section.group(1))
    assert block is not None, "the section has no sh block"
    return block.group(1)


async def test_the_readme_application_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block = readme_block()
    files = HEREDOC.findall(block)
    assert [name for name, _ in files] == ["hello_app/workflows.py", "hello_app/steps.py"]
    (tmp_path / "hello_app").mkdir()
    (tmp_path / "hello_app" / "__init__.py").touch()
    for name, text in files:
        (tmp_path / name).write_text(text)
    assert "relayflow-run --app hello_app" in block
    monkeypatch.syspath_prepend(str(tmp_path))
    for var in ("RELAYFLOW_APPS", "RELAYFLOW_WORKFLOWS", "RELAYFLOW_STEP_MODULES"):
        monkeypatch.delenv(var, raising=False)
    try:
        check_apps(Settings(apps=["hello_app"]))
        workflows = importlib.import_module("hello_app.workflows")
        steps = importlib.import_module("hello_app.steps").steps
        assert isinstance(steps, StepRegistry)
        env = WorkflowTestEnv(workflows.WORKFLOWS, steps)
        run = await env.start("hello", {"name": "Ada"})
        state = await env.run(run)
    finally:
        for module in [name for name in sys.modules if name.split(".")[0] == "hello_app"]:
            del sys.modules[module]
    assert state.status is WorkflowStatus.COMPLETED
    assert '"output":{"greeting":"hello, Ada"}' in block
    assert state.output == {"greeting": "hello, Ada"}
