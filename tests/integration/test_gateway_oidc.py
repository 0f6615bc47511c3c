"""People's OIDC tokens at a real gateway, PostgreSQL and RabbitMQ, against a local identity
provider (tests/integration/oidc_provider.py): which tokens pass and which are refused like a
bad key, the JWKS cache through a key rotation and a flood of forged kids, the dashboard's
authorization code flow with PKCE, and that nothing made from a token outlives it or shows in
a log."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import jwt
import pytest

from relayflow.auth import OidcSettings
from relayflow.settings import Settings
from services.gateway.oidc_signin import FLOW_COOKIE
from services.gateway.sessions import COOKIE, CSRF_HEADER
from tests.integration import test_gateway_auth
from tests.integration.gateway_harness import RunningGateway, running_gateway
from tests.integration.oidc_provider import AUDIENCE, CLIENT_ID, Provider, running_provider
from tests.integration.test_gateway_auth import AUTH, FORM, running_workflow
from tests.integration.test_gateway_sessions import csrf_of, same_site
from tests.support import tampered

# A database of its own, where no API key exists (`auto` mode looks at every key).
fresh_settings = test_gateway_auth.fresh_settings
INVALID = {"error": "invalid credentials"}


@pytest.fixture
async def idp() -> AsyncIterator[Provider]:
    async with running_provider() as provider:
        yield provider


def oidc_settings(idp: Provider, **overrides: Any) -> OidcSettings:
    given: dict[str, Any] = {
        "issuer": idp.issuer,
        "audience": AUDIENCE,
        "client_id": CLIENT_ID,
        "jwks_min_interval": 0,
        **overrides,
    }
    return OidcSettings(**given)


@pytest.fixture
async def gateway(settings: Settings, idp: Provider) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, AUTH, oidc_settings(idp), auth="required") as gateway:
        yield gateway


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_oidc_makes_auto_mode_require_credentials_without_any_key(
    fresh_settings: Settings, idp: Provider
) -> None:
    """With an issuer configured someone can always authenticate: loopback and no key must not
    run open."""
    async with running_gateway(fresh_settings, AUTH, oidc_settings(idp), auth="auto") as gw:
        refused = await gw.client.get("/workflows")
        assert refused.status_code == 401
        allowed = await gw.client.get("/workflows", headers=bearer(idp.token()))
        assert allowed.status_code == 200, allowed.text


async def test_a_token_reads_and_starts_as_its_role_says(
    gateway: RunningGateway, idp: Provider, pool: asyncpg.Pool[Any]
) -> None:
    """The role claim decides, as a key's role does: read reads, submit starts, neither more."""
    reader = bearer(idp.token(relayflow_role="read"))
    submitter = bearer(idp.token(relayflow_role=["submit", "not-a-role"]))
    workflow_id = await running_workflow(pool, idp.person["relayflow_tenant"])
    assert (await gateway.client.get("/workflows", headers=reader)).status_code == 200
    assert (
        await gateway.client.get(f"/workflows/{workflow_id}", headers=reader)
    ).status_code == 200
    refused = await gateway.client.post("/workflows/formSubmission", json=FORM, headers=reader)
    assert refused.status_code == 403
    assert "may not" in refused.json()["error"]
    started = await gateway.client.post("/workflows/formSubmission", json=FORM, headers=submitter)
    assert started.status_code == 202, started.text
    assert (await gateway.client.get("/workflows", headers=submitter)).status_code == 403
    cancel = await gateway.client.post(
        f"/workflows/{workflow_id}/cancel", json={}, headers=bearer(idp.token())
    )
    assert cancel.status_code == 202, cancel.text  # the default person is an operator


async def test_tokens_that_do_not_authenticate_are_401_like_a_bad_key(
    gateway: RunningGateway, idp: Provider
) -> None:
    """Every way a token can be wrong gets the one answer a bad key gets: nothing to learn."""
    now = int(time.time())
    stranger = type(idp.key).new()
    no_sub = idp.claims()
    del no_sub["sub"]
    refused = {
        "wrong audience": idp.token(aud="another-service"),
        "wrong issuer": idp.token(iss="http://127.0.0.1:1"),
        "expired": idp.token(exp=now - 120),
        "not yet valid": idp.token(nbf=now + 600),
        "alg none": idp.unsigned(),
        "HS256 keyed with the public key": idp.hmac_with_public_key(),
        "unknown kid": idp.token(key=stranger),
        "a known kid, another key": idp.token(key=stranger, kid=idp.key.kid),
        "no sub": jwt.encode(no_sub, idp.key.private, "RS256", headers={"kid": idp.key.kid}),
        "not a JWT": "abc.def.ghi",
        "a tampered payload": _tampered(idp.token(), idp.token(relayflow_role="admin")),
    }
    for why, token in refused.items():
        response = await gateway.client.get("/workflows", headers=bearer(token))
        assert response.status_code == 401, why
        assert response.json() == INVALID, why
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"', why


def _tampered(token: str, other: str) -> str:
    """`token`'s header and signature around `other`'s claims."""
    header, _, signature = token.split(".")
    return f"{header}.{other.split('.')[1]}.{signature}"


async def test_authentic_tokens_that_name_no_caller_are_403(
    gateway: RunningGateway, idp: Provider
) -> None:
    """Signed by the provider, but no relayflow role or no valid tenant: the client is told
    which claim is missing."""
    no_role = await gateway.client.get("/workflows", headers=bearer(idp.token(relayflow_role=[])))
    assert no_role.status_code == 403
    assert "no relayflow role in the token" in no_role.json()["error"]
    for tenant in ("Not Valid", "", None):
        token = idp.token(relayflow_tenant=tenant)
        response = await gateway.client.get("/workflows", headers=bearer(token))
        assert response.status_code == 403, tenant
        assert "no valid relayflow tenant" in response.json()["error"]


async def test_a_rotated_key_is_fetched_on_its_first_token(
    settings: Settings, idp: Provider
) -> None:
    """A provider rotates its keys; the first token under the new kid fetches the JWKS again,
    and a token under the retired key no longer passes."""
    async with running_gateway(settings, AUTH, oidc_settings(idp), auth="required") as gw:
        old = idp.token()
        assert (await gw.client.get("/workflows", headers=bearer(old))).status_code == 200
        assert (await gw.client.get("/workflows", headers=bearer(old))).status_code == 200
        assert idp.jwks_fetches == 1  # cached
        idp.rotate()
        new = idp.token()
        assert (await gw.client.get("/workflows", headers=bearer(new))).status_code == 200
        assert idp.jwks_fetches == 2
        assert (await gw.client.get("/workflows", headers=bearer(old))).status_code == 401


async def test_a_flood_of_unknown_kids_fetches_the_jwks_at_most_once_per_interval(
    settings: Settings, idp: Provider
) -> None:
    """A kid is the sender's to choose: made-up ones must not turn into requests to the
    provider, however many come at once."""
    oidc = oidc_settings(idp, jwks_min_interval=60)
    async with running_gateway(settings, AUTH, oidc, auth="required") as gw:
        assert (await gw.client.get("/workflows", headers=bearer(idp.token()))).status_code == 200
        assert idp.jwks_fetches == 1
        forged = [idp.token(kid=secrets.token_hex(8)) for _ in range(30)]
        answers = await asyncio.gather(
            *(gw.client.get("/workflows", headers=bearer(token)) for token in forged)
        )
        assert {answer.status_code for answer in answers} == {401}
        assert idp.jwks_fetches == 1
        assert (await gw.client.get("/workflows", headers=bearer(idp.token()))).status_code == 200


async def test_an_unreachable_provider_is_503_not_a_refusal(settings: Settings) -> None:
    """A token that cannot be checked now may be fine: the client should retry, not give up;
    API keys are unaffected."""
    unreachable = OidcSettings(issuer="http://127.0.0.1:1", audience=AUDIENCE)
    async with running_gateway(settings, AUTH, unreachable, auth="required") as gw:
        response = await gw.client.get("/workflows", headers=bearer("eyJhbGciOi.x.y"))
        assert response.status_code == 401  # not even shaped like a JWT: no fetch needed
        token = jwt.encode(
            {"sub": "x", "exp": int(time.time()) + 60},
            type(Provider().key).new().private,
            "RS256",
            headers={"kid": "k"},
        )
        response = await gw.client.get("/workflows", headers=bearer(token))
        assert response.status_code == 503
        assert response.headers["retry-after"]


async def sign_in_through_oidc(
    gateway: RunningGateway, idp: Provider, next_path: str = "/ui/list"
) -> tuple[str, httpx.Response]:
    """The browser's round trip, redirect by redirect: the session cookie, and the callback's
    answer."""
    page = await gateway.client.get("/signin", params={"next": next_path})
    assert f"Sign in with {idp.issuer}" in page.text
    start = await gateway.client.get("/signin/oidc", params={"next": next_path})
    assert start.status_code == 303, start.text
    flow = start.cookies[FLOW_COOKIE]
    gateway.client.cookies.clear()
    async with httpx.AsyncClient() as browser:
        approved = await browser.get(start.headers["location"])
    assert approved.status_code == 302, approved.text
    back = urlsplit(approved.headers["location"])
    assert f"{back.scheme}://{back.netloc}" == gateway.base_url
    callback = await gateway.client.get(
        f"{back.path}?{back.query}", headers={"Cookie": f"{FLOW_COOKIE}={flow}"}
    )
    assert callback.status_code == 303, callback.text
    cookie = callback.cookies[COOKIE]
    gateway.client.cookies.clear()
    return cookie, callback


async def test_the_code_flow_signs_a_person_in_to_the_dashboard(
    gateway: RunningGateway, idp: Provider, pool: asyncpg.Pool[Any]
) -> None:
    """Authorization code with PKCE to the same session cookie as a key's: the pages open, and
    a POST needs the CSRF token like any cookie's."""
    start = await gateway.client.get("/signin/oidc", params={"next": "/ui/list"})
    gateway.client.cookies.clear()
    query = parse_qs(urlsplit(start.headers["location"]).query)
    assert query["code_challenge_method"] == ["S256"]
    assert query["client_id"] == [CLIENT_ID]
    assert query["redirect_uri"] == [f"{gateway.base_url}/signin/oidc/callback"]
    assert all(query[name][0] for name in ("state", "nonce", "code_challenge"))
    flow_attributes = start.headers["set-cookie"].lower()
    assert "httponly" in flow_attributes
    assert "samesite=lax" in flow_attributes  # the provider's redirect back is cross-site
    assert "path=/signin/oidc" in flow_attributes

    cookie, callback = await sign_in_through_oidc(gateway, idp)
    assert callback.headers["location"] == "/signin?next=%2Fui%2Flist"
    attributes = [h.lower() for h in callback.headers.get_list("set-cookie")]
    session = next(h for h in attributes if h.startswith(COOKIE))
    assert "httponly" in session
    assert "samesite=strict" in session
    assert any(h.startswith(FLOW_COOKIE) and "max-age=0" in h for h in attributes)
    assert idp.issued[-1] not in cookie

    home = await gateway.client.get("/", headers=same_site(gateway, cookie))
    assert home.status_code == 200
    assert f'data-signed-in="oidc:{idp.subject}"' in home.text
    workflow_id = await running_workflow(pool, idp.person["relayflow_tenant"])
    url = f"/workflows/{workflow_id}/cancel"
    refused = await gateway.client.post(url, json={}, headers=same_site(gateway, cookie))
    assert refused.status_code == 403
    token = await csrf_of(gateway, cookie)
    done = await gateway.client.post(
        url, json={}, headers=same_site(gateway, cookie, **{CSRF_HEADER: token})
    )
    assert done.status_code == 202, done.text
    # The sign-in page sends a signed-in person straight on.
    page = await gateway.client.get("/signin?next=/ui/list", headers=same_site(gateway, cookie))
    assert page.status_code == 303


async def test_a_callback_not_started_in_this_browser_is_refused(
    gateway: RunningGateway, idp: Provider
) -> None:
    """Login CSRF: an attacker's own code and state, or a code without the flow's cookie, must
    not sign the victim's browser in."""
    start = await gateway.client.get("/signin/oidc")
    flow = start.cookies[FLOW_COOKIE]
    gateway.client.cookies.clear()
    async with httpx.AsyncClient() as browser:
        approved = await browser.get(start.headers["location"])
    back = urlsplit(approved.headers["location"])
    code = parse_qs(back.query)["code"][0]
    jar = {"Cookie": f"{FLOW_COOKIE}={flow}"}
    for query, headers in (
        (f"code={code}&state=someone-elses", jar),
        (back.query, {}),
        (back.query, {"Cookie": f"{FLOW_COOKIE}={tampered(flow)}"}),
    ):
        response = await gateway.client.get(f"/signin/oidc/callback?{query}", headers=headers)
        assert response.status_code == 400, query
        assert COOKIE not in response.cookies
    # The code was not spent by the refusals, and is good once; a second use fails at /token.
    ok = await gateway.client.get(f"/signin/oidc/callback?{back.query}", headers=jar)
    assert ok.status_code == 303
    gateway.client.cookies.clear()
    again = await gateway.client.get(f"/signin/oidc/callback?{back.query}", headers=jar)
    assert again.status_code == 401
    assert COOKIE not in again.cookies
    denied = await gateway.client.get(
        f"/signin/oidc/callback?error=access_denied&state={parse_qs(back.query)['state'][0]}",
        headers=jar,
    )
    assert denied.status_code == 401


async def test_a_person_who_cannot_read_is_not_signed_in(
    gateway: RunningGateway, idp: Provider
) -> None:
    """The dashboard needs `read`, as a key's sign-in does."""
    idp.person = {"relayflow_tenant": "acme", "relayflow_role": "submit"}
    start = await gateway.client.get("/signin/oidc")
    flow = start.cookies[FLOW_COOKIE]
    gateway.client.cookies.clear()
    async with httpx.AsyncClient() as browser:
        approved = await browser.get(start.headers["location"])
    back = urlsplit(approved.headers["location"])
    response = await gateway.client.get(
        f"{back.path}?{back.query}", headers={"Cookie": f"{FLOW_COOKIE}={flow}"}
    )
    assert response.status_code == 403
    assert COOKIE not in response.cookies


async def test_nothing_made_from_a_token_outlives_it(settings: Settings, idp: Provider) -> None:
    """The gateway cannot ask the provider per request, so a session and a stream token end
    with the token they came from, however long their own settings would let them last."""
    async with running_gateway(
        settings,
        AUTH,
        oidc_settings(idp),
        auth="required",
        session_seconds=3600,
        stream_token_seconds=3600,
    ) as gw:
        exp = int(time.time()) + 90
        minted = await gw.client.post(
            "/stream-tokens", json={"list": True}, headers=bearer(idp.token(exp=exp))
        )
        assert minted.status_code == 200, minted.text
        assert _unix(minted.json()["expiresAt"]) <= exp
        async with gw.client.stream("GET", f"/events?token={minted.json()['token']}") as stream:
            assert stream.status_code == 200

        idp.id_token_seconds = 120
        before = int(time.time())
        cookie, callback = await sign_in_through_oidc(gw, idp)
        session = next(h for h in callback.headers.get_list("set-cookie") if h.startswith(COOKIE))
        max_age = int(session.lower().split("max-age=")[1].split(";")[0])
        assert 0 < max_age <= 120
        id_exp = jwt.decode(idp.issued[-1], options={"verify_signature": False})["exp"]
        assert before + max_age <= id_exp
        csrf = await csrf_of(gw, cookie)
        from_session = await gw.client.post(
            "/stream-tokens",
            json={"list": True},
            headers=same_site(gw, cookie, **{CSRF_HEADER: csrf}),
        )
        assert from_session.status_code == 200, from_session.text
        assert _unix(from_session.json()["expiresAt"]) <= id_exp


def _unix(text: str) -> int:
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp())


async def test_no_token_code_or_cookie_appears_in_a_log(
    settings: Settings, idp: Provider, caplog: pytest.LogCaptureFixture
) -> None:
    """Tokens are credentials: refusals say why, and name a person by subject only."""
    caplog.set_level(logging.DEBUG)
    async with running_gateway(
        settings, AUTH, oidc_settings(idp), auth="required", gateway_access_log=True
    ) as gw:
        good = idp.token()
        bad = [
            idp.token(aud="other"),
            idp.token(exp=int(time.time()) - 300),
            idp.unsigned(),
            idp.hmac_with_public_key(),
            idp.token(kid="made-up"),
            idp.token(relayflow_role=[]),
        ]
        for token in (good, *bad):
            await gw.client.get("/workflows", headers=bearer(token))
        minted = await gw.client.post("/stream-tokens", json={"list": True}, headers=bearer(good))
        stream_token = minted.json()["token"]
        async with gw.client.stream("GET", f"/events?token={stream_token}") as stream:
            assert stream.status_code == 200
        cookie, callback = await sign_in_through_oidc(gw, idp)
        callback_url = str(callback.request.url)
        await gw.client.get("/", headers=same_site(gw, cookie))
    logged = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("services.", "relayflow.", "uvicorn."))
    )
    assert f"oidc:{idp.subject}" in logged
    assert "refused an OIDC token" in logged
    assert "GET /signin/oidc/callback?code=<redacted>&state=<redacted>" in logged
    code, state = (parse_qs(urlsplit(callback_url).query)[name][0] for name in ("code", "state"))
    for text in (good, *bad, stream_token, cookie, *idp.issued, code, state):
        assert text not in logged
        signature = text.split(".")[-1]
        assert not signature or signature not in logged
