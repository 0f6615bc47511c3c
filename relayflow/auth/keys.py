"""API keys: their format, making one, and hashing and checking one.

A key reads `rf_<id>_<secret>`: `rf_` says what it is (and lets secret scanners find it), the id
(16 characters of base32, 80 random bits) is public — it names the key in `keys list`, `keys
revoke` and the logs — and the secret (48 characters of base32, 240 random bits) is shown once,
when the key is made, and never stored. Verifying looks up one row by the id and compares one
hash.

What is stored is HMAC-SHA256 of the whole key under a key derived from the server secret
(`RELAYFLOW_AUTH_SECRET`), compared with `hmac.compare_digest`. Keyed rather than slow
(scrypt): a slow hash protects guessable secrets, and these are 240 random bits that no one
can guess, however fast the hash; the gateway checks a key on every request, where scrypt's
tens of milliseconds of CPU each would cap throughput and let anyone holding a key id (it is
public) burn CPU with wrong secrets. Keyed, a copy of the table alone is useless: without the
server secret no stored hash can be matched or forged. The server secret is derived per purpose
(`derive`), so that the gateway's session cookies and stream tokens (`relayflow.auth.signed`)
are signed from the same setting without sharing a key with the hashes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

from pydantic import SecretStr

from relayflow.auth.errors import AuthConfigurationError, KeyFormatError

PREFIX = "rf_"
ID_LENGTH = 16
SECRET_LENGTH = 48
KEY_LENGTH = len(PREFIX) + ID_LENGTH + 1 + SECRET_LENGTH
# The shortest server secret accepted: 32 characters of `secrets.token_urlsafe` carry 192 bits.
MIN_SERVER_SECRET = 32
HOW_TO_MAKE_A_SECRET = (
    "set RELAYFLOW_AUTH_SECRET to a random value of at least "
    f"{MIN_SERVER_SECRET} characters, the same for the gateway and `relayflow keys`, e.g. "
    "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`"
)

_BASE32 = re.compile(r"[a-z2-7]+")
_ID_BYTES = ID_LENGTH * 5 // 8
_SECRET_BYTES = SECRET_LENGTH * 5 // 8
_SHAPE = f"{PREFIX}<id>_<secret>"


def _base32(count: int) -> str:
    return base64.b32encode(secrets.token_bytes(count)).decode("ascii").lower()


@dataclass(frozen=True, slots=True)
class PresentedKey:
    """A key split into its public id and the rest, which is never shown (not in `repr`)."""

    key_id: str
    text: str = field(repr=False)


def new_key() -> PresentedKey:
    """A fresh key: a random id and a random secret."""
    key_id = _base32(_ID_BYTES)
    return PresentedKey(key_id, f"{PREFIX}{key_id}_{_base32(_SECRET_BYTES)}")


def check_key_id(key_id: str) -> str:
    """`key_id` if it is shaped like a key's id; `KeyFormatError` otherwise."""
    if len(key_id) != ID_LENGTH or not _BASE32.fullmatch(key_id):
        raise KeyFormatError(
            f"malformed API key id: an id is {ID_LENGTH} characters of a-z and 2-7"
        )
    return key_id


def parse_key(text: str) -> PresentedKey:
    """The key in `text`, or `KeyFormatError` saying which part is wrong (never repeating the
    text: it may be someone's real key with a typo)."""
    if not text:
        raise KeyFormatError("no API key given")
    if text != text.strip():
        raise KeyFormatError("malformed API key: it has whitespace around it")
    if not text.startswith(PREFIX):
        raise KeyFormatError(f"not a relayflow API key: a key reads {_SHAPE}")
    key_id, separator, secret = text[len(PREFIX) :].partition("_")
    if not separator:
        raise KeyFormatError(f"malformed API key: a key reads {_SHAPE}")
    check_key_id(key_id)
    if len(secret) != SECRET_LENGTH or not _BASE32.fullmatch(secret):
        raise KeyFormatError(
            f"malformed API key: its secret is {SECRET_LENGTH} characters of a-z and 2-7 "
            f"(this one has {len(secret)} characters"
            f"{'' if _BASE32.fullmatch(secret) else ', some of them others'})"
        )
    return PresentedKey(key_id, text)


def derive(server_secret: bytes, purpose: str) -> bytes:
    """A key for one purpose from the server secret, so that no two uses share a key."""
    return hmac.new(server_secret, f"relayflow/{purpose}".encode(), hashlib.sha256).digest()


def server_key(server_secret: SecretStr | None, purpose: str) -> bytes:
    """`purpose`'s key from the server secret; `AuthConfigurationError` if it is unset or too
    short to be one."""
    value = server_secret.get_secret_value() if server_secret is not None else ""
    if not value:
        raise AuthConfigurationError(
            f"no server secret to sign or hash with: {HOW_TO_MAKE_A_SECRET}"
        )
    if len(value) < MIN_SERVER_SECRET:
        raise AuthConfigurationError(f"the server secret is too short: {HOW_TO_MAKE_A_SECRET}")
    return derive(value.encode(), purpose)


@dataclass(frozen=True, slots=True)
class KeyHasher:
    """Hashes keys for storage and checks a presented key against a stored hash."""

    _key: bytes = field(repr=False)

    @classmethod
    def from_secret(cls, server_secret: SecretStr | None) -> KeyHasher:
        return cls(server_key(server_secret, "api-key-hash/v1"))

    def digest(self, key: PresentedKey) -> bytes:
        return hmac.new(self._key, key.text.encode("ascii"), hashlib.sha256).digest()

    def matches(self, key: PresentedKey, stored: bytes) -> bool:
        """Whether `key` hashes to `stored`, compared in constant time: how long the comparison
        takes says nothing of how much of the hash was right."""
        return hmac.compare_digest(self.digest(key), stored)
