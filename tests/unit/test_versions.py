"""Definition versions: derived from the shape (stable across processes, changed by any change),
or declared; several versions of one workflow loaded at once."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import timedelta

import pytest
from pydantic import BaseModel

from relayflow.errors import DefinitionError
from relayflow.workflow import (
    VERSION_PATTERN,
    RetryPolicy,
    WorkflowRegistry,
    define_workflow,
    task,
)
from services.gateway import checks


class Empty(BaseModel):
    pass


def test_a_derived_version_follows_the_shape() -> None:
    base = define_workflow("f", input_model=Empty, steps=[task("a"), task("b", after=["a"])])
    same = define_workflow("f", input_model=Empty, steps=[task("a"), task("b", after=["a"])])
    assert base.version == same.version
    assert base.version.startswith("v")
    changed = [
        define_workflow("f", input_model=Empty, steps=[task("a"), task("b")]),
        define_workflow(
            "f", input_model=Empty, steps=[task("a"), task("b", after=["a"], timeout=timedelta(1))]
        ),
        define_workflow(
            "f",
            input_model=Empty,
            steps=[task("a"), task("b", after=["a"])],
            retry=RetryPolicy(max_attempts=2),
        ),
        define_workflow(
            "f", input_model=Empty, steps=[task("a"), task("b", after=["a"], when=lambda g: True)]
        ),
        define_workflow(
            "f", input_model=Empty, steps=[task("a"), task("b", after=["a"], when=lambda g: False)]
        ),
    ]
    versions = [d.version for d in changed]
    assert base.version not in versions
    assert len(set(versions)) == len(versions)


def test_a_derived_version_does_not_depend_on_the_process() -> None:
    """Gateway, orchestrators and step services derive it each in their own process (with
    their own hash seed): they must agree."""
    script = (
        "from relayflow.settings import Settings;"
        "from relayflow.workflow import WorkflowRegistry;"
        "print(sorted((d.name, d.version) for d in "
        "WorkflowRegistry.from_modules(Settings().workflows)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script],
            env={"PYTHONHASHSEED": str(seed), "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in (1, 2, 3)
    }
    assert len(outputs) == 1


def test_several_versions_load_at_once_and_new_runs_take_the_newest() -> None:
    old = define_workflow("flow", input_model=Empty, steps=[task("a")], version="1")
    new = define_workflow(
        "flow", input_model=Empty, steps=[task("a"), task("b", after=["a"])], version="2"
    )
    registry = WorkflowRegistry([old, new])
    assert registry.get("flow") is new
    assert registry.get("flow", "1") is old
    assert registry.get("flow", "3") is None
    assert registry.versions("flow") == ["1", "2"]
    assert list(registry) == [new]
    assert registry.task_names() == ["a", "b"]
    with pytest.raises(DefinitionError, match="registered twice"):
        WorkflowRegistry([old, old])
    with pytest.raises(DefinitionError, match="version"):
        define_workflow("flow", input_model=Empty, steps=[task("a")], version="no spaces")


@pytest.mark.parametrize(
    ("version", "valid"),
    [
        ("1", True),
        ("v2.0-rc_1", True),
        ("a" * 64, True),
        ("", False),
        ("a" * 65, False),
        ("no spaces", False),
        ("1/2", False),
        ("é", False),
        # `$` alone also matches before a final newline: the whole string must fit.
        ("v1\n", False),
    ],
)
def test_the_version_rule_is_one_for_definitions_and_the_gateway(version: str, valid: bool) -> None:
    """`VERSION_PATTERN` is the one rule: what `define_workflow` accepts as a version is exactly
    what the gateway's list takes as a `version` filter (a run of it can be found by its name)."""
    assert (re.fullmatch(VERSION_PATTERN, version) is not None) is valid
    assert checks.is_version(version) is valid
    if valid:
        assert define_workflow("f", input_model=Empty, steps=[task("a")], version=version)
    else:
        with pytest.raises(DefinitionError, match="version"):
            define_workflow("f", input_model=Empty, steps=[task("a")], version=version)


def test_a_derived_version_fits_the_rule() -> None:
    """A derived version is filtered on like a declared one, so it must fit the same rule."""
    derived = define_workflow("f", input_model=Empty, steps=[task("a")]).version
    assert re.fullmatch(VERSION_PATTERN, derived)
