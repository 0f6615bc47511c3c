"""Workflows for the child-workflow tests: a parent whose middle step is a child, which in turn
has a child of its own (parent → child → grandchild), one task each."""

from __future__ import annotations

from pydantic import BaseModel

from relayflow.workflow import child, define_workflow, task


class Empty(BaseModel):
    pass


GRANDCHILD = define_workflow(
    "grandchildFlow", input_model=Empty, steps=[task("leafWork")], output_from="leafWork"
)
CHILD = define_workflow(
    "childFlow",
    input_model=Empty,
    steps=[child("grandchild", workflow=GRANDCHILD, input=lambda given: {})],
    output_from="grandchild",
)
PARENT = define_workflow(
    "parentFlow",
    input_model=Empty,
    steps=[
        task("before"),
        child("kid", workflow=CHILD, after=["before"], input=lambda given: {}),
        task("after", after=["kid"]),
    ],
    output_from="kid",
)

WORKFLOWS = [PARENT, CHILD, GRANDCHILD]
