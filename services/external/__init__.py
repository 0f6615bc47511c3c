"""A stand-in for the external system the seed workflow talks to: it answers every
`ExternalRequest` with an `ExternalReply` on the request's `replyTo` routing key.

    python -m services.external
"""
