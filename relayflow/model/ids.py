"""Deterministic message ids: one function per scheme, and the only place each is spelled.

Consumers deduplicate by message id, so every message that may be sent again (after a crash, a
redelivery, a sweep) must get the same id each time: it is derived from what the message is
about, never drawn at random.
"""

from __future__ import annotations

import hashlib
from typing import Final

from relayflow.contracts.messages import BaseMessage, b32


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


def child_workflow_id(parent_id: str, step_name: str, step_key: str, attempt: int) -> str:
    """The workflow a child step's attempt starts: the same attempt always names the same child,
    so a re-dispatch, a duplicate or a crash never starts a second one; a retry (next attempt)
    starts a fresh one. Hashed, so that it fits a workflow id whatever the names' lengths."""
    digest = hashlib.sha256(f"{parent_id}\x00{step_name}\x00{step_key}\x00{attempt}".encode())
    return f"wf_{b32(digest.digest()[:16])}"


def child_start_id(child_id: str) -> str:
    """The StartWorkflow of a child."""
    return f"chs:{child_id}"


def child_cancel_id(child_id: str) -> str:
    """The CancelWorkflow a parent sends its child when the parent stops."""
    return f"chc:{child_id}"


def child_result_id(child_id: str, run: int) -> str:
    """The StepResult a child sends its parent when run `run` of it ends (a retried child that
    ends again sends another, which the parent judges by attempt like any result)."""
    return f"chr:{child_id}:{run}"


# `BaseMessage.messageId`'s limit: every id here must fit it.
MAX_MESSAGE_ID: Final[int] = BaseMessage.model_json_schema(by_alias=True)["properties"][
    "messageId"
]["maxLength"]


def signal_id(workflow_id: str, signal_name: str, idempotency_key: str) -> str:
    """A signal sent under an idempotency key: the same key always names the same signal, so
    the orchestrator's inbox counts a resend once. The key is hashed, so that any key fits; the
    workflow id and the signal name are spelled out for a reader, unless the id would then be
    longer than a message id may be: then the whole id is hashed (still one id per input)."""
    digest = hashlib.sha256(f"{workflow_id}\x00{signal_name}\x00{idempotency_key}".encode())
    readable = f"sig:{workflow_id}:{signal_name}:{b32(digest.digest()[:16])}"
    if len(readable) <= MAX_MESSAGE_ID:
        return readable
    # One colon, where a readable id has three: the two forms cannot meet.
    return f"sig:{b32(hashlib.sha256(readable.encode()).digest()[:16])}"
