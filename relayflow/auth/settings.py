"""Settings of authentication, read from the environment: `RELAYFLOW_AUTH_…`, `RELAYFLOW_OIDC_…`."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RELAYFLOW_AUTH_", extra="ignore", frozen=True)

    # RELAYFLOW_AUTH_SECRET: what API keys are hashed under (`relayflow.auth.keys`); the gateway
    # and `relayflow keys` need the same one. A SecretStr: it never shows in a repr or a log.
    secret: SecretStr | None = None


class OidcSettings(BaseSettings):
    """OpenID Connect for people (`relayflow.auth.oidc`): JWTs from `issuer` as Bearer tokens,
    and the dashboard's sign-in through it when `client_id` is set. Unset issuer: off."""

    model_config = SettingsConfigDict(env_prefix="RELAYFLOW_OIDC_", extra="ignore", frozen=True)

    # RELAYFLOW_OIDC_ISSUER: the `iss` of accepted tokens; discovery is read from
    # `{issuer}/.well-known/openid-configuration`. Empty counts as unset.
    issuer: str | None = None
    # The `aud` a Bearer token must name; required with an issuer.
    audience: str | None = None
    # Where a token names its tenant and role; a dotted name reads a nested claim
    # (`realm_access.roles`). The role claim is a string or a list of strings.
    tenant_claim: str = "relayflow_tenant"
    role_claim: str = "relayflow_role"
    # Every token's tenant, for an identity provider with no tenant claim (the claim is then
    # not read).
    tenant: str | None = None
    # The dashboard's sign-in (authorization code flow with PKCE): its client, a secret only for
    # a confidential client, and where the provider sends the browser back (default: this
    # gateway's own /signin/oidc/callback as the request reached it).
    client_id: str | None = None
    client_secret: SecretStr | None = None
    redirect_uri: str | None = None
    # Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    leeway: int = Field(default=30, ge=0, le=300)
    # How long fetched signing keys are used before they are fetched again, and the least time
    # between two fetches: an unknown `kid` asks for the keys again at most this often, so that
    # a flood of forged ones cannot make the gateway hammer the provider.
    jwks_seconds: float = Field(default=3600.0, gt=0)
    jwks_min_interval: float = Field(default=30.0, ge=0)
    # How long one request to the provider may take.
    http_timeout: float = Field(default=5.0, gt=0)
