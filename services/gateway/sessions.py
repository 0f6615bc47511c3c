"""The dashboard's sign-in: a session cookie that stands for an API key, and the CSRF check of
every POST that cookie authenticates.

A person pastes a key into `/signin`; the gateway verifies it like a Bearer key and sets
`relayflow_session`, HttpOnly, SameSite=Strict, Secure when the page is served over HTTPS,
signed under a key derived from `RELAYFLOW_AUTH_SECRET` (`relayflow.auth.signed`). The cookie
holds the key's id, a random session id and an expiry (`RELAYFLOW_SESSION_SECONDS`), never the
key; `access` reads the key's row again on every request, so a revoked key or a changed role
counts at once. Nothing is stored: signing out clears the cookie in that browser, and revoking
the key ends every session made with it.

Signed in through OIDC instead (`services.gateway.oidc_signin`), the cookie holds the person's
subject, tenant and role (`services.gateway.carried`) and ends with their id token:
min(`RELAYFLOW_SESSION_SECONDS`, the id token's `exp`). It cannot be checked again per request,
since the identity provider has no per-request check to ask: a person removed there keeps
their session until it ends, which is why it is capped at the token's own lifetime.

A POST the cookie authenticates must come from the dashboard's own pages: its Origin (else its
Referer) names this host, and it carries `X-CSRF-Token`, an HMAC of the session id under a key
of its own, which pages hold in a `<meta>` the scripts read. SameSite=Strict already keeps the
cookie off other sites' requests, and the API takes only JSON (no form can post it); the token
is the check that does not depend on the browser. Bearer requests carry no cookie and need none.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from urllib.parse import urlencode, urlsplit

from pydantic import SecretStr, ValidationError
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from relayflow.auth import Action, KeyRefused, Signer, active_key, allows, verify_key
from relayflow.auth.signed import Clock
from services.gateway import carried, checks, html
from services.gateway.checks import InputError
from services.gateway.intake import field_errors
from services.gateway.models import SignedIn, SignIn, SignOut
from services.gateway.responses import error_response, html_response, model_response
from services.gateway.state import Caller, gateway_state

log = logging.getLogger(__name__)

COOKIE = "relayflow_session"
CSRF_HEADER = "X-CSRF-Token"
SIGN_IN_PATH = "/signin"
SIGN_OUT_PATH = "/signout"
# Signing in through OIDC (services.gateway.oidc_signin): to the provider, and back.
OIDC_SIGN_IN_PATH = "/signin/oidc"
OIDC_CALLBACK_PATH = "/signin/oidc/callback"
# Where a page request's Session is kept for the page's renderer (its CSRF token).
_SCOPE_KEY = "relayflow.session"
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True, slots=True)
class Session:
    """A verified cookie: whose key (or, for a credential that cannot be looked up again, the
    caller itself), which session (the CSRF token is bound to it), until when."""

    key_id: str | None
    session_id: str
    expires: int
    caller: Caller | None = None

    @property
    def who(self) -> str:
        """The id the page and the log show: the key's, or the carried caller's."""
        return self.caller.id if self.caller is not None else str(self.key_id)


@dataclass(frozen=True, slots=True)
class Sessions:
    """Issues and reads session cookies and their CSRF tokens."""

    cookies: Signer
    csrf: Signer
    lifetime: int

    @classmethod
    def from_secret(cls, secret: SecretStr, lifetime: int, clock: Clock) -> Sessions:
        return cls(
            Signer.from_secret(secret, "session-cookie/v1", clock),
            Signer.from_secret(secret, "csrf/v1", clock),
            lifetime,
        )

    def issue(self, holder: str | Caller) -> tuple[str, Session]:
        """A session for a key's id, or for a caller carried by value (ending with it)."""
        session_id = secrets.token_urlsafe(16)
        if isinstance(holder, Caller) and holder.expires is None:
            holder = holder.id  # an API key's caller: by its id, re-read on every request
        if isinstance(holder, str):
            value, expires = self.cookies.sign({"k": holder, "sid": session_id}, self.lifetime)
            return value, Session(holder, session_id, expires)
        lifetime = carried.lifetime(self.lifetime, holder, self.cookies.clock())
        claims = {**carried.claims_of(holder), "sid": session_id}
        value, expires = self.cookies.sign(claims, lifetime)
        return value, Session(None, session_id, expires, replace(holder, expires=expires))

    def read(self, value: str | None) -> Session | None:
        """The session of a cookie this gateway signed and that has not expired, else None."""
        claims = self.cookies.verify(value) if value else None
        if claims is None:
            return None
        key_id, session_id, expires = claims.get("k"), claims.get("sid"), claims["exp"]
        if not isinstance(session_id, str):
            return None  # pragma: no cover - only we sign cookies
        if isinstance(key_id, str):
            return Session(key_id, session_id, int(expires))
        caller = carried.caller_in(claims)
        return None if caller is None else Session(None, session_id, int(expires), caller)

    def csrf_token(self, session: Session) -> str:
        return self.csrf.tag(session.session_id)

    def refusal(self, request: Request, session: Session) -> str | None:
        """Why a state-changing request this session authenticates is refused (for the log
        only), or None when it may go on: see the module's docstring."""
        if request.method not in _UNSAFE:
            return None
        if not same_origin(request):
            return "not from this site (Origin or Referer)"
        token = request.headers.get(CSRF_HEADER, "")
        expected = self.csrf_token(session)
        if not secrets.compare_digest(token.encode(), expected.encode()):
            return f"no valid {CSRF_HEADER}"
        return None


def same_origin(request: Request) -> bool:
    """Whether the request's Origin, or without one its Referer, names the host it was sent
    to. Only the host and port are compared: behind a proxy that ends TLS the gateway may see
    http where the browser saw https."""
    source = request.headers.get("origin") or request.headers.get("referer")
    host = request.headers.get("host")
    if not source or source == "null" or not host:
        return False
    return urlsplit(source).netloc.lower() == host.lower()


def remember(request: Request, session: Session) -> None:
    request.scope[_SCOPE_KEY] = session


def session_of(request: Request) -> Session | None:
    """The session that authenticated this request, if a cookie did."""
    session = request.scope.get(_SCOPE_KEY)
    return session if isinstance(session, Session) else None


def page_chrome(request: Request) -> html.Chrome:
    """What every page says around its content: the open-mode warning, or who is signed in and
    the CSRF token the page's scripts send."""
    state = gateway_state(request)
    session = session_of(request)
    sessions = state.access.sessions
    if session is None or sessions is None:
        return html.Chrome(warning=state.access.warning)
    shown = session.who if session.key_id is None else f"key {session.key_id}"
    return html.Chrome(signed_in=session.who, account=shown, csrf=sessions.csrf_token(session))


def to_sign_in(request: Request) -> Response:
    """A page request without a (valid) session: to the sign-in page, and back after it."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{SIGN_IN_PATH}?{urlencode({'next': target})}", status_code=303)


def local_path(raw: str | None) -> str:
    """Where to go after signing in: a path on this site, never another site (`//host`,
    `/\\host` and schemes are how open redirects hide), else the dashboard's home."""
    if not raw or not raw.startswith("/") or raw.startswith(("//", "/\\")):
        return "/"
    if any(ord(char) < 0x21 or char == "\\" for char in raw):
        return "/"
    return raw


async def sign_in_path(request: Request) -> Response:
    """`/signin`: the page (GET) and signing in (POST), one route so that a 405 or an OPTIONS
    lists both methods."""
    if request.method == "POST":
        return await sign_in(request)
    return await sign_in_page(request)


async def sign_in_page(request: Request) -> Response:
    """`GET /signin`. Open mode has nothing to sign in to; a valid session goes straight on (the
    page's script asks this after a link from another site, whose navigation carried no
    SameSite=Strict cookie)."""
    state = gateway_state(request)
    sessions = state.access.sessions
    target = local_path(request.query_params.get("next"))
    if sessions is None:
        return RedirectResponse(target, status_code=303)
    session = sessions.read(request.cookies.get(COOKIE))
    if session is not None and session.key_id is None:
        return RedirectResponse(target, status_code=303)
    if session is not None and session.key_id is not None:
        try:
            async with state.pool.acquire() as conn:
                await active_key(conn, session.key_id)
        except KeyRefused:
            pass  # its key is revoked: sign in again
        else:
            return RedirectResponse(target, status_code=303)
    oidc = state.access.oidc
    link = (oidc.config.issuer, OIDC_SIGN_IN_PATH) if oidc and oidc.config.client_id else None
    return html_response(html.sign_in_page(target, oidc=link))


async def sign_in(request: Request) -> Response:
    """`POST /signin` with `{"key": …}`: verify the key as `access` does a Bearer key, and set
    the cookie. Refused from other sites (a forged sign-in would put someone in another's
    session), and for a key that cannot read the dashboard."""
    state = gateway_state(request)
    checks.require_json(request)
    sessions, hasher = state.access.sessions, state.access.hasher
    if sessions is None or hasher is None:
        return error_response(409, f"authentication is off ({state.access.why}): no sign-in")
    if not same_origin(request):
        return error_response(403, "sign in from this gateway's own sign-in page")
    data = await state.limits.read_json(request, expected='{"key": "<API key>"}')
    try:
        body = SignIn.model_validate(data)
    except ValidationError as exc:
        raise InputError(422, 'send {"key": "<API key>"}', field_errors(exc)) from None
    try:
        async with state.pool.acquire() as conn:
            key = await verify_key(conn, hasher, body.key)
    except KeyRefused as exc:
        log.info("refused a sign-in: %s", exc)
        return error_response(401, "invalid credentials")
    if not allows(key.role, Action.READ):
        log.info("refused a sign-in with API key %s: role %s cannot read", key.id, key.role)
        return error_response(
            403, f"this key's role ({key.role}) may not {Action.READ}: the dashboard needs one"
        )
    value, session = sessions.issue(key.id)
    log.info("signed in to the dashboard with API key %s (role %s)", key.id, key.role)
    answer = SignedIn(
        key_id=key.id, role=key.role, expires_at=datetime.fromtimestamp(session.expires, UTC)
    )
    response = model_response(answer)
    set_session_cookie(request, response, value, session, sessions.cookies.clock)
    return response


def is_secure(request: Request) -> bool:
    """Whether the browser sees this site over HTTPS (behind a proxy that ends TLS, its Origin
    says so): its cookies are then Secure."""
    return request.url.scheme == "https" or (
        request.headers.get("origin", "").startswith("https://")
    )


def set_session_cookie(
    request: Request, response: Response, value: str, session: Session, clock: Clock
) -> None:
    response.set_cookie(
        COOKIE,
        value,
        max_age=max(0, session.expires - int(clock())),
        path="/",
        secure=is_secure(request),
        httponly=True,
        samesite="strict",
    )


async def sign_out(request: Request) -> Response:
    """`POST /signout` with `{}`: clear the cookie. With a valid session it is a state change
    like any other (same site, CSRF token); a cookie that is no longer valid is cleared as is."""
    state = gateway_state(request)
    checks.require_json(request)
    sessions = state.access.sessions
    session = sessions.read(request.cookies.get(COOKIE)) if sessions is not None else None
    if sessions is not None and session is not None:
        why = sessions.refusal(request, session)
        if why is not None:
            log.info("refused a sign-out of %s: %s", session.who, why)
            return error_response(403, f"refused: {why}")
    data = await state.limits.read_json(request, expected="{}")
    try:
        SignOut.model_validate(data)
    except ValidationError as exc:
        raise InputError(422, "the body of a sign-out is {}", field_errors(exc)) from None
    response = Response(status_code=204)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response
