"""Credentials: API keys (their format, hashing and store), the roles that say what a key
may do, the signed tokens that stand for a key (session cookies, stream tokens), and people's
OIDC tokens (JWTs) checked against their identity provider. The gateway checks them;
`relayflow keys` manages the keys."""

from relayflow.auth.claims import ClaimMapping, Identity
from relayflow.auth.errors import (
    AuthConfigurationError,
    AuthError,
    IdpUnavailable,
    KeyFormatError,
    KeyRefused,
    TokenForbidden,
    TokenRefused,
    UnknownKey,
)
from relayflow.auth.keys import KeyHasher, PresentedKey, parse_key
from relayflow.auth.oidc import OidcConfig, OidcProvider, Pkce
from relayflow.auth.roles import PERMISSIONS, Action, Role, allows
from relayflow.auth.settings import AuthSettings, OidcSettings
from relayflow.auth.signed import Signer
from relayflow.auth.store import (
    LAST_USED_RESOLUTION,
    ApiKey,
    CreatedKey,
    active_key,
    create_key,
    has_active_keys,
    list_keys,
    revoke_key,
    verify_key,
)
from relayflow.auth.tenants import InvalidKeyDetails, check_tenant

__all__ = [
    "LAST_USED_RESOLUTION",
    "PERMISSIONS",
    "Action",
    "ApiKey",
    "AuthConfigurationError",
    "AuthError",
    "AuthSettings",
    "ClaimMapping",
    "CreatedKey",
    "Identity",
    "IdpUnavailable",
    "InvalidKeyDetails",
    "KeyFormatError",
    "KeyHasher",
    "KeyRefused",
    "OidcConfig",
    "OidcProvider",
    "OidcSettings",
    "Pkce",
    "PresentedKey",
    "Role",
    "Signer",
    "TokenForbidden",
    "TokenRefused",
    "UnknownKey",
    "active_key",
    "allows",
    "check_tenant",
    "create_key",
    "has_active_keys",
    "list_keys",
    "parse_key",
    "revoke_key",
    "verify_key",
]
