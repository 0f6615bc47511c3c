"""Signed claims, session cookies with their CSRF check, and stream tokens, without a server:
what is forged, altered, expired or out of scope is refused, on an injected clock."""

from __future__ import annotations

import logging

import pytest
from pydantic import SecretStr
from starlette.requests import Request

from relayflow.auth import AuthConfigurationError, Signer
from services.gateway.sessions import CSRF_HEADER, Sessions, local_path, same_origin
from services.gateway.stream_tokens import (
    LIST_SCOPE,
    RedactTokens,
    StreamTokens,
    workflow_scope,
)

SECRET = SecretStr("unit-test-server-secret-0123456789abcdef")


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(method: str = "POST", **headers: str) -> Request:
    raw = [
        (name.replace("_", "-").lower().encode(), value.encode()) for name, value in headers.items()
    ]
    return Request({"type": "http", "method": method, "path": "/x", "headers": raw})


def test_signed_claims_round_trip_until_they_expire() -> None:
    """A token is good up to its expiry and not a second after: the clock decides, not a sleep."""
    clock = Clock()
    signer = Signer.from_secret(SECRET, "test/v1", clock)
    token, expires = signer.sign({"k": "abc"}, 60)
    assert expires == int(clock.now) + 60
    assert signer.verify(token) == {"k": "abc", "exp": expires}
    clock.now += 59
    assert signer.verify(token) is not None
    clock.now += 1
    assert signer.verify(token) is None


def test_altered_forged_or_other_purpose_tokens_are_refused() -> None:
    """The tag covers the claims, and each purpose has its own key: a session cookie is no
    stream token, and a token under another secret is nothing."""
    signer = Signer.from_secret(SECRET, "test/v1")
    token, _ = signer.sign({"k": "abc"}, 60)
    body, tag = token.split(".")
    other_body, _ = signer.sign({"k": "abd"}, 60)[0].split(".")
    for bad in (
        f"{other_body}.{tag}",
        f"{body}.{tag[:-1]}{'A' if tag[-1] != 'A' else 'B'}",
        body,
        "",
        ".",
        "x" * 5000,
        Signer.from_secret(SECRET, "other/v1").sign({"k": "abc"}, 60)[0],
        Signer.from_secret(SecretStr("another-secret-0123456789abcdefghij"), "test/v1").sign(
            {"k": "abc"}, 60
        )[0],
    ):
        assert signer.verify(bad) is None, bad


def test_a_short_or_missing_secret_signs_nothing() -> None:
    """As for API keys: no signing under a guessable secret."""
    for secret in (None, SecretStr(""), SecretStr("short")):
        with pytest.raises(AuthConfigurationError):
            Signer.from_secret(secret, "test/v1")


def test_a_session_names_its_key_never_the_key_and_expires() -> None:
    """The cookie carries the key's id and an expiry; after the lifetime it is no session."""
    clock = Clock()
    sessions = Sessions.from_secret(SECRET, 3600, clock)
    value, session = sessions.issue("k" * 16)
    assert sessions.read(value) == session
    assert session.key_id == "k" * 16
    assert sessions.read(None) is None
    assert sessions.read("garbage") is None
    clock.now += 3600
    assert sessions.read(value) is None


def test_the_csrf_token_is_bound_to_its_session() -> None:
    """Another session's token, or none, does not let a cookie POST through."""
    sessions = Sessions.from_secret(SECRET, 3600, Clock())
    _, mine = sessions.issue("a" * 16)
    _, theirs = sessions.issue("a" * 16)
    origin = {"origin": "http://gw:8000", "host": "gw:8000"}
    good = request(**origin, **{CSRF_HEADER: sessions.csrf_token(mine)})
    assert sessions.refusal(good, mine) is None
    assert sessions.refusal(request(**origin), mine) == f"no valid {CSRF_HEADER}"
    stolen = request(**origin, **{CSRF_HEADER: sessions.csrf_token(theirs)})
    assert sessions.refusal(stolen, mine) == f"no valid {CSRF_HEADER}"
    # Reads change nothing: no token needed.
    assert sessions.refusal(request("GET", host="gw:8000"), mine) is None


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({"origin": "http://gw:8000", "host": "gw:8000"}, True),
        ({"origin": "https://gw:8000", "host": "gw:8000"}, True),  # TLS ended by a proxy
        ({"referer": "http://gw:8000/ui/workflows/x", "host": "gw:8000"}, True),
        ({"origin": "http://evil.example", "host": "gw:8000"}, False),
        ({"origin": "http://gw:8001", "host": "gw:8000"}, False),
        ({"origin": "null", "host": "gw:8000"}, False),
        ({"referer": "http://gw:8000.evil.example/", "host": "gw:8000"}, False),
        ({"host": "gw:8000"}, False),
    ],
)
def test_same_origin_compares_host_and_port(headers: dict[str, str], same: bool) -> None:
    """Origin, else Referer, must name this host and port; neither sent is refused."""
    assert same_origin(request(**headers)) is same


def test_a_session_check_refuses_another_origin_first() -> None:
    """A valid token from another site's page is still refused (the Origin check)."""
    sessions = Sessions.from_secret(SECRET, 3600, Clock())
    _, session = sessions.issue("a" * 16)
    token = {CSRF_HEADER: sessions.csrf_token(session)}
    evil = request(origin="http://evil.example", host="gw:8000", **token)
    assert sessions.refusal(evil, session) == "not from this site (Origin or Referer)"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("/ui/workflows/wf_1?x=1", "/ui/workflows/wf_1?x=1"),
        (None, "/"),
        ("", "/"),
        ("https://evil.example/", "/"),
        ("//evil.example/", "/"),
        ("/\\evil.example/", "/"),
        ("/ok\nLocation: x", "/"),
        ("javascript:alert(1)", "/"),
    ],
)
def test_after_sign_in_only_a_local_path(raw: str | None, expected: str) -> None:
    """`next` is never an open redirect to another site."""
    assert local_path(raw) == expected


def test_stream_tokens_are_scoped_and_expire() -> None:
    """A token opens the one stream it was made for, until it expires."""
    clock = Clock()
    tokens = StreamTokens.from_secret(SECRET, 300, clock)
    token, expires = tokens.mint("a" * 16, workflow_scope("wf_1"))
    assert expires == int(clock.now) + 300
    assert tokens.holder(token, workflow_scope("wf_1")) == "a" * 16
    assert tokens.holder(token, workflow_scope("wf_2")) is None
    assert tokens.holder(token, LIST_SCOPE) is None
    listed, _ = tokens.mint("a" * 16, LIST_SCOPE)
    assert tokens.holder(listed, LIST_SCOPE) == "a" * 16
    assert tokens.holder(listed, workflow_scope("wf_1")) is None
    clock.now += 300
    assert tokens.holder(token, workflow_scope("wf_1")) is None


def test_a_session_cookie_is_not_a_stream_token() -> None:
    """Each purpose has its own key: one credential cannot be replayed as the other."""
    sessions = Sessions.from_secret(SECRET, 3600, Clock())
    tokens = StreamTokens.from_secret(SECRET, 300, Clock())
    value, _ = sessions.issue("a" * 16)
    assert tokens.holder(value, LIST_SCOPE) is None
    token, _ = tokens.mint("a" * 16, LIST_SCOPE)
    assert sessions.read(token) is None


def test_access_log_lines_hide_stream_tokens() -> None:
    """uvicorn's request line holds the query string; a token there is a credential."""
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", "/events?status=running&token=abc.def&x=1", "1.1", 200),
        None,
    )
    assert RedactTokens().filter(record)
    assert record.getMessage() == (
        '1.2.3.4:5 - "GET /events?status=running&token=<redacted>&x=1 HTTP/1.1" 200'
    )
