"""The shapes of the gateway's HTTP answers (camelCase on the wire). The same models build the
responses and the OpenAPI document, so the two cannot disagree."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import MISSING, BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from relayflow.auth import Role
from relayflow.contracts.messages import DEFAULT_TENANT, WorkflowId
from relayflow.model import FINISHED, StepStatus, WorkflowStatus

# The vocabulary is the workflow model's (relayflow/model/status.py); these are its views.
WORKFLOW_STATUSES: tuple[str, ...] = tuple(status.value for status in WorkflowStatus)
FINISHED_STATUSES: frozenset[str] = frozenset(status.value for status in FINISHED)
# Where a compensable step's undo stands, in the workflow statuses' words: being undone (its
# undo waits its turn, runs or waits to retry), undone, or its undo failed for good.
CompensationPhase = Literal[
    WorkflowStatus.COMPENSATING, WorkflowStatus.COMPENSATED, WorkflowStatus.COMPENSATION_FAILED
]
# Why the feed tells a client to fetch the list again.
ResetReason = Literal["connected", "missed events"]
# `versionLoaded` of a run, in the document too.
VERSION_LOADED = (
    "Whether a live orchestrator replica loads the version this run is pinned to. false: none "
    "does, so the run cannot move on (its inputs are dead-lettered with the reason): deploy "
    "that version beside the new one, then redrive the dead-lettered inputs. null: not known "
    "(no orchestrator announces what it loads, as before the first one starts), or the run has "
    "finished."
)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class Accepted(_Model):
    """The broker has confirmed the StartWorkflow: the workflow will run (once)."""

    workflow_id: str = Field(examples=["wf_01jd8n2w0a3k5y6q7r8s9t0v1w"])
    status: Literal["accepted"] = "accepted"


class FieldError(_Model):
    """One field of the input that did not validate; `loc` is its path ([] for the body)."""

    loc: list[str | int]
    message: str
    type: str


class ErrorBody(_Model):
    """Every error answer: what went wrong, and per field where the input was at fault."""

    error: str
    fields: list[FieldError] | None = None


class ErrorView(_Model):
    """A failure as data (`relayflow.contracts.ErrorInfo`); extra keys the orchestrator adds are
    kept."""

    model_config = ConfigDict(extra="allow")

    type: str
    message: str
    retryable: bool = True


class UndoView(_Model):
    """The undo of a completed compensable step while its workflow compensates
    (`relayflow.model.StepState.undo`): an invocation of its own (stepKey `undo`, the step's
    `compensate` body) with its own attempts; `error` is the last failed attempt's."""

    status: StepStatus
    attempts: int = 0
    error: ErrorView | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # While `retrying`: when the undo's next attempt starts.
    next_attempt_at: datetime | None = None


class StepView(_Model):
    name: str
    # The step's kind: task, wait, child, ... (`StepSpec.kind`).
    kind: str = "task"
    status: StepStatus
    attempts: int = 0
    output: Any = None
    error: ErrorView | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    # While `retrying`: when the next attempt starts.
    next_attempt_at: datetime | None = None
    # Child steps: the workflow the current attempt runs (GET /workflows/{it} for its detail).
    child_workflow_id: str | None = None
    # Set once the workflow undoes this (completed, compensable) step: where its undo stands
    # (`compensating`, `compensated`, `compensation_failed`), and the undo itself.
    compensation: CompensationPhase | None = None
    undo: UndoView | None = None


class MapProgressView(_Model):
    """Where a map step's items stand (`relayflow.model.MapProgress`): `running` counts the items
    in flight, waiting to retry included; the rest of `total` is pending."""

    total: int
    completed: int
    failed: int
    running: int


class ItemView(_Model):
    """One item of a map step (`relayflow.model.ItemState.to_json`): `output` only once it
    completed, `error` only when an attempt failed (absent, not null, otherwise)."""

    # The item's stepKey (its index as text, or the key the definition derives from the item).
    key: str
    index: int
    status: StepStatus
    attempts: int
    started_at: datetime | None
    finished_at: datetime | None
    output: Any | MISSING = MISSING
    error: ErrorView | MISSING = MISSING


class MapStepView(StepView):
    """A map step: what every step shows, its progress (null until it started) and its first
    items in item order; `itemsNext` is the URL of the page after them, or null when there is
    none (`GET /workflows/{id}/steps/{step}/items`)."""

    # Every field is always sent: the document says so.
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    kind: Literal["map"] = "map"
    progress: MapProgressView | None = None
    items: list[ItemView] = Field(default_factory=list)
    items_next: str | None = None


class ItemPage(_Model):
    """A page of a map step's items in item order; `next` is the URL of the following page
    (path and query, relative to the gateway), or null on the last page."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    items: list[ItemView]
    next: str | None = None


class WorkflowView(_Model):
    """A workflow's state as the orchestrator last committed it; steps in definition order."""

    workflow_id: str
    name: str
    # The version of its definition the run is pinned to (null: started before versions were
    # recorded).
    version: str | None = None
    # Whose run it is: the tenant of the credential that started it.
    tenant: str = DEFAULT_TENANT
    # Its OpenTelemetry trace (32 hex digits), while the services trace; null otherwise.
    trace_id: str | None = None
    status: WorkflowStatus
    input: dict[str, Any]
    output: Any = None
    error: ErrorView | None = None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    # The workflow whose child step started this one; null at the top.
    parent_workflow_id: str | None = None
    # Map steps have their own view (MapStepView, `kind` "map"); every other step is a StepView.
    steps: list[MapStepView | StepView]
    # The signals its definition declares, by name (POST /workflows/{id}/signals/{name}).
    signals: list[str] = Field(default_factory=list)
    # Signals that arrived before a wait took them: how many of each name are kept.
    mailbox: dict[str, int] = Field(default_factory=dict)
    version_loaded: bool | None = Field(default=None, description=VERSION_LOADED)


class WorkflowSummary(_Model):
    """One row of the workflow list: enough to show progress without every step's output."""

    workflow_id: str
    name: str
    # The version of its definition the run is pinned to (null: from before versions).
    version: str | None = None
    tenant: str = DEFAULT_TENANT
    status: WorkflowStatus
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None = None
    # The seq of the workflow's latest event (its SSE `id`).
    last_seq: int
    steps_total: int
    steps_completed: int
    # Steps now running, waiting for a reply or waiting to retry.
    active_steps: list[str]
    error: ErrorView | None = None
    version_loaded: bool | None = Field(default=None, description=VERSION_LOADED)


class WorkflowPage(_Model):
    """A page of the list, newest first; `next` is the cursor of the following (older) page, to
    pass as `before`, or null on the last page."""

    items: list[WorkflowSummary]
    next: str | None = None


class ActionAccepted(_Model):
    """The broker confirmed the CancelWorkflow or RetryWorkflow; the orchestrator applies it once
    and says so with a `workflow.cancelled` or `workflow.retried` event."""

    workflow_id: str
    action: Literal["cancel", "retry"]
    message_id: str
    status: Literal["accepted"] = "accepted"


class SignalAccepted(_Model):
    """The broker confirmed the SignalWorkflow; the orchestrator applies it once (a resend with
    the same Idempotency-Key has the same `signalId`) and records it as a `signal.received`
    event, whose data carries this `signalId`."""

    workflow_id: str
    signal: str
    signal_id: str = Field(examples=["sig:wf_01jd8n2w0a3k5y6q7r8s9t0v1w:decision:abc"])
    status: Literal["accepted"] = "accepted"


class SignalReceived(_Model):
    """The `data` of a `signal.received` event: the signal's name and payload (as its model
    validated it), who sent it as the sender said (`X-Relayflow-Sender`, null if not said),
    and the signal's id (the `signalId` of the 202)."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    signal: str
    payload: dict[str, Any]
    sent_by: str | None = None
    signal_id: str


class StepSleeping(_Model):
    """The `data` of a `step.sleeping` event: a sleep step's attempt and when it wakes."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    attempt: int
    wake_at: datetime


class ActionOptions(_Model):
    """The body of a cancel or retry: a JSON object with no members (`{}`); the reason is the
    `reason` query parameter. A body is required so that every POST is JSON: see
    `services.gateway.checks`."""

    model_config = ConfigDict(extra="forbid")


class UnknownWorkflow(_Model):
    """The `workflow.unknown` event: no workflow with this id appeared within the wait; the
    stream ends after it."""

    model_config = ConfigDict(extra="forbid")

    error: str
    workflow_id: str


class FeedReset(_Model):
    """The `reset` event of `GET /events`: what the client holds may be stale; fetch the list
    again, then apply the events that follow."""

    model_config = ConfigDict(extra="forbid")

    reason: ResetReason


class SignIn(_Model):
    """The body of `POST /signin`: the API key a person pastes into the dashboard's sign-in
    page (a key whose role may read)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(max_length=200)


class SignedIn(_Model):
    """The session cookie is set: it carries the key's id and expiry, never the key."""

    key_id: str
    role: Role
    expires_at: datetime


class SignOut(_Model):
    """The body of `POST /signout`: `{}` (a body, so that the POST is JSON like every other)."""

    model_config = ConfigDict(extra="forbid")


def _one_scope_schema(schema: dict[str, Any]) -> None:
    """Document the model as what it takes: exactly one of the two members (pydantic would
    describe two optional, nullable fields)."""
    members = schema.pop("properties")
    schema.pop("required", None)
    # Each branch closes itself: beside `oneOf`, a closed object with no properties would
    # allow none at all.
    schema.pop("additionalProperties", None)
    workflow_id = next(
        branch for branch in members["workflowId"]["anyOf"] if branch.get("type") != "null"
    )
    schema["oneOf"] = [
        {
            "type": "object",
            "properties": {"workflowId": workflow_id},
            "required": ["workflowId"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"list": {"const": True}},
            "required": ["list"],
            "additionalProperties": False,
        },
    ]


class StreamTokenRequest(_Model):
    """What a stream token opens: one workflow's events (`workflowId`) or the list's feed
    (`list: true`), exactly one of the two."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_scope_schema)

    workflow_id: WorkflowId | None = None
    list: Literal[True] | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_nulls(cls, data: Any) -> Any:
        # A member sent as null is not "absent": the document allows neither.
        if isinstance(data, dict) and any(value is None for value in data.values()):
            raise ValueError("workflowId and list cannot be null; leave the other one out")
        return data

    @model_validator(mode="after")
    def _one_scope(self) -> StreamTokenRequest:
        if (self.workflow_id is None) == (self.list is None):
            raise ValueError("give exactly one of workflowId and list (true)")
        return self


class StreamToken(_Model):
    """A token for `?token=` on the events route it was made for, valid until `expiresAt` (the
    key it was made with is checked again when it is used)."""

    token: str
    expires_at: datetime


class Health(_Model):
    status: Literal["ok"] = "ok"


class Readiness(_Model):
    status: Literal["ready", "unavailable"]
    database: bool
    broker: bool


# ---- the operator's views: dead letters (services.gateway.dead_letters) ----------------------


class DeadLetterView(_Model):
    """One message of the namespace's dead-letter queue: why it is there (our consumers' reason,
    or `broker: <why>` from the broker's `x-death`), where it came from, and since when."""

    message_id: str
    type: str
    reason: str
    queue: str
    exchange: str
    routing_key: str
    dead_lettered_at: datetime | None
    age_seconds: float | None


class DeadLetterPage(_Model):
    """A page of the dead-letter queue, in queue order: `items` from `offset`; `seen` is how many
    the browse saw (at most 10,000: a larger queue is seen in part), `next` the offset of the
    page after this one, or null."""

    queue: str
    offset: int
    limit: int
    seen: int
    items: list[DeadLetterView]
    next: int | None


class DeadLetterDetail(DeadLetterView):
    """One dead letter whole: its AMQP headers (bytes as text) and its body (JSON when it is
    JSON, else text)."""

    content_type: str | None
    correlation_id: str | None
    headers: dict[str, Any]
    body: Any


class RedriveRequest(_Model):
    """Which dead letters to send back where they came from: those with these message ids, or
    `{"all": true}` for every one (one of the two)."""

    model_config = ConfigDict(extra="forbid")

    message_ids: list[Annotated[str, Field(min_length=1, max_length=255)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )
    all: Literal[True] | None = None

    @model_validator(mode="after")
    def _one_of(self) -> RedriveRequest:
        if (self.message_ids is None) == (self.all is None):
            raise ValueError('name the dead letters in "messageIds", or send "all": true')
        return self


class Redriven(_Model):
    """The dead letters the broker confirmed on their way back (each acked from the queue)."""

    redriven: list[DeadLetterView]
