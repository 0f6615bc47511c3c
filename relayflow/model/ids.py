"""Deterministic message ids: one function per scheme, and the only place each is spelled.

Consumers deduplicate by message id, so every message that may be sent again (after a crash, a
redelivery, a sweep) must get the same id each time: it is derived from what the message is
about, never drawn at random.
"""

from __future__ import annotations


def event_id(workflow_id: str, seq: int) -> str:
    """A workflow's event number `seq` (also its SSE id)."""
    return f"evt:{workflow_id}:{seq}"


def event_batch_id(first_event_id: str) -> str:
    """The broadcast of one transaction's events, named by its first event."""
    return f"evb:{first_event_id}"


def command_id(workflow_id: str, step_name: str, step_key: str, attempt: int) -> str:
    """The StepCommand of one attempt of one invocation."""
    return f"cmd:{workflow_id}:{step_name}:{step_key}:{attempt}"


def result_id(workflow_id: str, step_name: str, step_key: str, attempt: int) -> str:
    """The StepResult of one attempt of one invocation: a republished result is a duplicate."""
    return f"res:{workflow_id}:{step_name}:{step_key}:{attempt}"
