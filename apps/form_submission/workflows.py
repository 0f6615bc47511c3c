"""The workflow `formSubmission`: a contact form, persisted, handed to an external system and
finalised once that system replies. Its step bodies are in `steps.py`."""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel, ConfigDict, EmailStr, Field

from relayflow.workflow import RetryPolicy, WorkflowDefinition, define_workflow, task, wait

NAME = "formSubmission"
REPLY_TIMEOUT = timedelta(seconds=60)
# Start-to-close limit of one attempt of each task: generous, since a timed-out attempt is
# retried while the first may still be running.
STEP_TIMEOUT = timedelta(seconds=60)


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
        task("validate", timeout=STEP_TIMEOUT),
        task("persist", after=["validate"], timeout=STEP_TIMEOUT),
        task("publishToMQ", after=["persist"], timeout=STEP_TIMEOUT),
        wait(
            "awaitResponse",
            after=["publishToMQ"],
            correlation_from="publishToMQ.correlationId",
            timeout=REPLY_TIMEOUT,
        ),
        task("finalize", after=["awaitResponse", "persist"], timeout=STEP_TIMEOUT),
    ],
    output_from="finalize",
    # Transient failures (a database restart, a dropped connection) are retried with backoff.
    retry=RetryPolicy(max_attempts=5, initial_interval=timedelta(milliseconds=500)),
)

WORKFLOWS = [FORM_SUBMISSION]
