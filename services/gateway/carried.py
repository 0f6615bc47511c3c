"""A caller carried by value in a signed session cookie or stream token, for a credential the
gateway cannot look up again: an OIDC token (`relayflow.auth.oidc`) names its subject, tenant
and role, and nothing is stored that could be re-read or revoked. An API key is carried by its
id instead and re-read on every use (`services.gateway.access`). Either way what the gateway
signs expires no later than the credential (`lifetime`)."""

from __future__ import annotations

from relayflow.auth import Role
from relayflow.auth.signed import Claims
from services.gateway.state import Caller

_ROLES = {role.value: role for role in Role}


def claims_of(caller: Caller) -> dict[str, str | int]:
    return {"c": caller.id, "t": caller.tenant, "r": caller.role.value}


def caller_in(claims: Claims) -> Caller | None:
    """The caller `claims_of` wrote (with the token's own `exp` as its expiry), else None."""
    caller_id, tenant, role, expires = (claims.get(name) for name in ("c", "t", "r", "exp"))
    if not isinstance(caller_id, str) or not isinstance(tenant, str):
        return None
    if not isinstance(role, str) or role not in _ROLES or not isinstance(expires, int):
        return None
    return Caller(caller_id, tenant, _ROLES[role], expires)


def lifetime(wanted: float, caller: Caller | None, now: float) -> float:
    """`wanted` seconds, or less so as to end with `caller`'s own credential."""
    if caller is None or caller.expires is None:
        return wanted
    return min(wanted, caller.expires - now)
