"""The seed workflow: a contact form, persisted, handed to an external system and finalised
once that system replies."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from relayflow.workflow import WorkflowDefinition, define_workflow, task, wait

NAME = "formSubmission"
REPLY_TIMEOUT = timedelta(seconds=60)


class ContactForm(BaseModel):
    """The form a person submits; anything else is refused with the field's error."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    email: EmailStr
    message: str = Field(min_length=1, max_length=10_000)


FORM_SUBMISSION: WorkflowDefinition = define_workflow(
    NAME,
    input_model=ContactForm,
    steps=[
        task("validate"),
        task("persist", after=["validate"]),
        task("publishToMQ", after=["persist"]),
        wait(
            "awaitResponse",
            after=["publishToMQ"],
            correlation_from="publishToMQ.correlationId",
            timeout=REPLY_TIMEOUT,
        ),
        task("finalize", after=["awaitResponse", "persist"]),
    ],
    output_from="finalize",
)

WORKFLOWS = [FORM_SUBMISSION]
