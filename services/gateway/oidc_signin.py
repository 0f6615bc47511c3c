"""The dashboard's sign-in through OIDC: the authorization code flow with PKCE (S256).

`GET /signin/oidc?next=…` (the sign-in page's link, shown when `RELAYFLOW_OIDC_CLIENT_ID` is
set) sends the browser to the provider's authorization endpoint with a fresh `state`, `nonce`
and code challenge; the three secrets and `next` wait in `relayflow_oidc_flow`, a cookie
signed like the session's, HttpOnly, for ten minutes, on these two paths only. SameSite=Lax,
not Strict: the provider sends the browser back with a cross-site navigation, on which a Strict
cookie would not come. `GET /signin/oidc/callback?code=…&state=…` takes it only when `state`
is the cookie's (else anyone could sign a browser into their own account), exchanges the code
with the verifier at the token endpoint, verifies the id token (`aud` the client id, the
`nonce` the cookie's), and sets the same session cookie as a key's sign-in, carrying the
person's subject, tenant and role (`services.gateway.sessions` says why it is not re-checked).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from urllib.parse import urlencode, urlsplit

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from relayflow.auth import (
    Action,
    IdpUnavailable,
    OidcProvider,
    Pkce,
    TokenForbidden,
    TokenRefused,
    allows,
)
from relayflow.auth.signed import Signer
from services.gateway import html, sessions
from services.gateway.responses import html_response
from services.gateway.state import Caller, gateway_state

log = logging.getLogger(__name__)

FLOW_COOKIE = "relayflow_oidc_flow"
FLOW_SECONDS = 600
# A longer `next` is dropped for the home page: the flow cookie must stay small.
_MAX_NEXT = 256


def _failed(status: int, why: str) -> Response:
    """A page for the person: what went wrong, and the way back to signing in."""
    body = (
        '<section class="card signin"><h1>Sign-in failed</h1>'
        f'<p class="form-error">{html.esc(why)}</p>'
        f'<p><a class="btn" href="{sessions.SIGN_IN_PATH}">Back to sign-in</a></p></section>'
    )
    return html_response(html.page("Sign-in failed", body), status_code=status)


def _flows(request: Request) -> Signer | None:
    credentials = gateway_state(request).access.credentials
    return credentials.oidc_flows if credentials is not None else None


def _redirect_uri(request: Request, configured: str | None) -> str:
    return configured or str(request.base_url).rstrip("/") + sessions.OIDC_CALLBACK_PATH


async def start(request: Request) -> Response:
    """`GET /signin/oidc`: to the provider, with this sign-in's secrets kept in the cookie."""
    state = gateway_state(request)
    oidc, flows = state.access.oidc, _flows(request)
    if oidc is None or flows is None or oidc.config.client_id is None:
        return _failed(404, "Signing in through OIDC is not configured on this gateway.")
    target = sessions.local_path(request.query_params.get("next"))
    if len(target) > _MAX_NEXT:
        target = "/"
    try:
        endpoint = (await oidc.endpoints()).authorization_endpoint
    except IdpUnavailable as exc:
        log.warning("could not start an OIDC sign-in: %s", exc)
        endpoint = None
    if endpoint is None:
        return _failed(503, "The identity provider cannot be reached right now; retry shortly.")
    pkce = Pkce.new()
    redirect_uri = _redirect_uri(request, oidc.config.redirect_uri)
    value, _ = flows.sign(
        {"st": pkce.state, "n": pkce.nonce, "v": pkce.verifier, "to": target, "ru": redirect_uri},
        FLOW_SECONDS,
    )
    query = urlencode(
        {
            "response_type": "code",
            "client_id": oidc.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": "openid",
            "state": pkce.state,
            "nonce": pkce.nonce,
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
        }
    )
    separator = "&" if urlsplit(endpoint).query else "?"
    response = RedirectResponse(f"{endpoint}{separator}{query}", status_code=303)
    response.set_cookie(
        FLOW_COOKIE,
        value,
        max_age=FLOW_SECONDS,
        path=sessions.OIDC_SIGN_IN_PATH,
        secure=sessions.is_secure(request),
        httponly=True,
        samesite="lax",
    )
    return response


async def callback(request: Request) -> Response:
    """`GET /signin/oidc/callback`: check `state`, exchange the code, verify the id token, set
    the session cookie and go on to `next` (through /signin, whose page carries on once the
    browser sends the Strict cookie: this navigation came from another site)."""
    response = await _signed_in(request)
    response.delete_cookie(FLOW_COOKIE, path=sessions.OIDC_SIGN_IN_PATH, httponly=True)
    return response


async def _signed_in(request: Request) -> Response:
    state = gateway_state(request)
    oidc, flows, cookies = state.access.oidc, _flows(request), state.access.sessions
    if oidc is None or flows is None or cookies is None or oidc.config.client_id is None:
        return _failed(404, "Signing in through OIDC is not configured on this gateway.")
    flow = _flow(request, flows)
    if isinstance(flow, Response):
        return flow
    caller = await _person(oidc, request.query_params["code"], flow)
    if isinstance(caller, Response):
        return caller
    if not allows(caller.role, Action.READ):
        log.info("refused an OIDC sign-in of %s: role %s cannot read", caller.id, caller.role)
        return _failed(
            403, f"Your role ({caller.role}) may not {Action.READ}: the dashboard needs one."
        )
    value, session = cookies.issue(caller)
    log.info("signed in to the dashboard through OIDC as %s (role %s)", caller.id, caller.role)
    next_path = sessions.local_path(str(flow["to"]))
    response = RedirectResponse(
        f"{sessions.SIGN_IN_PATH}?{urlencode({'next': next_path})}", status_code=303
    )
    sessions.set_session_cookie(request, response, value, session, cookies.cookies.clock)
    return response


def _flow(request: Request, flows: Signer) -> dict[str, str | int] | Response:
    """The claims of this browser's sign-in cookie, when the provider's answer is for it and
    carries a code; else the page that says why not."""
    raw = request.cookies.get(FLOW_COOKIE)
    flow = flows.verify(raw) if raw else None
    if flow is None:
        log.info("refused an OIDC sign-in callback: no valid sign-in cookie (expired or forged)")
        return _failed(400, "This sign-in expired or was not started in this browser; start again.")
    sent = request.query_params.get("state", "")
    if not secrets.compare_digest(sent.encode(), str(flow["st"]).encode()):
        log.info("refused an OIDC sign-in callback: its state is not this browser's")
        return _failed(400, "This sign-in was not started in this browser; start again.")
    if "error" in request.query_params or "code" not in request.query_params:
        error = request.query_params.get("error", "no code")[:64]
        log.info("an OIDC sign-in ended at the provider: %r", error)
        return _failed(401, f"The identity provider did not sign you in ({error}).")
    return flow


async def _person(
    oidc: OidcProvider, code: str, flow: Mapping[str, str | int]
) -> Caller | Response:
    """The person the id token for `code` names (its `aud` the client id, its nonce the
    flow's), or the page that says why not."""
    pkce = Pkce(str(flow["st"]), str(flow["n"]), str(flow["v"]))
    try:
        token = await oidc.exchange(code, pkce, str(flow["ru"]))
        identity = await oidc.verify(token, audience=oidc.config.client_id, nonce=pkce.nonce)
    except TokenRefused as exc:
        log.info("refused an OIDC sign-in: %s", exc)
        return _failed(401, "The identity provider's answer could not be verified.")
    except TokenForbidden as exc:
        log.info("refused an OIDC sign-in: %s", exc)
        return _failed(403, f"Signed in, but {exc}.")
    except IdpUnavailable as exc:
        log.warning("could not finish an OIDC sign-in: %s", exc)
        return _failed(503, "The identity provider cannot be reached right now; retry shortly.")
    return Caller.person(identity)
