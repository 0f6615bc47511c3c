"""A stand-in for the external system `formSubmission` talks to: it answers every
`ExternalRequest` with an `ExternalReply` on the request's `replyTo` routing key.

    python -m apps.form_submission.external    (relayflow-external; the run command starts it)
"""
