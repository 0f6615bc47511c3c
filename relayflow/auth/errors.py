"""Errors of authentication. None of them ever holds a presented key or its secret: they are
logged, and a key must never appear in a log."""

from __future__ import annotations

from relayflow.errors import RelayflowError


class AuthError(RelayflowError):
    """Root of the errors of credentials."""


class AuthConfigurationError(AuthError):
    """The server secret is missing or too weak to hash keys with."""


class KeyRefused(AuthError):
    """A presented key does not authenticate anyone. `reason` is for the log and the operator;
    a client is only ever told that it is not authenticated."""

    def __init__(self, reason: str, key_id: str | None = None) -> None:
        super().__init__(f"{reason} (key {key_id})" if key_id else reason)
        self.reason = reason
        self.key_id = key_id


class KeyFormatError(KeyRefused, ValueError):
    """The text is not shaped like a relayflow API key (`rf_<id>_<secret>`); the message says
    which part is wrong, without repeating the text."""


class UnknownKey(AuthError):
    """No key has this id (an operator's command named one that does not exist)."""

    def __init__(self, key_id: str) -> None:
        super().__init__(f"no API key with id {key_id}")
        self.key_id = key_id


class TokenRefused(AuthError):
    """A presented OIDC token (JWT) does not authenticate anyone: forged, expired, for another
    audience or issuer, signed with an algorithm or key not accepted. The message is for the
    log and never holds the token; a client is only told that it is not authenticated."""


class TokenForbidden(AuthError):
    """An authentic OIDC token that names no relayflow caller: no role relayflow knows, or no
    valid tenant. The message says which claim, for the client (403) and the log."""


class IdpUnavailable(AuthError):
    """The identity provider's discovery document, JWKS or token endpoint cannot be read, so a
    token cannot be checked now (a 503, not a refusal)."""
