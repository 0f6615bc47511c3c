"""Who a verified OIDC token names: its subject, tenant and role, read from the claims the
settings say (`RELAYFLOW_OIDC_TENANT_CLAIM`, `RELAYFLOW_OIDC_ROLE_CLAIM`, or a fixed
`RELAYFLOW_OIDC_TENANT`). Pure: the signature and the standard claims were checked before
(`relayflow.auth.oidc`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from relayflow.auth.errors import TokenForbidden, TokenRefused
from relayflow.auth.roles import Role, strongest
from relayflow.auth.tenants import InvalidKeyDetails, check_tenant

# OIDC Core 2: a subject is at most 255 ASCII characters. Printable ones only here: it names
# the caller in logs, limits and tokens.
_SUBJECT = re.compile(r"[\x21-\x7e]{1,255}")


@dataclass(frozen=True, slots=True)
class ClaimMapping:
    tenant_claim: str
    role_claim: str
    # Every token's tenant when set (the tenant claim is then not read).
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """A person as a verified token names them; `expires` is the token's `exp` (Unix seconds),
    past which nothing made from it may be used."""

    subject: str
    tenant: str
    role: Role
    expires: int


def claim(claims: Mapping[str, Any], name: str) -> Any:
    """The claim `name`, or for a dotted name with no claim of its own the nested one
    (`realm_access.roles`); None when absent."""
    if name in claims:
        return claims[name]
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def roles_named(value: Any) -> list[Role]:
    """The relayflow roles in a role claim (a string or a list of strings); other names, which
    an identity provider's group lists hold plenty of, are not roles and are skipped."""
    names = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    known = {role.value for role in Role}
    return [Role(name) for name in names if isinstance(name, str) and name in known]


def identity_of(claims: Mapping[str, Any], mapping: ClaimMapping) -> Identity:
    """The identity of verified `claims`; `TokenRefused` without a usable `sub` or `exp`,
    `TokenForbidden` when no relayflow role or no valid tenant is named."""
    subject, expires = claims.get("sub"), claims.get("exp")
    if not isinstance(subject, str) or not _SUBJECT.fullmatch(subject):
        raise TokenRefused("its sub is not 1 to 255 printable ASCII characters")
    if not isinstance(expires, int | float) or isinstance(expires, bool):
        raise TokenRefused("its exp is not a number")
    role = strongest(roles_named(claim(claims, mapping.role_claim)))
    if role is None:
        raise TokenForbidden(f"no relayflow role in the token (claim {mapping.role_claim!r})")
    tenant = mapping.tenant
    if tenant is None:
        named = claim(claims, mapping.tenant_claim)
        try:
            tenant = check_tenant(named) if isinstance(named, str) else None
        except InvalidKeyDetails:
            tenant = None
        if tenant is None:
            raise TokenForbidden(
                f"no valid relayflow tenant in the token (claim {mapping.tenant_claim!r})"
            )
    return Identity(subject, tenant, role, int(expires))
