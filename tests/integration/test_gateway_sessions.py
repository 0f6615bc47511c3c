"""The dashboard's sign-in cookie, its CSRF check, stream tokens and the pages' CSP against a real
gateway, PostgreSQL and RabbitMQ (services.gateway.sessions, services.gateway.stream_tokens):
what a browser holds stands for a key and never outlives it, and no credential reaches a log."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from relayflow.auth import CreatedKey, Role, revoke_key
from relayflow.contracts import new_workflow_id
from relayflow.settings import Settings
from services.gateway.sessions import COOKIE, CSRF_HEADER, Sessions
from services.gateway.stream_tokens import LIST_SCOPE, StreamTokens, workflow_scope
from tests.integration.gateway_harness import RunningGateway, made_keys, running_gateway
from tests.integration.test_gateway_auth import (
    AUTH,
    FORM,
    HASHER,
    SECRET,
    MakeKey,
    bearer,
    running_workflow,
)
from tests.support import tampered

_META = re.compile(r'<meta name="relayflow-csrf" content="([^"]+)">')


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[RunningGateway]:
    async with running_gateway(settings, AUTH, auth="required") as gateway:
        yield gateway


@pytest.fixture
async def keys(pool: asyncpg.Pool[Any]) -> AsyncIterator[MakeKey]:
    async with made_keys(pool, HASHER) as make:
        yield make


def same_site(gateway: RunningGateway, cookie: str | None = None, **extra: str) -> dict[str, str]:
    """The headers a dashboard page's own request carries: its Origin and the cookie."""
    headers = {"Origin": gateway.base_url, **extra}
    if cookie is not None:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    return headers


async def sign_in(gateway: RunningGateway, created: CreatedKey) -> tuple[str, httpx.Response]:
    """The session cookie for `created` (kept out of the client's jar: each test says what it
    sends)."""
    response = await gateway.client.post(
        "/signin", json={"key": created.key}, headers=same_site(gateway)
    )
    assert response.status_code == 200, response.text
    value = response.cookies[COOKIE]
    gateway.client.cookies.clear()
    return value, response


async def csrf_of(gateway: RunningGateway, cookie: str) -> str:
    page = await gateway.client.get("/", headers=same_site(gateway, cookie))
    assert page.status_code == 200, page.text
    found = _META.search(page.text)
    assert found is not None
    return found.group(1)


async def stream_status(gateway: RunningGateway, url: str, **headers: str) -> int:
    async with gateway.client.stream("GET", url, headers=headers) as response:
        if response.status_code != 200:
            await response.aread()
        return response.status_code


async def test_sign_in_sets_a_strict_http_only_cookie_that_is_not_the_key(
    gateway: RunningGateway, keys: MakeKey
) -> None:
    """The browser holds a signed id, not the key: stealing the cookie's text yields no key."""
    created = await keys(Role.READ)
    cookie, response = await sign_in(gateway, created)
    assert response.json()["keyId"] == created.record.id
    assert response.json()["role"] == "read"
    attributes = response.headers["set-cookie"].lower()
    assert "httponly" in attributes
    assert "samesite=strict" in attributes
    assert "path=/" in attributes
    assert "secure" not in attributes  # plain http: a Secure cookie would never come back
    assert created.key not in cookie
    assert created.key.rsplit("_", 1)[1] not in cookie
    home = await gateway.client.get("/", headers=same_site(gateway, cookie))
    assert home.status_code == 200
    assert f'data-signed-in="{created.record.id}"' in home.text
    assert "data-sign-out" in home.text
    listed = await gateway.client.get("/workflows", headers={"Cookie": f"{COOKIE}={cookie}"})
    assert listed.status_code == 200


async def test_an_https_page_gets_a_secure_cookie(gateway: RunningGateway, keys: MakeKey) -> None:
    """Behind a proxy that ends TLS the browser's Origin says https: the cookie is Secure."""
    created = await keys(Role.READ)
    response = await gateway.client.post(
        "/signin",
        json={"key": created.key},
        headers={"Origin": gateway.base_url.replace("http://", "https://")},
    )
    gateway.client.cookies.clear()
    assert response.status_code == 200
    assert "secure" in response.headers["set-cookie"].lower()


async def test_sign_in_refuses_bad_keys_other_sites_and_keys_that_cannot_read(
    gateway: RunningGateway, keys: MakeKey
) -> None:
    """Only a valid key that may read, posted from the gateway's own page, signs in."""
    reader = await keys(Role.READ)
    submitter = await keys(Role.SUBMIT)
    client = gateway.client
    wrong = reader.key[:-1] + ("a" if reader.key[-1] != "a" else "b")
    refused = await client.post("/signin", json={"key": wrong}, headers=same_site(gateway))
    assert refused.status_code == 401
    assert refused.json() == {"error": "invalid credentials"}
    refused = await client.post("/signin", json={"key": submitter.key}, headers=same_site(gateway))
    assert refused.status_code == 403
    # A forged sign-in from another site would put the victim in the attacker's session.
    for headers in ({"Origin": "http://evil.example"}, {}):
        refused = await client.post("/signin", json={"key": reader.key}, headers=headers)
        assert refused.status_code == 403, headers
    refused = await client.post(
        "/signin",
        content=f"key={reader.key}",
        headers={**same_site(gateway), "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert refused.status_code == 415
    refused = await client.post("/signin", json={"secret": "x"}, headers=same_site(gateway))
    assert refused.status_code == 422
    assert COOKIE not in client.cookies


async def test_pages_redirect_to_sign_in_and_apis_answer_401(gateway: RunningGateway) -> None:
    """A person lands on the sign-in page and comes back; a script gets JSON it can act on."""
    workflow_id = new_workflow_id()
    for path, target in (
        ("/", "/signin?next=%2F"),
        (
            f"/ui/workflows/{workflow_id}?x=1",
            f"/signin?next=%2Fui%2Fworkflows%2F{workflow_id}%3Fx%3D1",
        ),
    ):
        response = await gateway.client.get(path)
        assert response.status_code == 303, path
        assert response.headers["location"] == target
    for path in ("/ui/list", f"/ui/workflows/{workflow_id}/panel", "/workflows", "/events"):
        response = await gateway.client.get(path)
        assert response.status_code == 401, path
        assert response.headers["content-type"] == "application/json"
    page = await gateway.client.get("/signin", params={"next": "https://evil.example/"})
    assert page.status_code == 200
    assert 'data-next="/"' in page.text


async def test_a_revoked_key_ends_its_sessions_at_the_next_request(
    gateway: RunningGateway, keys: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """The cookie is checked against the key's row every time, as a Bearer key is."""
    created = await keys(Role.READ)
    cookie, _ = await sign_in(gateway, created)
    headers = same_site(gateway, cookie)
    assert (await gateway.client.get("/workflows", headers=headers)).status_code == 200
    async with pool.acquire() as conn:
        await revoke_key(conn, created.record.id)
    assert (await gateway.client.get("/workflows", headers=headers)).status_code == 401
    page = await gateway.client.get("/", headers=headers)
    assert page.status_code == 303
    # The sign-in page does not send the stale session back to the page (no loop).
    assert (await gateway.client.get("/signin", headers=headers)).status_code == 200


async def test_forged_and_expired_cookies_are_refused(
    gateway: RunningGateway, keys: MakeKey
) -> None:
    """Only the gateway's own signature, within its lifetime, stands for a key."""
    created = await keys(Role.READ)
    cookie, _ = await sign_in(gateway, created)
    expired, _ = Sessions.from_secret(SECRET, 3600, lambda: time.time() - 7200).issue(
        created.record.id
    )
    other_secret = Sessions.from_secret(
        type(SECRET)("another-secret-for-sessions-0123456789"), 3600, time.time
    )
    forged, _ = other_secret.issue(created.record.id)
    for value in (expired, forged, tampered(cookie), "nonsense"):
        response = await gateway.client.get("/workflows", headers={"Cookie": f"{COOKIE}={value}"})
        assert response.status_code == 401, value
        assert response.json() == {"error": "invalid credentials"}


async def test_cookie_posts_need_the_csrf_token_and_this_site(
    gateway: RunningGateway, keys: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """What a page on another site could make a signed-in browser send is refused: 403 without
    the session's token or with another origin; the page's own request goes through."""
    created = await keys(Role.OPERATOR)
    cookie, _ = await sign_in(gateway, created)
    token = await csrf_of(gateway, cookie)
    other, _ = await sign_in(gateway, created)
    other_token = await csrf_of(gateway, other)
    assert other_token != token
    workflow_id = await running_workflow(pool, created.record.tenant)
    url = f"/workflows/{workflow_id}/cancel"
    jar = {"Cookie": f"{COOKIE}={cookie}"}
    for headers in (
        same_site(gateway, cookie),
        same_site(gateway, cookie, **{CSRF_HEADER: other_token}),
        {**jar, "Origin": "http://evil.example", CSRF_HEADER: token},
        {**jar, CSRF_HEADER: token},  # neither Origin nor Referer
        {**jar, "Referer": "http://evil.example/page", CSRF_HEADER: token},
    ):
        response = await gateway.client.post(url, json={}, headers=headers)
        assert response.status_code == 403, headers
    start = await gateway.client.post(
        "/workflows/formSubmission", json=FORM, headers=same_site(gateway, cookie)
    )
    assert start.status_code == 403
    referred = {**jar, "Referer": f"{gateway.base_url}/ui/workflows/{workflow_id}"}
    response = await gateway.client.post(url, json={}, headers={**referred, CSRF_HEADER: token})
    assert response.status_code == 202, response.text
    # Bearer requests carry no cookie a browser would add: no token needed.
    workflow_id = await running_workflow(pool, created.record.tenant)
    response = await gateway.client.post(
        f"/workflows/{workflow_id}/cancel", json={}, headers=bearer(created)
    )
    assert response.status_code == 202, response.text


async def test_sign_out_clears_the_cookie_with_the_csrf_token(
    gateway: RunningGateway, keys: MakeKey
) -> None:
    """Signing out is a state change like the others; a dead cookie is cleared as it is."""
    created = await keys(Role.READ)
    cookie, _ = await sign_in(gateway, created)
    token = await csrf_of(gateway, cookie)
    refused = await gateway.client.post("/signout", json={}, headers=same_site(gateway, cookie))
    assert refused.status_code == 403
    done = await gateway.client.post(
        "/signout", json={}, headers=same_site(gateway, cookie, **{CSRF_HEADER: token})
    )
    assert done.status_code == 204
    cleared = done.headers["set-cookie"].lower()
    assert cleared.startswith(f'{COOKIE}=""') or cleared.startswith(f"{COOKIE}=;")
    assert "max-age=0" in cleared
    gateway.client.cookies.clear()
    anyone = await gateway.client.post("/signout", json={}, headers=same_site(gateway))
    assert anyone.status_code == 204


async def test_stream_tokens_open_only_their_stream(
    gateway: RunningGateway, keys: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """A token is for one workflow or the list: any other stream, a forged or expired one, is
    401, the same whether the other workflow exists or not."""
    created = await keys(Role.READ)
    workflow_id = await running_workflow(pool, created.record.tenant)
    other_id = await running_workflow(pool, created.record.tenant)
    missing_id = new_workflow_id()
    minted = await gateway.client.post(
        "/stream-tokens", json={"workflowId": workflow_id}, headers=bearer(created)
    )
    assert minted.status_code == 200, minted.text
    assert minted.headers["cache-control"] == "no-store"
    token = minted.json()["token"]
    assert minted.json()["expiresAt"]
    listed = await gateway.client.post(
        "/stream-tokens", json={"list": True}, headers=bearer(created)
    )
    list_token = listed.json()["token"]
    assert await stream_status(gateway, f"/workflows/{workflow_id}/events?token={token}") == 200
    assert await stream_status(gateway, f"/events?token={list_token}") == 200
    refusals = []
    for url in (
        f"/workflows/{other_id}/events?token={token}",
        f"/workflows/{missing_id}/events?token={token}",
        f"/workflows/{workflow_id}/events?token={list_token}",
        f"/events?token={token}",
        f"/workflows/{workflow_id}/events?token={tampered(token)}",
        f"/workflows/{workflow_id}/events?token=",
    ):
        response = await gateway.client.get(url)
        assert response.status_code == 401, url
        refusals.append(response.json())
    assert all(body == {"error": "invalid credentials"} for body in refusals)
    expired, _ = StreamTokens.from_secret(SECRET, 300, lambda: time.time() - 301).mint(
        created.record.id, workflow_scope(workflow_id)
    )
    url = f"/workflows/{workflow_id}/events?token={expired}"
    assert (await gateway.client.get(url)).status_code == 401
    # Not a credential anywhere but on an event stream.
    assert (await gateway.client.get(f"/workflows?token={list_token}")).status_code == 401


async def test_a_stream_token_never_outlives_its_key(
    gateway: RunningGateway, keys: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """The key inside is checked at every use: revoking it voids every token made with it."""
    created = await keys(Role.READ)
    tokens = StreamTokens.from_secret(SECRET, 300, time.time)
    token, _ = tokens.mint(created.record.id, LIST_SCOPE)
    assert await stream_status(gateway, f"/events?token={token}") == 200
    async with pool.acquire() as conn:
        await revoke_key(conn, created.record.id)
    assert (await gateway.client.get(f"/events?token={token}")).status_code == 401


async def test_minting_needs_the_stream_role_and_a_scope(
    gateway: RunningGateway, keys: MakeKey
) -> None:
    """A submit key cannot mint its way into reading; a body names exactly one stream; the
    dashboard's cookie mints with its CSRF token like any POST."""
    submitter = await keys(Role.SUBMIT)
    reader = await keys(Role.READ)
    response = await gateway.client.post(
        "/stream-tokens", json={"list": True}, headers=bearer(submitter)
    )
    assert response.status_code == 403
    for body in ({}, {"list": True, "workflowId": "wf_1"}, {"list": False}, {"workflowId": "a b"}):
        response = await gateway.client.post("/stream-tokens", json=body, headers=bearer(reader))
        assert response.status_code == 422, body
    assert (await gateway.client.post("/stream-tokens", json={"list": True})).status_code == 401
    cookie, _ = await sign_in(gateway, reader)
    token = await csrf_of(gateway, cookie)
    refused = await gateway.client.post(
        "/stream-tokens", json={"list": True}, headers=same_site(gateway, cookie)
    )
    assert refused.status_code == 403
    minted = await gateway.client.post(
        "/stream-tokens",
        json={"list": True},
        headers=same_site(gateway, cookie, **{CSRF_HEADER: token}),
    )
    assert minted.status_code == 200, minted.text
    # Same-origin EventSource also works on the cookie alone (a GET needs no CSRF token).
    assert await stream_status(gateway, "/events", Cookie=f"{COOKIE}={cookie}") == 200


async def test_every_html_answer_forbids_inline_script(
    gateway: RunningGateway, keys: MakeKey, pool: asyncpg.Pool[Any]
) -> None:
    """The CSP is the second line behind escaping: pages and fragments alike carry it."""
    reader = await keys(Role.READ)
    cookie, _ = await sign_in(gateway, reader)
    workflow_id = await running_workflow(pool, reader.record.tenant)
    headers = same_site(gateway, cookie)
    for path in (
        "/",
        "/ui/list",
        f"/ui/workflows/{workflow_id}",
        f"/ui/workflows/{workflow_id}/panel",
        f"/ui/workflows/{new_workflow_id()}",
        "/ui/workflows/bad%20id",
        "/signin",
    ):
        response = await gateway.client.get(path, headers=headers if path != "/signin" else {})
        assert response.headers["content-type"].startswith("text/html"), path
        policy = response.headers["content-security-policy"]
        for directive in (
            "script-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "frame-ancestors 'none'",
            "default-src 'none'",
        ):
            assert directive in policy, (path, directive)
        assert "unsafe-inline" not in policy.replace("style-src-attr 'unsafe-inline'", "")
        assert not re.search(r"<script(?![^>]*\bsrc=)", response.text), path
        assert not re.search(r"\son[a-z]+\s*=", response.text), path


async def test_open_mode_changes_nothing(settings: Settings) -> None:
    """The quick start: no sign-in, no redirect, no token to mint; the CSP still applies."""
    async with running_gateway(settings, auth="off") as gateway:
        home = await gateway.client.get("/")
        assert home.status_code == 200
        assert "relayflow-csrf" not in home.text
        assert "script-src 'self'" in home.headers["content-security-policy"]
        page = await gateway.client.get("/signin", params={"next": "/ui/list"})
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/list"
        refused = await gateway.client.post(
            "/signin", json={"key": "rf_x"}, headers=same_site(gateway)
        )
        assert refused.status_code == 409
        minted = await gateway.client.post("/stream-tokens", json={"list": True})
        assert minted.status_code == 409
        assert await stream_status(gateway, "/events") == 200


async def test_no_key_cookie_or_token_appears_in_a_log(
    settings: Settings,
    keys: MakeKey,
    pool: asyncpg.Pool[Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Logs (the access log too) travel where credentials must not: only a key's id may show."""
    caplog.set_level(logging.DEBUG)
    async with running_gateway(settings, AUTH, auth="required", gateway_access_log=True) as gw:
        reader = await keys(Role.READ)
        submitter = await keys(Role.SUBMIT)
        workflow_id = await running_workflow(pool, reader.record.tenant)
        cookie, _ = await sign_in(gw, reader)
        csrf = await csrf_of(gw, cookie)
        await gw.client.post("/signin", json={"key": submitter.key}, headers=same_site(gw))
        await gw.client.post("/signin", json={"key": reader.key + "x"}, headers=same_site(gw))
        gw.client.cookies.clear()
        minted = await gw.client.post(
            "/stream-tokens",
            json={"workflowId": workflow_id},
            headers=same_site(gw, cookie, **{CSRF_HEADER: csrf}),
        )
        token = minted.json()["token"]
        expired, _ = StreamTokens.from_secret(SECRET, 300, lambda: time.time() - 301).mint(
            reader.record.id, LIST_SCOPE
        )
        assert await stream_status(gw, f"/workflows/{workflow_id}/events?token={token}") == 200
        for url in (f"/events?token={token}", f"/events?token={expired}", "/ui/list"):
            await gw.client.get(url, headers={"Cookie": f"{COOKIE}={tampered(cookie)}"})
        await gw.client.post(
            f"/workflows/{workflow_id}/cancel", json={}, headers=same_site(gw, cookie)
        )
        async with pool.acquire() as conn:
            await revoke_key(conn, reader.record.id)
        await gw.client.get("/workflows", headers={"Cookie": f"{COOKIE}={cookie}"})
        await gw.client.get(f"/workflows/{workflow_id}/events?token={token}")
    # The gateway's own records and uvicorn's, not the test client's (httpx logs its URLs).
    logged = "\n".join(
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(("services.", "relayflow.", "uvicorn."))
    )
    assert "GET /events?token=<redacted>" in logged  # the access log was on
    assert reader.record.id in logged  # refusals name the key by id
    for secret in (
        reader.key.rsplit("_", 1)[1],
        submitter.key.rsplit("_", 1)[1],
        cookie,
        cookie.split(".")[1],
        token,
        token.split(".")[1],
        expired.split(".")[1],
        csrf,
    ):
        assert secret not in logged
