"""`formSubmission`: a contact form, validated, persisted, handed to an external system and
finalised once that system replies.

Served by the README's run command: `POST /submit` (the gateway's alias,
`RELAYFLOW_GATEWAY_SUBMIT_WORKFLOW`) or `POST /workflows/formSubmission` with
`{"name": "Ada", "email": "ada@example.com", "message": "Hello"}`. Its parts: `workflows.py` (the
DAG and the form's model), `steps.py` (the step bodies), `migrations/` (`form_submissions`) and
`external/`, the stand-in external system its `awaitResponse` wait hears from
(`python -m apps.form_submission.external`, started by the run command).
"""

# Started by the run command beside the core services while this application is served
# (`relayflow.applications`).
PROCESSES = {"external": "apps.form_submission.external"}
