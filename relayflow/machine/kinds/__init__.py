"""The table of step kinds: `StepSpec.kind` → its handler. A new kind is a module beside these
and one entry here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from relayflow.errors import DefinitionError
from relayflow.machine.kinds.base import StepKind
from relayflow.machine.kinds.child import Child
from relayflow.machine.kinds.local import LocalTask
from relayflow.machine.kinds.map import Map
from relayflow.machine.kinds.signal_wait import SignalWait
from relayflow.machine.kinds.sleep import Sleep
from relayflow.machine.kinds.task import Task
from relayflow.machine.kinds.wait import Wait
from relayflow.workflow import StepSpec, WorkflowDefinition

KINDS: Final[Mapping[str, StepKind]] = {
    kind.name: kind for kind in (Task(), LocalTask(), Wait(), Child(), Map(), Sleep(), SignalWait())
}


def kind_of(spec: StepSpec) -> StepKind:
    return KINDS[spec.kind]


def check_supported(definition: WorkflowDefinition) -> None:
    """Refuse, at start-up, a definition with a step kind this orchestrator cannot run."""
    for spec in definition.steps.values():
        if spec.kind not in KINDS:
            raise DefinitionError(
                f"workflow {definition.name!r}: step {spec.name!r} is of kind {spec.kind!r}, "
                f"which this orchestrator does not know (known: {', '.join(sorted(KINDS))})"
            )


__all__ = ["KINDS", "StepKind", "check_supported", "kind_of"]
