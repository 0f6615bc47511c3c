"""Message models. Field names are camelCase on the wire, snake_case in Python."""

from __future__ import annotations

import hashlib
import os
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from pydantic.alias_generators import to_camel

SCHEMA_VERSION: Final = 1

# Identifiers: a readable prefix, then 26 Crockford-base32 characters; time-ordered for random
# ids (like a ULID) so that ids sort by creation, content-derived for idempotency keys.
_B32 = "0123456789abcdefghjkmnpqrstvwxyz"


def b32(data: bytes) -> str:
    """26 lowercase Crockford-base32 characters of `data` (its last 130 bits)."""
    number = int.from_bytes(data, "big")
    chars = []
    for _ in range(26):
        chars.append(_B32[number & 31])
        number >>= 5
    return "".join(reversed(chars))


def _time_ordered(prefix: str) -> str:
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{b32(millis.to_bytes(6, 'big') + os.urandom(10))}"


def minted_at(identifier: str) -> float | None:
    """When a time-ordered id (`new_workflow_id`, `new_message_id`) was made, in seconds since
    the epoch; None for what cannot be one. A content-derived id decodes to a time too, but to a
    random one: 48 random bits fall within a minute of now about once in 10^10 ids."""
    _, sep, digits = identifier.partition("_")
    if not sep or len(digits) != 26:
        return None
    number = 0
    for char in digits:
        value = _B32.find(char)
        if value < 0:
            return None
        number = number << 5 | value
    return (number >> 80) / 1000


def new_workflow_id() -> str:
    return _time_ordered("wf")


def new_message_id() -> str:
    return _time_ordered("msg")


# Tenants: whose a workflow is. A name is short and plain (it travels in keys, tokens and log
# lines and needs no quoting anywhere); a run started without one is the default tenant's.
DEFAULT_TENANT: Final = "default"
TENANT_PATTERN: Final = r"^[a-z0-9][a-z0-9_-]{0,62}$"


def workflow_id_for_key(
    workflow_name: str, idempotency_key: str, tenant: str = DEFAULT_TENANT
) -> str:
    """The workflow id an idempotency key stands for: the same key always names the same run,
    whichever gateway replica or direct publisher sees it. The SHA-256 of
    `<workflowName> NUL <key>` (UTF-8), for another tenant than the default of
    `tenant:<tenant> NUL <workflowName> NUL <key>` (a workflow name holds no `:`, so the two
    never meet); its first 16 bytes as a 128-bit number, written as 26 Crockford-base32 digits
    (`0-9a-hjkmnp-tv-z`, most significant first, the top two bits always 0) after `wf_`."""
    text = f"{workflow_name}\x00{idempotency_key}"
    if tenant != DEFAULT_TENANT:
        text = f"tenant:{tenant}\x00{text}"
    digest = hashlib.sha256(text.encode()).digest()
    return f"wf_{b32(digest[:16])}"


def wire_tenant(tenant: str) -> str | None:
    """How a message names `tenant`: the default tenant's messages leave the field out, so that
    they read as they did before tenants."""
    return None if tenant == DEFAULT_TENANT else tenant


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        ser_json_timedelta="float",
    )


WorkflowId = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
StepName = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
TenantName = Annotated[str, Field(pattern=TENANT_PATTERN)]


class BaseMessage(_Model):
    """Fields every message carries."""

    message_id: Annotated[str, Field(min_length=1, max_length=200)]
    schema_version: Literal[1] = 1
    created_at: datetime = Field(default_factory=utcnow)


class Envelope(BaseMessage):
    """Fields every message about one workflow carries."""

    workflow_id: WorkflowId
    idempotency_key: Annotated[str, Field(min_length=1, max_length=200)] | None = None


class ParentRef(_Model):
    """The step of another workflow that started this one as its child: the child's outcome is
    sent back to it as a StepResult for that step, key and attempt."""

    workflow_id: WorkflowId
    step_name: StepName
    step_key: Annotated[str, Field(max_length=200)] = "0"
    attempt: Annotated[int, Field(ge=1)]


class StartWorkflow(Envelope):
    """Asks the orchestrator to start a workflow. Starting the same `workflowId` twice runs it
    once; a direct publisher that only has an idempotency key derives the id with
    `workflow_id_for_key` (with its tenant)."""

    type: Literal["StartWorkflow"] = "StartWorkflow"
    workflow_name: StepName
    input: dict[str, Any]
    # Whose run it is; absent: the default tenant's. A child is its parent's tenant's. Where the
    # orchestrator checks senders, a broker user may start runs only of its own tenants
    # (RELAYFLOW_BROKER_TENANTS).
    tenant: TenantName | None = None
    # Set when a workflow's `child` step starts this one; absent for a top-level start.
    parent: ParentRef | None = None


class StepCommand(Envelope):
    """Asks a step service to run one step invocation (workflowId + stepName + stepKey)."""

    type: Literal["StepCommand"] = "StepCommand"
    workflow_name: StepName
    step_name: StepName
    step_key: Annotated[str, Field(max_length=200)] = "0"
    attempt: Annotated[int, Field(ge=1)]
    input: dict[str, Any]
    # Outputs of every step this one comes after, directly or through others, by step name.
    dependencies: dict[str, Any] = Field(default_factory=dict)
    # The step body to run, when it is not the one named like the step (a body serving several
    # steps); the command travels on that body's queue.
    body: StepName | None = None
    # One item of a map step: the body's input is the item (any JSON), `itemIndex` its place in
    # the list, `stepKey` its key; `input` and `dependencies` are then empty, so that a command
    # stays the size of its item however large the workflow's input.
    item: Any = None
    item_index: Annotated[int, Field(ge=0)] | None = None


class ErrorInfo(_Model):
    """A failure as data: what went wrong and whether trying again may help."""

    type: Annotated[str, Field(min_length=1, max_length=200)]
    message: str
    retryable: bool = True


class StepResultStatus(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class StepResult(Envelope):
    """A step invocation's outcome, sent back to the orchestrator."""

    type: Literal["StepResult"] = "StepResult"
    step_name: StepName
    step_key: Annotated[str, Field(max_length=200)] = "0"
    attempt: Annotated[int, Field(ge=1)]
    status: StepResultStatus
    output: Any = None
    error: ErrorInfo | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


class ExternalRequest(Envelope):
    """A request to an external system; its reply must echo `correlationId` and be published to
    `replyTo` (a routing key on the main exchange)."""

    type: Literal["ExternalRequest"] = "ExternalRequest"
    correlation_id: Annotated[str, Field(min_length=1, max_length=200)]
    reply_to: Annotated[str, Field(min_length=1, max_length=200)]
    payload: dict[str, Any]


class ExternalReply(Envelope):
    """An external system's answer; the orchestrator routes it to the step waiting for its
    `correlationId`, or keeps it until that step starts waiting."""

    type: Literal["ExternalReply"] = "ExternalReply"
    correlation_id: Annotated[str, Field(min_length=1, max_length=200)]
    payload: dict[str, Any]


class CancelWorkflow(Envelope):
    """Asks the orchestrator to cancel a running workflow: no further step is dispatched and
    results still in flight are ignored. Cancelling a finished workflow changes nothing."""

    type: Literal["CancelWorkflow"] = "CancelWorkflow"
    # The tenant the sender acts for: the workflow must be that tenant's, else the message is
    # refused. Absent: any tenant's (a sender the orchestrator does not restrict to tenants).
    tenant: TenantName | None = None
    reason: Annotated[str, Field(max_length=1000)] = ""


class SignalWorkflow(Envelope):
    """A named signal to a running workflow (a person's decision, another system's news),
    with a payload its definition's model for that signal validates. A wait step for that
    signal takes it; one that arrives before its wait starts is kept, and several of one name
    reach successive waits in the order they were applied. The same message id counts once."""

    type: Literal["SignalWorkflow"] = "SignalWorkflow"
    # The tenant the sender acts for: the workflow must be that tenant's, else the message is
    # refused. Absent: any tenant's (a sender the orchestrator does not restrict to tenants).
    tenant: TenantName | None = None
    signal_name: StepName
    payload: dict[str, Any] = Field(default_factory=dict)
    # Who sent it, as the sender says (shown in the history).
    sent_by: Annotated[str, Field(max_length=200)] | None = None


class RetryWorkflow(Envelope):
    """Asks the orchestrator to run a failed (or cancelled) workflow again from the steps that
    did not complete; completed steps keep their outputs and do not run again."""

    type: Literal["RetryWorkflow"] = "RetryWorkflow"
    # The tenant the sender acts for: the workflow must be that tenant's, else the message is
    # refused. Absent: any tenant's (a sender the orchestrator does not restrict to tenants).
    tenant: TenantName | None = None
    reason: Annotated[str, Field(max_length=1000)] = ""


class EventType(StrEnum):
    WORKFLOW_STARTED = "workflow.started"
    WORKFLOW_COMPLETED = "workflow.completed"
    WORKFLOW_FAILED = "workflow.failed"
    WORKFLOW_CANCELLED = "workflow.cancelled"
    # A failed or cancelled workflow was asked to run again; it is `running` after this event.
    WORKFLOW_RETRIED = "workflow.retried"
    # It failed or was cancelled with compensable steps completed: their undo steps run (data:
    # cause, error); then it is compensated, or compensation_failed (data: error).
    WORKFLOW_COMPENSATING = "workflow.compensating"
    WORKFLOW_COMPENSATED = "workflow.compensated"
    WORKFLOW_COMPENSATION_FAILED = "workflow.compensation_failed"
    # A step's undo step started, completed, or failed for good (data: attempt, body; error).
    STEP_COMPENSATING = "step.compensating"
    STEP_COMPENSATED = "step.compensated"
    STEP_COMPENSATION_FAILED = "step.compensation_failed"
    STEP_STARTED = "step.started"
    STEP_COMPLETED = "step.completed"
    STEP_FAILED = "step.failed"
    # The step's condition was false, or every step it comes after was skipped (data: reason).
    STEP_SKIPPED = "step.skipped"
    # An attempt failed and another is scheduled (data: attempt, nextAttempt, nextAttemptAt, error).
    STEP_RETRYING = "step.retrying"
    # A child step's workflow (data: childWorkflowId, childWorkflowName; then output or error).
    CHILD_STARTED = "child.started"
    CHILD_COMPLETED = "child.completed"
    CHILD_FAILED = "child.failed"
    # A named signal reached the workflow (data: signal, payload, sentBy, signalId).
    SIGNAL_RECEIVED = "signal.received"
    # A sleep step began its durable sleep (data: attempt, wakeAt).
    STEP_SLEEPING = "step.sleeping"
    # A map step's items: how many have ended (data: total, completed, failed, running), sent
    # when another hundredth of them has ended, so a 10,000-item map sends about 100; and each
    # item that failed an attempt or for good (its `stepKey` set; data: attempt, error, …).
    STEP_PROGRESS = "step.progress"
    STEP_ITEM_RETRYING = "step.item.retrying"
    STEP_ITEM_FAILED = "step.item.failed"


TERMINAL_EVENTS = frozenset(
    {
        EventType.WORKFLOW_COMPLETED,
        EventType.WORKFLOW_FAILED,
        EventType.WORKFLOW_CANCELLED,
        EventType.WORKFLOW_COMPENSATED,
        EventType.WORKFLOW_COMPENSATION_FAILED,
    }
)


class WorkflowEvent(Envelope):
    """Something that happened to a workflow, numbered by `seq` within it (1, 2, 3, …)."""

    type: Literal["WorkflowEvent"] = "WorkflowEvent"
    seq: Annotated[int, Field(ge=1)]
    event: EventType
    workflow_name: StepName
    # The workflow's tenant; absent: the default tenant's. Streams show a tenant only its own.
    tenant: TenantName | None = None
    step_name: StepName | None = None
    # The invocation an item event is about (map steps); absent on step-level events.
    step_key: Annotated[str, Field(max_length=200)] | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


class WorkflowEventBatch(BaseMessage):
    """The events one orchestrator transaction produced, possibly of many workflows, published
    as one message on the events fanout: a handful of broker messages per batch instead of one
    per event. Each event is exactly what `workflow_events` stores."""

    type: Literal["WorkflowEventBatch"] = "WorkflowEventBatch"
    events: Annotated[list[WorkflowEvent], Field(min_length=1)]


Message = Annotated[
    StartWorkflow
    | StepCommand
    | StepResult
    | ExternalRequest
    | ExternalReply
    | WorkflowEvent
    | WorkflowEventBatch
    | CancelWorkflow
    | RetryWorkflow
    | SignalWorkflow,
    Field(discriminator="type"),
]
OrchestratorInput = Annotated[
    StartWorkflow | StepResult | ExternalReply | CancelWorkflow | RetryWorkflow | SignalWorkflow,
    Field(discriminator="type"),
]

MESSAGE_TYPES: dict[str, type[BaseMessage]] = {
    "StartWorkflow": StartWorkflow,
    "StepCommand": StepCommand,
    "StepResult": StepResult,
    "ExternalRequest": ExternalRequest,
    "ExternalReply": ExternalReply,
    "WorkflowEvent": WorkflowEvent,
    "WorkflowEventBatch": WorkflowEventBatch,
    "CancelWorkflow": CancelWorkflow,
    "RetryWorkflow": RetryWorkflow,
    "SignalWorkflow": SignalWorkflow,
}

_message_adapter: TypeAdapter[Message] = TypeAdapter(Message)
M = TypeVar("M")


def encode(message: BaseMessage) -> bytes:
    """The wire form: compact JSON with camelCase keys."""
    return orjson.dumps(message.model_dump(mode="json", by_alias=True, exclude_none=True))


def decode(body: bytes) -> Message:
    """Parse any message; raises `pydantic.ValidationError` (a `ValueError`) with the reason."""
    return _message_adapter.validate_json(body)


def decode_as(adapter: TypeAdapter[M], body: bytes) -> M:
    return adapter.validate_json(body)
