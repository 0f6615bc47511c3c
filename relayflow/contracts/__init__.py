"""The wire contract: every message that crosses the broker, with its envelope.

The committed JSON Schemas under `schemas/` are generated from these models
(`relayflow-schemas`), and contract tests fail when the two drift.
"""

from relayflow.contracts.messages import (
    MESSAGE_TYPES,
    SCHEMA_VERSION,
    TERMINAL_EVENTS,
    CancelWorkflow,
    Envelope,
    ErrorInfo,
    EventType,
    ExternalReply,
    ExternalRequest,
    Message,
    OrchestratorInput,
    RetryWorkflow,
    StartWorkflow,
    StepCommand,
    StepResult,
    StepResultStatus,
    WorkflowEvent,
    decode,
    decode_as,
    encode,
    new_message_id,
    new_workflow_id,
    workflow_id_for_key,
)

__all__ = [
    "MESSAGE_TYPES",
    "SCHEMA_VERSION",
    "TERMINAL_EVENTS",
    "CancelWorkflow",
    "Envelope",
    "ErrorInfo",
    "EventType",
    "ExternalReply",
    "ExternalRequest",
    "Message",
    "OrchestratorInput",
    "RetryWorkflow",
    "StartWorkflow",
    "StepCommand",
    "StepResult",
    "StepResultStatus",
    "WorkflowEvent",
    "decode",
    "decode_as",
    "encode",
    "new_message_id",
    "new_workflow_id",
    "workflow_id_for_key",
]
