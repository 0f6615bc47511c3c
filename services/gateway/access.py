"""Who may use the gateway: whether it asks for API keys (its mode), which action each route
needs, and the check in front of every route but `/healthz`, `/readyz`, `/metrics` and static
assets —
followed there by the caller's rate limit and stream cap (`services.gateway.limits`).

The mode is decided once, at start-up (`decide`): a loopback bind with no key that could
authenticate runs open, and says so; anything else asks every request for credentials:
`Authorization: Bearer <key>` (or, with `RELAYFLOW_OIDC_ISSUER`, a person's OIDC token: any
Bearer value not shaped like a key, `relayflow.auth.oidc`), else on an event stream a stream
token (`?token=`,
`services.gateway.stream_tokens`), else the dashboard's session cookie
(`services.gateway.sessions`: a dashboard page without one is sent to sign in, and a POST it
authenticates needs the CSRF check). Once at start-up, not per request, so that revoking the last
key never reopens a running gateway, and open mode costs no query; creating the first key
therefore takes a restart to turn the checks on (README, Authentication). With OIDC configured
there is always someone who could authenticate: `auto` requires credentials then, keys or not.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relayflow.auth import (
    Action,
    ApiKey,
    AuthConfigurationError,
    AuthSettings,
    IdpUnavailable,
    KeyHasher,
    KeyRefused,
    OidcConfig,
    OidcProvider,
    OidcSettings,
    Signer,
    TokenForbidden,
    TokenRefused,
    active_key,
    allows,
    has_active_keys,
    verify_key,
)
from relayflow.auth.keys import HOW_TO_MAKE_A_SECRET, PREFIX
from relayflow.auth.signed import Clock
from relayflow.errors import ConfigurationError
from services.gateway import sessions, stream_tokens
from services.gateway.responses import error_response
from services.gateway.sessions import Sessions
from services.gateway.settings import AuthMode, GatewaySettings
from services.gateway.state import Caller, GatewayState, gateway_state, set_caller
from services.gateway.stream_tokens import StreamTokens

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]

# Routes that answer without a key: probes must work without one, so must Prometheus's scrape of
# /metrics (counts and durations by workflow and route, no one's data; services.gateway.metrics
# says why), and the stylesheet and scripts hold nothing of anyone's.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
PUBLIC_PREFIX = "/static/"
# Signing in and out take no credentials (they check their own), but are rate-limited by client
# address like any request that costs a key check.
SESSION_PATHS = frozenset(
    {
        sessions.SIGN_IN_PATH,
        sessions.SIGN_OUT_PATH,
        sessions.OIDC_SIGN_IN_PATH,
        sessions.OIDC_CALLBACK_PATH,
    }
)
# Pages a person opens: without credentials they redirect to sign-in (everything else, the
# fragments the pages' scripts fetch included, answers 401 JSON).
PAGES = frozenset(
    {
        "/",
        "/ui/workflows/{workflow_id}",
        "/ui/overview",
        "/ui/dead-letters",
        "/ui/dead-letters/{message_id}",
    }
)
# The one table of what each route and method needs. None: any valid key (the API document
# describes the workflows served, which every role's client needs). A route missing from it
# fails `guard`, so that no route is added unprotected.
ACTIONS: Mapping[tuple[str, str], Action | None] = {
    ("/", "GET"): Action.READ,
    ("/ui/list", "GET"): Action.READ,
    ("/ui/workflows/{workflow_id}", "GET"): Action.READ,
    ("/ui/workflows/{workflow_id}/panel", "GET"): Action.READ,
    # The operator's pages and their routes (dead letters and the broker's queues are the
    # namespace's: services.gateway.state.sees_namespace decides who of those may see them).
    ("/ui/overview", "GET"): Action.READ,
    ("/ui/dead-letters", "GET"): Action.READ,
    ("/ui/dead-letters/{message_id}", "GET"): Action.READ,
    ("/dead-letters", "GET"): Action.READ,
    ("/dead-letters/{message_id}", "GET"): Action.READ,
    ("/dead-letters/redrive", "POST"): Action.REDRIVE,
    ("/openapi.json", "GET"): None,
    ("/submit", "POST"): Action.START,
    ("/workflows", "GET"): Action.LIST,
    ("/workflows/{name_or_id}", "GET"): Action.READ,
    ("/workflows/{name_or_id}", "POST"): Action.START,
    ("/workflows/{workflow_id}/events", "GET"): Action.STREAM,
    ("/workflows/{workflow_id}/steps/{step_name}/items", "GET"): Action.READ,
    ("/workflows/{workflow_id}/cancel", "POST"): Action.CANCEL,
    ("/workflows/{workflow_id}/retry", "POST"): Action.RETRY,
    ("/workflows/{workflow_id}/signals/{signal_name}", "POST"): Action.SIGNAL,
    ("/events", "GET"): Action.STREAM,
    # Minting a stream token is part of streaming: who may stream may mint one.
    ("/stream-tokens", "POST"): Action.STREAM,
}

MISSING = "missing credentials: send Authorization: Bearer <API key>"
INVALID = "invalid credentials"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
# Seconds a client should wait when the identity provider could not be asked about its token.
_IDP_RETRY_AFTER = "5"


def action_for(path: str, method: str) -> Action | None:
    """What `method` on `path` (a concrete path, or the API document's, whose `{name}`s match as
    any segment) needs; `LookupError` if no route of `ACTIONS` matches it."""
    for (template, route_method), action in ACTIONS.items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if route_method == method.upper() and re.fullmatch(pattern, path):
            return action
    raise LookupError(f"no action in services.gateway.access.ACTIONS for {method} {path}")


@dataclass(frozen=True, slots=True)
class Credentials:
    """What checks credentials, each under its own key derived from the server secret: API keys'
    hashes, session cookies (and their CSRF tokens) and stream tokens; and, when OIDC is on,
    which identity provider's tokens are accepted (its keys are fetched by the lifespan's
    `OidcProvider`)."""

    hasher: KeyHasher
    sessions: Sessions
    streams: StreamTokens
    oidc: OidcConfig | None = None
    # Signs the cookie that carries one OIDC sign-in's state, nonce and PKCE verifier.
    oidc_flows: Signer | None = None


@dataclass(frozen=True, slots=True)
class Access:
    """The mode the gateway runs in: `credentials` None means open; `to_require` says, when open,
    what would make it require keys after a restart; `oidc` is the identity provider whose
    tokens are accepted, if any."""

    credentials: Credentials | None
    why: str
    to_require: str = ""
    oidc: OidcProvider | None = None

    @property
    def required(self) -> bool:
        return self.credentials is not None

    @property
    def hasher(self) -> KeyHasher | None:
        return self.credentials.hasher if self.credentials else None

    @property
    def sessions(self) -> Sessions | None:
        return self.credentials.sessions if self.credentials else None

    @property
    def streams(self) -> StreamTokens | None:
        return self.credentials.streams if self.credentials else None

    @property
    def warning(self) -> str | None:
        """What the log and every dashboard page say while the gateway runs open."""
        if self.required:
            return None
        return (
            f"Authentication is off ({self.why}): anyone who can reach this gateway may start, "
            f"cancel, retry and read every workflow. To require API keys, {self.to_require} and "
            "restart the gateway."
        )


def is_public(path: str) -> bool:
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIX)


def is_loopback(host: str) -> bool:
    """Whether `host` is a loopback address. Any other name may resolve anywhere: not one."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_credentials(
    settings: GatewaySettings,
    auth: AuthSettings,
    clock: Clock = time.time,
    oidc_settings: OidcSettings | None = None,
) -> Credentials | None:
    """What keys, cookies, stream tokens and OIDC tokens are checked with, or None without a
    secret; `ConfigurationError` when the settings cannot run safely. Checked before anything
    opens. `clock` (Unix seconds) decides when cookies and stream tokens expire."""
    host = settings.gateway_host
    loopback = is_loopback(host)
    try:
        oidc = OidcConfig.from_settings(oidc_settings or OidcSettings())
    except AuthConfigurationError as exc:
        raise ConfigurationError(str(exc)) from None
    if oidc is not None and settings.auth is AuthMode.OFF:
        raise ConfigurationError(
            "RELAYFLOW_AUTH=off runs the gateway open, and RELAYFLOW_OIDC_ISSUER asks it to check "
            "people's tokens: unset one of them"
        )
    if oidc is not None and (auth.secret is None or not auth.secret.get_secret_value()):
        raise ConfigurationError(
            "RELAYFLOW_OIDC_ISSUER is set, and the sessions and stream tokens of people signed "
            f"in through it are signed with the server secret: {HOW_TO_MAKE_A_SECRET}"
        )
    if settings.auth is AuthMode.OFF and not loopback:
        raise ConfigurationError(
            f"RELAYFLOW_AUTH=off runs the gateway without authentication, which it does only on "
            f"a loopback address, not on {host}: unset RELAYFLOW_AUTH or bind to 127.0.0.1"
        )
    if auth.secret is None or not auth.secret.get_secret_value():  # unset, or set to empty
        if settings.auth is AuthMode.REQUIRED or not loopback:
            why = "RELAYFLOW_AUTH=required" if loopback else f"bound to {host}, not loopback"
            raise ConfigurationError(
                f"the gateway requires API keys ({why}) and cannot check them without a server "
                f"secret: {HOW_TO_MAKE_A_SECRET}"
            )
        return None
    try:
        return Credentials(
            KeyHasher.from_secret(auth.secret),
            Sessions.from_secret(auth.secret, settings.session_seconds, clock),
            StreamTokens.from_secret(auth.secret, settings.stream_token_seconds, clock),
            oidc,
            Signer.from_secret(auth.secret, "oidc-sign-in/v1", clock) if oidc else None,
        )
    except AuthConfigurationError as exc:
        raise ConfigurationError(str(exc)) from None


async def decide(
    settings: GatewaySettings,
    credentials: Credentials | None,
    pool: asyncpg.Pool[Any],
    oidc: OidcProvider | None = None,
) -> Access:
    """The mode, once at start-up (see the module's docstring), logged. `oidc`: the identity
    provider of `credentials.oidc`, opened by the lifespan."""
    host = settings.gateway_host
    if settings.auth is AuthMode.OFF:
        access = Access(None, "RELAYFLOW_AUTH=off", "unset RELAYFLOW_AUTH")
    elif settings.auth is AuthMode.REQUIRED:
        access = Access(credentials, "RELAYFLOW_AUTH=required", oidc=oidc)
    elif not is_loopback(host):
        access = Access(credentials, f"bound to {host}, not loopback", oidc=oidc)
    elif credentials is not None and credentials.oidc is not None:
        access = Access(credentials, "OIDC is configured (RELAYFLOW_OIDC_ISSUER)", oidc=oidc)
    else:
        async with pool.acquire() as conn:
            keys = await has_active_keys(conn)
        if not keys:
            access = Access(
                None,
                f"bound to loopback {host} and no API key exists",
                "create one with `relayflow keys create`",
            )
        elif credentials is None:
            raise ConfigurationError(
                "API keys exist, so the gateway requires them, and cannot check them without "
                f"a server secret: {HOW_TO_MAKE_A_SECRET} (or set RELAYFLOW_AUTH=off to run "
                "open on loopback)"
            )
        else:
            access = Access(credentials, "API keys exist")
    if access.warning is None:
        log.info(
            "API keys%s required on every route but /healthz, /readyz, /metrics and /static (%s)",
            f" or OIDC tokens from {oidc.config.issuer}" if oidc is not None else "",
            access.why,
        )
    else:
        log.warning("OPEN ON %s:%s. %s", host, settings.gateway_port, access.warning)
    return access


def guard(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """`routes`, each but the public ones behind the check of the action `ACTIONS` names (the
    sign-in routes behind the rate limit only)."""
    guarded: list[BaseRoute] = []
    for route in routes:
        if not isinstance(route, Route) or is_public(route.path):
            guarded.append(route)
            continue
        methods = (route.methods or set()) - {"HEAD"}
        if route.path in SESSION_PATHS:
            endpoint = _limited(route.endpoint)
            guarded.append(Route(route.path, endpoint, methods=sorted(methods)))
            continue
        missing = [method for method in methods if (route.path, method) not in ACTIONS]
        if missing:  # pragma: no cover - a wiring mistake, caught by any gateway test
            raise TypeError(f"no action in services.gateway.access.ACTIONS for {route.path}")
        actions = {method: ACTIONS[route.path, method] for method in methods}
        checked = _checked(route.endpoint, actions, page=route.path in PAGES)
        # The route's own class: one may decide per concrete path what it allows.
        guarded.append(type(route)(route.path, checked, methods=sorted(methods)))
    return guarded


def _limited(endpoint: Endpoint) -> Endpoint:
    @functools.wraps(endpoint)
    async def limited(request: Request) -> Response:
        limits = gateway_state(request).limits
        return await limits.serve(request, None, endpoint, stream=False, by_address="signing in")

    return limited


def _checked(endpoint: Endpoint, actions: Mapping[str, Action | None], *, page: bool) -> Endpoint:
    @functools.wraps(endpoint)
    async def checked(request: Request) -> Response:
        action = actions["GET" if request.method == "HEAD" else request.method]
        caller = await _authenticate(request, action, page=page)
        if isinstance(caller, Response):
            return caller
        set_caller(request, caller)
        limits = gateway_state(request).limits
        # Event streams hold a slot; minting a stream token (a POST) is a plain request.
        stream = action is Action.STREAM and request.method != "POST"
        return await limits.serve(
            request, None if caller is None else caller.id, endpoint, stream=stream
        )

    return checked


def _invalid() -> Response:
    return error_response(401, INVALID, headers=_INVALID_CHALLENGE)


async def _authenticate(
    request: Request, action: Action | None, *, page: bool
) -> Response | Caller | None:
    """Who the request comes from (None while the gateway runs open), or the answer that
    refuses it: 401, 403, or for a `page` without credentials a redirect to sign in. The log
    names the key's id (a person's OIDC subject) and why it was refused; neither the answer nor
    the log ever holds the key, a token or a cookie."""
    state = gateway_state(request)
    token = request.query_params.get(stream_tokens.QUERY) if action is Action.STREAM else None
    if token is not None and len(token) > stream_tokens.MAX_LENGTH:
        return error_response(
            400, f"the {stream_tokens.QUERY} parameter is at most {stream_tokens.MAX_LENGTH} long"
        )
    credentials = state.access.credentials
    if credentials is None:
        return None
    where = f"{request.method} {request.url.path}"
    header = request.headers.get("authorization")
    caller: Caller | Response
    if header is not None:
        caller = await _bearer(state, credentials, header, where)
    elif token is not None:
        holder = credentials.streams.holder(token, stream_tokens.scope_of(request))
        if holder is None:
            # One answer for forged, expired and another stream's: nothing about this stream.
            log.info("refused a stream token on %s: forged, expired or for another stream", where)
            return _invalid()
        if isinstance(holder, Caller):
            caller = holder  # a person's: carried by value, expiring with their token
        else:
            caller = await _active(state, holder, where, "a stream token")
    else:
        caller = await _session(state, credentials, request, where, page=page)
    if isinstance(caller, Response):
        return caller
    if action is not None and not allows(caller.role, action):
        what = "key" if caller.expires is None else "token"
        log.info("%s (role %s) may not %s: %s", _named(caller), caller.role, action, where)
        return error_response(403, f"this {what}'s role ({caller.role}) may not {action}")
    return caller


def _named(caller: Caller) -> str:
    return f"API key {caller.id}" if caller.expires is None else caller.id


def _key_caller(key: ApiKey) -> Caller:
    return Caller(key.id, key.tenant, key.role)


async def _bearer(
    state: GatewayState, credentials: Credentials, header: str, where: str
) -> Caller | Response:
    scheme, _, text = header.partition(" ")
    if scheme.lower() != "bearer":
        log.info("refused credentials on %s: not a Bearer token", where)
        return _invalid()
    oidc = state.access.oidc
    if oidc is not None and not text.startswith(PREFIX):
        return await _person(oidc, text, where)
    try:
        async with state.pool.acquire() as conn:
            return _key_caller(await verify_key(conn, credentials.hasher, text))
    except KeyRefused as exc:
        log.info("refused an API key on %s: %s", where, exc)
        return _invalid()


async def _person(oidc: OidcProvider, token: str, where: str) -> Caller | Response:
    """The caller a person's OIDC token names, or the answer that refuses it: the 401 of any
    invalid credential, 403 for an authentic token that names no relayflow role or tenant, 503
    while the identity provider cannot be asked."""
    try:
        return Caller.person(await oidc.verify(token))
    except TokenRefused as exc:
        log.info("refused an OIDC token on %s: %s", where, exc)
        return _invalid()
    except TokenForbidden as exc:
        log.info("refused an OIDC token on %s: %s", where, exc)
        return error_response(403, str(exc))
    except IdpUnavailable as exc:
        log.warning("could not check an OIDC token on %s: %s", where, exc)
        return error_response(
            503,
            "the identity provider cannot be reached right now; retry shortly",
            headers={"Retry-After": _IDP_RETRY_AFTER},
        )


async def _session(
    state: GatewayState, credentials: Credentials, request: Request, where: str, *, page: bool
) -> Caller | Response:
    """The caller of the request's session cookie, with the CSRF check of a POST; a page
    without a valid session goes to sign in."""
    cookie = request.cookies.get(sessions.COOKIE)
    session = credentials.sessions.read(cookie)
    if session is None:
        if page:
            return sessions.to_sign_in(request)
        if cookie is None:
            return error_response(401, MISSING, headers=_CHALLENGE)
        log.info("refused a session cookie on %s: forged or expired", where)
        return _invalid()
    why = credentials.sessions.refusal(request, session)
    if why is not None:
        log.info("refused a POST of %s's session on %s: %s", _shown(session), where, why)
        return error_response(403, f"refused: {why} (the dashboard's pages send both)")
    caller: Caller | Response
    if session.caller is not None:
        caller = session.caller  # a person's: carried by value, ending with their id token
    else:
        caller = await _active(state, session.who, where, "a session")
        if isinstance(caller, Response) and page:
            return sessions.to_sign_in(request)
    sessions.remember(request, session)
    return caller


def _shown(session: sessions.Session) -> str:
    return session.who if session.key_id is None else f"API key {session.key_id}"


async def _active(state: GatewayState, key_id: str, where: str, what: str) -> Caller | Response:
    """The key a cookie or token names, checked on every use: none outlives its key."""
    try:
        async with state.pool.acquire() as conn:
            return _key_caller(await active_key(conn, key_id))
    except KeyRefused as exc:
        log.info("refused %s on %s: %s", what, where, exc)
        return _invalid()
