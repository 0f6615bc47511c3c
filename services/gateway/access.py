"""Who may use the gateway: whether it asks for API keys (its mode), which action each route
needs, and the check in front of every route but `/healthz`, `/readyz` and static assets —
followed there by the caller's rate limit and stream cap (`services.gateway.limits`).

The mode is decided once, at start-up (`decide`): a loopback bind with no key that could
authenticate runs open, and says so; anything else asks every request for
`Authorization: Bearer <key>`. Once at start-up, not per request, so that revoking the last
key never reopens a running gateway, and open mode costs no query; creating the first key
therefore takes a restart to turn the checks on (README, Authentication).
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from relayflow.auth import (
    Action,
    AuthConfigurationError,
    AuthSettings,
    KeyHasher,
    KeyRefused,
    allows,
    has_active_keys,
    verify_key,
)
from relayflow.auth.keys import HOW_TO_MAKE_A_SECRET
from relayflow.errors import ConfigurationError
from services.gateway.responses import error_response
from services.gateway.settings import AuthMode, GatewaySettings
from services.gateway.state import gateway_state

log = logging.getLogger(__name__)

Endpoint = Callable[[Request], Awaitable[Response]]

# Routes that answer without a key: probes must work without one, and the stylesheet and
# scripts hold nothing of anyone's.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
PUBLIC_PREFIX = "/static/"
# The one table of what each route and method needs. None: any valid key (the API document
# describes the workflows served, which every role's client needs). A route missing from it
# fails `guard`, so that no route is added unprotected.
ACTIONS: Mapping[tuple[str, str], Action | None] = {
    ("/", "GET"): Action.READ,
    ("/ui/list", "GET"): Action.READ,
    ("/ui/workflows/{workflow_id}", "GET"): Action.READ,
    ("/ui/workflows/{workflow_id}/panel", "GET"): Action.READ,
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
}

MISSING = "missing credentials: send Authorization: Bearer <API key>"
INVALID = "invalid credentials"
_CHALLENGE = {"WWW-Authenticate": "Bearer"}
_INVALID_CHALLENGE = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def action_for(path: str, method: str) -> Action | None:
    """What `method` on `path` (a concrete path, or the API document's, whose `{name}`s match as
    any segment) needs; `LookupError` if no route of `ACTIONS` matches it."""
    for (template, route_method), action in ACTIONS.items():
        pattern = re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template))
        if route_method == method.upper() and re.fullmatch(pattern, path):
            return action
    raise LookupError(f"no action in services.gateway.access.ACTIONS for {method} {path}")


@dataclass(frozen=True, slots=True)
class Access:
    """The mode the gateway runs in: `hasher` None means open; `to_require` says, when open, what
    would make it require keys after a restart."""

    hasher: KeyHasher | None
    why: str
    to_require: str = ""

    @property
    def required(self) -> bool:
        return self.hasher is not None

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


def key_hasher(settings: GatewaySettings, auth: AuthSettings) -> KeyHasher | None:
    """The hasher keys are checked with, or None without a secret; `ConfigurationError` when the
    settings cannot run safely. Checked before anything opens."""
    host = settings.gateway_host
    loopback = is_loopback(host)
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
        return KeyHasher.from_secret(auth.secret)
    except AuthConfigurationError as exc:
        raise ConfigurationError(str(exc)) from None


async def decide(
    settings: GatewaySettings, hasher: KeyHasher | None, pool: asyncpg.Pool[Any]
) -> Access:
    """The mode, once at start-up (see the module's docstring), logged."""
    host = settings.gateway_host
    if settings.auth is AuthMode.OFF:
        access = Access(None, "RELAYFLOW_AUTH=off", "unset RELAYFLOW_AUTH")
    elif settings.auth is AuthMode.REQUIRED:
        access = Access(hasher, "RELAYFLOW_AUTH=required")
    elif not is_loopback(host):
        access = Access(hasher, f"bound to {host}, not loopback")
    else:
        async with pool.acquire() as conn:
            keys = await has_active_keys(conn)
        if not keys:
            access = Access(
                None,
                f"bound to loopback {host} and no API key exists",
                "create one with `relayflow-admin keys create`",
            )
        elif hasher is None:
            raise ConfigurationError(
                "API keys exist, so the gateway requires them, and cannot check them without "
                f"a server secret: {HOW_TO_MAKE_A_SECRET} (or set RELAYFLOW_AUTH=off to run "
                "open on loopback)"
            )
        else:
            access = Access(hasher, "API keys exist")
    if access.warning is None:
        log.info(
            "API keys required on every route but /healthz, /readyz and /static (%s)",
            access.why,
        )
    else:
        log.warning("OPEN ON %s:%s. %s", host, settings.gateway_port, access.warning)
    return access


def guard(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """`routes`, each but the public ones behind the check of the action `ACTIONS` names."""
    guarded: list[BaseRoute] = []
    for route in routes:
        if not isinstance(route, Route) or is_public(route.path):
            guarded.append(route)
            continue
        methods = (route.methods or set()) - {"HEAD"}
        missing = [method for method in methods if (route.path, method) not in ACTIONS]
        if missing:  # pragma: no cover - a wiring mistake, caught by any gateway test
            raise TypeError(f"no action in services.gateway.access.ACTIONS for {route.path}")
        actions = {method: ACTIONS[route.path, method] for method in methods}
        guarded.append(
            Route(route.path, _checked(route.endpoint, actions), methods=sorted(methods))
        )
    return guarded


def _checked(endpoint: Endpoint, actions: Mapping[str, Action | None]) -> Endpoint:
    @functools.wraps(endpoint)
    async def checked(request: Request) -> Response:
        action = actions["GET" if request.method == "HEAD" else request.method]
        caller = await _authenticate(request, action)
        if isinstance(caller, Response):
            return caller
        limits = gateway_state(request).limits
        return await limits.serve(request, caller, endpoint, stream=action is Action.STREAM)

    return checked


async def _authenticate(request: Request, action: Action | None) -> Response | str | None:
    """The id of the request's key (None while the gateway runs open), or the 401 or 403 that
    refuses it. The log names the key's id and why it was refused; neither the answer nor the
    log ever holds the key."""
    state = gateway_state(request)
    hasher = state.access.hasher
    if hasher is None:
        return None
    header = request.headers.get("authorization")
    if header is None:
        return error_response(401, MISSING, headers=_CHALLENGE)
    scheme, _, token = header.partition(" ")
    where = f"{request.method} {request.url.path}"
    if scheme.lower() != "bearer":
        log.info("refused credentials on %s: not a Bearer token", where)
        return error_response(401, INVALID, headers=_INVALID_CHALLENGE)
    try:
        async with state.pool.acquire() as conn:
            key = await verify_key(conn, hasher, token)
    except KeyRefused as exc:
        log.info("refused an API key on %s: %s", where, exc)
        return error_response(401, INVALID, headers=_INVALID_CHALLENGE)
    if action is not None and not allows(key.role, action):
        log.info("API key %s (role %s) may not %s: %s", key.id, key.role, action, where)
        return error_response(403, f"this key's role ({key.role}) may not {action}")
    return key.id
