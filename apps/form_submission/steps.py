"""The step bodies of `formSubmission` (see `apps/form_submission/workflows.py`); `persist` and
`finalize` write `form_submissions`, this application's own table (`migrations/`).

`awaitResponse` is not here: it is a wait, held by the orchestrator.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from apps.form_submission.workflows import ContactForm
from relayflow.contracts import ExternalRequest
from relayflow.db import Queries
from relayflow.errors import StepError
from relayflow.steps import StepContext, StepRegistry
from relayflow.topology import EXTERNAL_REQUEST_KEY, SIGNAL_KEY

QUERIES = Queries.load("apps.form_submission")

# Throwaway-address providers: a submission from one cannot be answered, so it is refused.
DISPOSABLE_DOMAINS = frozenset(
    {
        "mailinator.com",
        "guerrillamail.com",
        "10minutemail.com",
        "tempmail.com",
        "temp-mail.org",
        "trashmail.com",
        "yopmail.com",
        "sharklasers.com",
        "throwawaymail.com",
        "getnada.com",
    }
)

steps = StepRegistry(migrations=["apps.form_submission"])


class _Output(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class ValidateOutput(_Output):
    valid: bool
    email: str


class PersistOutput(_Output):
    record_id: str


class PublishOutput(_Output):
    correlation_id: str


class FinalizeOutput(_Output):
    record_id: str
    ticket_id: str | None
    status: str


def correlation_id_for(workflow_id: str) -> str:
    return f"{workflow_id}:awaitResponse"


def _email(ctx: StepContext[ContactForm]) -> str:
    validated = ctx.dependencies.get("validate")
    email = validated.get("email") if isinstance(validated, dict) else None
    if isinstance(email, str):
        return email
    return ctx.input.email.strip().lower()


def _record_id(ctx: StepContext[ContactForm]) -> str:
    persisted = ctx.dependencies.get("persist")
    record_id = persisted.get("recordId") if isinstance(persisted, dict) else None
    if isinstance(record_id, str):
        return record_id
    return ctx.workflow_id


@steps.step("validate")
async def validate(ctx: StepContext[ContactForm]) -> ValidateOutput:
    """Business checks beyond the gateway's schema; a refusal is final (non-retryable)."""
    form = ctx.input
    if not form.message.strip():
        raise StepError("the message is empty", type="EmptyMessage", non_retryable=True)
    if not form.name.strip():
        raise StepError("the name is empty", type="EmptyName", non_retryable=True)
    email = form.email.strip().lower()
    domain = email.rsplit("@", 1)[-1]
    if domain in DISPOSABLE_DOMAINS:
        raise StepError(
            f"addresses at {domain} are disposable; use a lasting address",
            type="DisposableEmail",
            non_retryable=True,
        )
    return ValidateOutput(valid=True, email=email)


@steps.step("persist", transactional=True)
async def persist(ctx: StepContext[ContactForm]) -> PersistOutput:
    """Store the submission; the row commits with the step's success record, once."""
    form = ctx.input
    await ctx.connection.execute(
        QUERIES.insert_submission, ctx.workflow_id, form.name, _email(ctx), form.message
    )
    return PersistOutput(record_id=ctx.workflow_id)


@steps.step("publishToMQ")
async def publish_to_mq(ctx: StepContext[ContactForm]) -> PublishOutput:
    """Hand the submission to the external system; its reply comes back as a signal that the
    orchestrator's `awaitResponse` wait picks up by correlation id. A re-run publishes the same
    message id, which downstream deduplication recognises."""
    form = ctx.input
    correlation_id = correlation_id_for(ctx.workflow_id)
    payload: dict[str, Any] = {
        "recordId": _record_id(ctx),
        "name": form.name,
        "email": _email(ctx),
        "message": form.message,
    }
    request = ExternalRequest(
        message_id=f"ext:{ctx.workflow_id}",
        workflow_id=ctx.workflow_id,
        correlation_id=correlation_id,
        reply_to=SIGNAL_KEY,
        payload=payload,
    )
    await ctx.publish(request, routing_key=EXTERNAL_REQUEST_KEY, correlation_id=correlation_id)
    return PublishOutput(correlation_id=correlation_id)


@steps.step("finalize", transactional=True)
async def finalize(ctx: StepContext[ContactForm]) -> FinalizeOutput:
    """Mark the submission finalised with the external system's reply, exactly once."""
    reply = ctx.dependencies.get("awaitResponse")
    if not isinstance(reply, dict):
        raise StepError(
            "finalize needs the external reply as its awaitResponse dependency",
            type="MissingReply",
            non_retryable=True,
        )
    record_id = _record_id(ctx)
    row = await ctx.connection.fetchrow(QUERIES.finalize_submission, record_id, reply)
    if row is None:
        # persist commits before finalize is dispatched, so this is not expected; retrying
        # costs little and covers a lagging replica.
        raise StepError(f"no submission {record_id!r} to finalise", type="SubmissionNotFound")
    ticket = reply.get("ticketId")
    return FinalizeOutput(
        record_id=record_id,
        ticket_id=ticket if isinstance(ticket, str) else None,
        status="finalized",
    )
