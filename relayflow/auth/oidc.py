"""OpenID Connect: checking a person's JWT against the identity provider's published keys, and
the provider's endpoints the dashboard's sign-in uses (`RELAYFLOW_OIDC_…`, `OidcSettings`).

The provider is found from `{issuer}/.well-known/openid-configuration` (its `issuer` must be the
configured one) and its signing keys (JWKS) are fetched from there, both on first use and with
an async client, so that the event loop never waits on a socket. Keys are used for
`RELAYFLOW_OIDC_JWKS_SECONDS`; a token whose `kid` is unknown asks for them again, since that is
how a provider's key rotation shows, but at most once per `RELAYFLOW_OIDC_JWKS_MIN_INTERVAL`:
a `kid` is the sender's to choose, and a flood of made-up ones must not become a flood of
fetches. Requests waiting on one fetch share it.

A token is accepted only when signed with an asymmetric algorithm (RSA, RSA-PSS, ECDSA, EdDSA)
that its key allows: never `none`, never HMAC, which would let whoever holds the public key
sign. PyJWT then checks the signature, `iss`, `aud` (or the client id, for an id token), `exp`
and `nbf` within `RELAYFLOW_OIDC_LEEWAY`, and that `sub` is there; `relayflow.auth.claims`
reads who it names. Errors say why (for the log), never the token.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import ipaddress
import logging
import secrets
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
from pydantic import SecretStr

from relayflow.auth.claims import ClaimMapping, Identity, identity_of
from relayflow.auth.errors import AuthConfigurationError, IdpUnavailable, TokenRefused
from relayflow.auth.settings import OidcSettings
from relayflow.auth.signed import Clock
from relayflow.auth.tenants import InvalidKeyDetails, check_tenant

log = logging.getLogger(__name__)

DISCOVERY_PATH = "/.well-known/openid-configuration"
# Far longer than any identity provider's tokens; a longer one is refused before any work.
MAX_TOKEN_LENGTH = 16 * 1024
# What each key type may verify when its JWK names no `alg`.
_RSA = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_BY_CURVE = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
ASYMMETRIC = _RSA | frozenset(_BY_CURVE.values()) | {"EdDSA"}


def _loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _checked_url(name: str, url: str) -> str:
    """`url` when it is https (plain http only on loopback, for a provider on this machine)."""
    scheme = urlsplit(url).scheme
    if scheme != "https" and not (scheme == "http" and _loopback(url)):
        raise AuthConfigurationError(f"{name} must be an https URL (http only on loopback)")
    return url


@dataclass(frozen=True, slots=True)
class OidcConfig:
    """The checked `OidcSettings`, when OIDC is on."""

    issuer: str
    audience: str
    claims: ClaimMapping
    client_id: str | None = None
    client_secret: SecretStr | None = field(default=None, repr=False)
    redirect_uri: str | None = None
    leeway: int = 30
    jwks_seconds: float = 3600.0
    jwks_min_interval: float = 30.0
    http_timeout: float = 5.0

    @classmethod
    def from_settings(cls, settings: OidcSettings) -> OidcConfig | None:
        """None without an issuer; `AuthConfigurationError` for settings that cannot work."""
        if not settings.issuer:
            return None
        issuer = _checked_url("RELAYFLOW_OIDC_ISSUER", settings.issuer)
        if not settings.audience:
            raise AuthConfigurationError(
                "RELAYFLOW_OIDC_ISSUER is set without RELAYFLOW_OIDC_AUDIENCE: say which `aud` "
                "a token must name (a token for another service must not pass here)"
            )
        try:
            tenant = check_tenant(settings.tenant) if settings.tenant else None
        except InvalidKeyDetails as exc:
            raise AuthConfigurationError(f"RELAYFLOW_OIDC_TENANT: {exc}") from None
        if settings.redirect_uri:
            _checked_url("RELAYFLOW_OIDC_REDIRECT_URI", settings.redirect_uri)
        return cls(
            issuer=issuer,
            audience=settings.audience,
            claims=ClaimMapping(settings.tenant_claim, settings.role_claim, tenant),
            client_id=settings.client_id or None,
            client_secret=settings.client_secret,
            redirect_uri=settings.redirect_uri or None,
            leeway=settings.leeway,
            jwks_seconds=settings.jwks_seconds,
            jwks_min_interval=settings.jwks_min_interval,
            http_timeout=settings.http_timeout,
        )


@dataclass(frozen=True, slots=True)
class Endpoints:
    """What the discovery document says; the last two only the dashboard's sign-in needs."""

    jwks_uri: str
    authorization_endpoint: str | None
    token_endpoint: str | None


@dataclass(frozen=True, slots=True)
class Pkce:
    """One sign-in's secrets: `state` and `nonce` tie the answer to this browser, `verifier` the
    code to this exchange (RFC 7636, S256)."""

    state: str
    nonce: str
    verifier: str = field(repr=False)

    @classmethod
    def new(cls) -> Pkce:
        return cls(secrets.token_urlsafe(32), secrets.token_urlsafe(32), secrets.token_urlsafe(48))

    @property
    def challenge(self) -> str:
        digest = hashlib.sha256(self.verifier.encode("ascii")).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


@dataclass(frozen=True, slots=True)
class _Key:
    jwk: jwt.PyJWK
    algorithms: frozenset[str]


def _key_of(data: Mapping[str, Any]) -> _Key | None:
    """A signing key of the JWKS, with the algorithms it may verify; None for one that is not
    (an encryption key, a symmetric one, a type PyJWT does not read)."""
    if data.get("use", "sig") != "sig" or not isinstance(data.get("kid"), str):
        return None
    named = data.get("alg")
    kty = data.get("kty")
    if isinstance(named, str):
        algorithms = frozenset({named}) & ASYMMETRIC
    elif kty == "RSA":
        algorithms = _RSA
    elif kty == "EC" and data.get("crv") in _BY_CURVE:
        algorithms = frozenset({_BY_CURVE[data["crv"]]})
    elif kty == "OKP":
        algorithms = frozenset({"EdDSA"})
    else:
        algorithms = frozenset()
    if not algorithms:
        return None
    try:
        return _Key(jwt.PyJWK(dict(data)), algorithms)
    except jwt.PyJWTError:
        return None


def _shown(value: object) -> str:
    """A header value the sender chose, safe to log: quoted, and short."""
    return repr(value)[:48]


class OidcProvider:
    """The identity provider: its endpoints and keys, fetched and cached, and what is checked
    with them. Made by `open` (which owns its HTTP client) in a lifespan; `clock` (monotonic
    seconds) paces the fetches."""

    def __init__(
        self, config: OidcConfig, http: httpx.AsyncClient, clock: Clock = time.monotonic
    ) -> None:
        self.config = config
        self._http = http
        self._clock = clock
        self._lock = asyncio.Lock()
        self._endpoints: Endpoints | None = None
        self._keys: dict[str, _Key] = {}
        self._loaded_at: float | None = None  # when the keys in hand were fetched
        self._tried_at: float | None = None  # when a fetch was last attempted
        self.fetches = 0  # JWKS fetches attempted, for the log and the tests

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, config: OidcConfig) -> AsyncIterator[OidcProvider]:
        timeout = httpx.Timeout(config.http_timeout)
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as http:
            yield cls(config, http)

    async def endpoints(self) -> Endpoints:
        """The discovery document's endpoints (fetched once; `IdpUnavailable` until it is)."""
        if self._endpoints is None:
            async with self._lock:
                if self._endpoints is None:
                    self._endpoints = await self._discover()
        return self._endpoints

    async def verify(
        self, token: str, *, audience: str | None = None, nonce: str | None = None
    ) -> Identity:
        """Who `token` names. `audience` instead of the configured one (an id token's is the
        client id); `nonce`, for an id token, the one the sign-in sent. `TokenRefused`,
        `TokenForbidden` (authentic, but names no relayflow caller) or `IdpUnavailable`."""
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenRefused("longer than any token accepted")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefused("not a JWT") from None
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in ASYMMETRIC:
            raise TokenRefused(f"algorithm {_shown(algorithm)} is not accepted (asymmetric only)")
        if not isinstance(kid, str):
            raise TokenRefused("no kid in its header")
        key = await self._signing_key(kid)
        if algorithm not in key.algorithms:
            raise TokenRefused(f"algorithm {_shown(algorithm)} is not one key {_shown(kid)} allows")
        try:
            claims = jwt.decode(
                token,
                key.jwk.key,
                algorithms=[str(algorithm)],
                audience=audience or self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise TokenRefused(f"{type(exc).__name__}: {exc}") from None
        if nonce is not None:
            sent = claims.get("nonce")
            if not isinstance(sent, str) or not secrets.compare_digest(sent, nonce):
                raise TokenRefused("its nonce is not the sign-in's")
        return identity_of(claims, self.config.claims)

    async def exchange(self, code: str, pkce: Pkce, redirect_uri: str) -> str:
        """The id token the token endpoint gives for an authorization `code` (with the PKCE
        verifier; the client secret, when set, as HTTP Basic). `TokenRefused` when the provider
        refuses the code, `IdpUnavailable` when it cannot be asked."""
        endpoint = (await self.endpoints()).token_endpoint
        client_id = self.config.client_id
        if endpoint is None or client_id is None:
            raise IdpUnavailable("no token endpoint in the discovery document, or no client id")
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "client_id": client_id,
            "code_verifier": pkce.verifier,
        }
        secret = self.config.client_secret
        auth: httpx.Auth = (
            httpx.BasicAuth(client_id, secret.get_secret_value()) if secret else httpx.Auth()
        )
        try:
            response = await self._http.post(endpoint, data=form, auth=auth)
        except httpx.HTTPError as exc:
            raise IdpUnavailable(f"token endpoint: {type(exc).__name__}") from None
        body = _json_object(response)
        if response.status_code >= 500 or body is None:
            raise IdpUnavailable(f"token endpoint answered {response.status_code}")
        token = body.get("id_token")
        if response.status_code != 200 or not isinstance(token, str):
            error = body.get("error")
            raise TokenRefused(
                f"the token endpoint refused the code ({response.status_code}, "
                f"error {_shown(error)})"
            )
        return token

    async def _signing_key(self, kid: str) -> _Key:
        stale = self._loaded_at is None or (
            self._clock() - self._loaded_at >= self.config.jwks_seconds
        )
        if stale or kid not in self._keys:
            await self._refresh()
        key = self._keys.get(kid)
        if key is not None:
            return key
        if self._loaded_at is None:
            raise IdpUnavailable("the provider's signing keys could not be fetched yet")
        raise TokenRefused(f"no signing key {_shown(kid)} in the provider's JWKS")

    async def _refresh(self) -> None:
        """Fetch the keys again unless a fetch was tried within the minimum interval (another
        request's included: they wait on the lock, then find the keys fresh). A failed fetch
        keeps the keys in hand."""
        async with self._lock:
            now = self._clock()
            if self._tried_at is not None and now - self._tried_at < self.config.jwks_min_interval:
                return
            self._tried_at = now
            self.fetches += 1
            try:
                if self._endpoints is None:
                    self._endpoints = await self._discover()
                keys = await self._fetch_keys(self._endpoints.jwks_uri)
            except IdpUnavailable as exc:
                log.warning("could not refresh the OIDC provider's signing keys: %s", exc)
                return
            self._keys, self._loaded_at = keys, now
            log.info("fetched the OIDC provider's signing keys: %s", ", ".join(sorted(keys)))

    async def _discover(self) -> Endpoints:
        url = self.config.issuer.rstrip("/") + DISCOVERY_PATH
        document = await self._get(url, "discovery document")
        if document.get("issuer") != self.config.issuer:
            raise IdpUnavailable(
                f"the discovery document names issuer {_shown(document.get('issuer'))}, "
                "not RELAYFLOW_OIDC_ISSUER"
            )
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str):
            raise IdpUnavailable("the discovery document has no jwks_uri")

        def optional(name: str) -> str | None:
            value = document.get(name)
            return value if isinstance(value, str) else None

        return Endpoints(
            _checked(jwks_uri), optional("authorization_endpoint"), optional("token_endpoint")
        )

    async def _fetch_keys(self, url: str) -> dict[str, _Key]:
        document = await self._get(url, "JWKS")
        found = document.get("keys")
        entries = found if isinstance(found, list) else []
        keys = {
            key.jwk.key_id: key
            for key in (_key_of(entry) for entry in entries if isinstance(entry, dict))
            if key is not None and key.jwk.key_id is not None
        }
        if not keys:
            raise IdpUnavailable("the JWKS holds no signing key relayflow can use")
        return keys

    async def _get(self, url: str, what: str) -> dict[str, Any]:
        try:
            response = await self._http.get(url, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise IdpUnavailable(f"{what} at {url}: {type(exc).__name__}") from None
        body = _json_object(response)
        if response.status_code != 200 or body is None:
            raise IdpUnavailable(f"{what} at {url} answered {response.status_code}")
        return body


def _checked(url: str) -> str:
    try:
        return _checked_url("the provider's jwks_uri", url)
    except AuthConfigurationError as exc:
        raise IdpUnavailable(str(exc)) from None


def _json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None
