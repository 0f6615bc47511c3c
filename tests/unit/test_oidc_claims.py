"""What a verified OIDC token's claims name (`relayflow.auth.claims`) and which OIDC settings
can run (`relayflow.auth.oidc.OidcConfig`), without an identity provider."""

from __future__ import annotations

from typing import Any

import pytest

from relayflow.auth import (
    AuthConfigurationError,
    ClaimMapping,
    OidcConfig,
    OidcSettings,
    Role,
    TokenForbidden,
    TokenRefused,
)
from relayflow.auth.claims import identity_of
from relayflow.auth.roles import RANK, strongest

MAPPING = ClaimMapping("relayflow_tenant", "relayflow_role")


def claims(**extra: Any) -> dict[str, Any]:
    return {"sub": "user-1", "exp": 2_000_000_000, "relayflow_tenant": "acme", **extra}


@pytest.mark.parametrize(
    ("value", "role"),
    [
        ("read", Role.READ),
        (["read"], Role.READ),
        (["submit", "read"], Role.READ),
        (["staff", "operator", "read"], Role.OPERATOR),
        (["admin", "submit"], Role.ADMIN),
        (["submit", "everyone"], Role.SUBMIT),
    ],
)
def test_the_strongest_role_named_wins(value: object, role: Role) -> None:
    """A person in several groups gets the most any one of them allows, never a merge."""
    assert identity_of(claims(relayflow_role=value), MAPPING).role is role


@pytest.mark.parametrize("value", [None, "", "root", ["Admin", "staff"], [1, 2], {"r": "read"}])
def test_no_relayflow_role_is_forbidden(value: object) -> None:
    """Authentic, but naming nothing relayflow knows: 403, not a guessed role."""
    given = claims() if value is None else claims(relayflow_role=value)
    with pytest.raises(TokenForbidden, match="no relayflow role"):
        identity_of(given, MAPPING)


@pytest.mark.parametrize("tenant", [None, "", "Acme", "a b", "../x", 7, ["acme"]])
def test_a_tenant_claim_must_pass_check_tenant(tenant: object) -> None:
    """A tenant travels in logs and tokens: the same rule as a key's."""
    given = claims(relayflow_role="read", relayflow_tenant=tenant)
    if tenant is None:
        del given["relayflow_tenant"]
    with pytest.raises(TokenForbidden, match="no valid relayflow tenant"):
        identity_of(given, MAPPING)


def test_nested_claims_and_a_fixed_tenant() -> None:
    """Keycloak-style `realm_access.roles`; one IdP per tenant needs no tenant claim."""
    mapping = ClaimMapping("org", "realm_access.roles", tenant="fixed")
    given = {"sub": "u", "exp": 10, "org": "ignored!", "realm_access": {"roles": ["operator"]}}
    identity = identity_of(given, mapping)
    assert (identity.subject, identity.tenant, identity.role, identity.expires) == (
        "u",
        "fixed",
        Role.OPERATOR,
        10,
    )


@pytest.mark.parametrize("subject", [None, "", "a b", "x" * 256, "é", 5])
def test_a_subject_must_be_printable_ascii(subject: object) -> None:
    """The subject names the caller in logs and limits: no spaces, no control characters."""
    with pytest.raises(TokenRefused):
        identity_of(claims(sub=subject, relayflow_role="read"), MAPPING)


def test_rank_covers_every_role() -> None:
    """A role added without a rank would never be picked."""
    assert set(RANK) == set(Role)
    assert strongest([]) is None


def test_oidc_is_off_without_an_issuer_and_needs_an_audience_with_one() -> None:
    """Unset issuer: off; with one, a token for another service must not pass (aud)."""
    assert OidcConfig.from_settings(OidcSettings(issuer=None)) is None
    assert OidcConfig.from_settings(OidcSettings(issuer="")) is None
    with pytest.raises(AuthConfigurationError, match="AUDIENCE"):
        OidcConfig.from_settings(OidcSettings(issuer="https://idp.example"))
    config = OidcConfig.from_settings(
        OidcSettings(issuer="https://idp.example", audience="relayflow", tenant="acme")
    )
    assert config is not None
    assert config.claims.tenant == "acme"


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"issuer": "http://idp.example"}, "https"),
        ({"tenant": "Not A Tenant"}, "RELAYFLOW_OIDC_TENANT"),
        ({"redirect_uri": "http://gateway.example/cb"}, "REDIRECT_URI"),
    ],
)
def test_unsafe_oidc_settings_refuse_to_start(overrides: dict[str, Any], match: str) -> None:
    """Keys fetched over plain http could be swapped on the way: only on loopback."""
    given = {"issuer": "https://idp.example", "audience": "relayflow", **overrides}
    with pytest.raises(AuthConfigurationError, match=match):
        OidcConfig.from_settings(OidcSettings(**given))


def test_http_on_loopback_is_allowed() -> None:
    """A provider on this machine (the tests', a developer's) needs no TLS."""
    assert OidcConfig.from_settings(
        OidcSettings(issuer="http://127.0.0.1:9000", audience="relayflow")
    )
