"""Signed, expiring claims: the gateway's session cookies and stream tokens.

A token reads `<claims>.<tag>`, both base64url without padding: the claims are compact JSON
with an expiry (`exp`, Unix seconds), the tag HMAC-SHA256 of the claims' text under one
purpose's key, derived from the server secret (`relayflow.auth.keys.server_key`), so that a
session cookie can never pass for a stream token nor either for the other's purpose. Nothing is
stored: a token is checked by its tag and its expiry, and whoever reads it checks that the key
it names is still active, so no token outlives its key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import orjson
from pydantic import SecretStr

from relayflow.auth.keys import server_key

Clock = Callable[[], float]
Claims = Mapping[str, str | int]
# Far longer than any token made here; a longer one is refused before any work.
MAX_TOKEN_LENGTH = 1024


def _encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs and checks claims under one purpose's key; `clock` says what time it is (Unix
    seconds), injectable so that expiry is tested without waiting."""

    _key: bytes = field(repr=False)
    clock: Clock = time.time

    @classmethod
    def from_secret(
        cls, server_secret: SecretStr | None, purpose: str, clock: Clock = time.time
    ) -> Signer:
        return cls(server_key(server_secret, purpose), clock)

    def tag(self, text: str) -> str:
        """The keyed MAC of `text`, base64url."""
        return _encode(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def sign(self, claims: Claims, lifetime: float) -> tuple[str, int]:
        """A token of `claims` that expires `lifetime` seconds from now, and that expiry."""
        expires = int(self.clock() + lifetime)
        body = _encode(orjson.dumps({**claims, "exp": expires}))
        return f"{body}.{self.tag(body)}", expires

    def verify(self, token: str) -> dict[str, str | int] | None:
        """The claims of `token` if this signer made it and it has not expired; else None
        (forged, altered, expired or not a token: the caller only needs to refuse it)."""
        if len(token) > MAX_TOKEN_LENGTH:
            return None
        body, dot, tag = token.partition(".")
        if not dot or not hmac.compare_digest(self.tag(body).encode(), tag.encode()):
            return None
        try:
            claims = orjson.loads(_decode(body))
        except (binascii.Error, ValueError):  # pragma: no cover - only we sign bodies
            return None
        if not isinstance(claims, dict):  # pragma: no cover - only we sign bodies
            return None
        expires = claims.get("exp")
        if not isinstance(expires, int) or expires <= self.clock():
            return None
        return claims
