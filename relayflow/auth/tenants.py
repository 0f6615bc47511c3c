"""What a tenant name and a key's name may be. A tenant name travels in keys, tokens and log
lines; it is kept short and plain so that it needs no quoting anywhere."""

from __future__ import annotations

import re
import unicodedata

from relayflow.auth.errors import AuthError
from relayflow.contracts import TENANT_PATTERN

TENANT = re.compile(TENANT_PATTERN)
MAX_KEY_NAME = 200


class InvalidKeyDetails(AuthError, ValueError):
    """A tenant or key name that cannot be stored; the message says what is wrong."""


def check_tenant(tenant: str) -> str:
    if not TENANT.fullmatch(tenant):
        raise InvalidKeyDetails(
            "a tenant is 1 to 63 characters of a-z, 0-9, '_' and '-', starting with a letter or "
            f"digit; got {tenant!r}"
        )
    return tenant


def check_key_name(name: str | None) -> str | None:
    """The name, or None for none (an empty name is none). Control characters are refused:
    PostgreSQL cannot store NUL, and the others would garble `keys list`."""
    if not name:
        return None
    if len(name) > MAX_KEY_NAME:
        raise InvalidKeyDetails(f"a key's name is at most {MAX_KEY_NAME} characters")
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise InvalidKeyDetails("a key's name cannot hold control characters")
    return name
