"""Callers carried by value (a person's OIDC token, `services.gateway.carried`) in session
cookies and stream tokens, on an injected clock: they come back whole, and never outlive the
token they came from."""

from __future__ import annotations

import logging

from relayflow.auth import Role
from services.gateway.sessions import Sessions
from services.gateway.state import Caller
from services.gateway.stream_tokens import LIST_SCOPE, RedactTokens, StreamTokens, workflow_scope
from tests.unit.test_gateway_sessions import SECRET, Clock


def person(expires: float) -> Caller:
    return Caller("oidc:person-1", "acme", Role.OPERATOR, int(expires))


def test_a_stream_token_carries_the_caller_and_ends_with_its_token() -> None:
    """No re-check is possible, so the token's own lifetime is capped at the JWT's exp."""
    clock = Clock()
    tokens = StreamTokens.from_secret(SECRET, 300, clock)
    caller = person(clock.now + 60)
    token, expires = tokens.mint(caller, LIST_SCOPE)
    assert expires == caller.expires
    assert tokens.holder(token, LIST_SCOPE) == caller
    assert tokens.holder(token, workflow_scope("wf_1")) is None
    clock.now += 60
    assert tokens.holder(token, LIST_SCOPE) is None
    _, expires = tokens.mint(person(clock.now + 3600), LIST_SCOPE)
    assert expires == int(clock.now) + 300  # the setting, when it is the sooner


def test_an_api_key_caller_is_carried_by_its_id() -> None:
    """A key's caller is re-read on every use: its token names the key, not its role."""
    tokens = StreamTokens.from_secret(SECRET, 300, Clock())
    token, _ = tokens.mint(Caller("k" * 16, "acme", Role.READ), LIST_SCOPE)
    assert tokens.holder(token, LIST_SCOPE) == "k" * 16


def test_a_session_carries_the_caller_until_its_token_ends() -> None:
    """The dashboard's OIDC session: min(RELAYFLOW_SESSION_SECONDS, the id token's exp)."""
    clock = Clock()
    sessions = Sessions.from_secret(SECRET, 3600, clock)
    value, session = sessions.issue(person(clock.now + 120))
    assert session.key_id is None
    assert session.expires == int(clock.now) + 120
    read = sessions.read(value)
    assert read is not None
    assert read.caller == person(clock.now + 120)
    assert read.who == "oidc:person-1"
    clock.now += 120
    assert sessions.read(value) is None


def test_the_oidc_callbacks_code_and_state_are_redacted() -> None:
    """An authorization code is a credential in a URL, like a stream token."""
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, "", 0, "%s %s", ("GET", "/cb?code=abc&state=def&x=1"), None
    )
    assert RedactTokens().filter(record)
    assert record.args == ("GET", "/cb?code=<redacted>&state=<redacted>&x=1")
