"""API keys without a database (`relayflow.auth.keys`): their format, how they are hashed and
checked, and that a bad key is refused with a clear error that never repeats it."""

from __future__ import annotations

import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from relayflow.auth import AuthConfigurationError, KeyFormatError, KeyHasher, parse_key
from relayflow.auth.keys import KEY_LENGTH, PresentedKey, derive, new_key


def hasher(secret: str = "s" * 32) -> KeyHasher:
    return KeyHasher.from_secret(SecretStr(secret))


def test_a_new_key_parses_back_to_its_id() -> None:
    """What `keys create` prints is what the gateway will parse: the same id, the whole text."""
    key = new_key()
    assert key.text.startswith(f"rf_{key.key_id}_")
    assert len(key.text) == KEY_LENGTH
    assert parse_key(key.text) == key


def test_new_keys_differ_in_id_and_secret() -> None:
    """Ids and secrets are random: no two keys share either."""
    keys = [new_key() for _ in range(200)]
    assert len({key.key_id for key in keys}) == 200
    assert len({key.text.rsplit("_", 1)[1] for key in keys}) == 200


def test_the_secret_of_a_key_is_not_in_its_repr() -> None:
    """A key that reaches a log line or a traceback through `repr` shows its id only."""
    key = new_key()
    secret = key.text.rsplit("_", 1)[1]
    assert key.key_id in repr(key)
    assert secret not in repr(key)
    assert "s" * 32 not in repr(hasher())


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param("", "no API key given", id="empty"),
        pytest.param("Bearer rf_x", "not a relayflow API key", id="not-ours"),
        pytest.param(" rf_" + "a" * 16 + "_" + "b" * 48, "whitespace", id="leading-space"),
        pytest.param("rf_" + "a" * 16 + "_" + "b" * 48 + "\n", "whitespace", id="newline"),
        pytest.param("rf_" + "a" * 64, "a key reads rf_<id>_<secret>", id="no-separator"),
        pytest.param("rf_" + "a" * 15 + "_" + "b" * 48, "id is 16 characters", id="short-id"),
        pytest.param("rf_" + "A" * 16 + "_" + "b" * 48, "id is 16 characters", id="upper-id"),
        pytest.param("rf_" + "a" * 16 + "_" + "b" * 47, "has 47 characters)", id="short"),
        pytest.param("rf_" + "a" * 16 + "_" + "b" * 47 + "1", "some of them others", id="digit"),
        pytest.param("rf_" + "a" * 16 + "_" + "b" * 48 + "_x", "has 50 characters", id="extra"),
    ],
)
def test_a_malformed_key_is_refused_saying_which_part_is_wrong(text: str, problem: str) -> None:
    """A client with a mangled key (a copy cut short, a stray newline) learns what to fix."""
    with pytest.raises(KeyFormatError) as caught:
        parse_key(text)
    assert problem in str(caught.value)


@given(st.text(max_size=200) | st.text(max_size=100).map(lambda tail: "rf_" + tail))
def test_any_text_is_refused_without_being_repeated(text: str) -> None:
    """Whatever a header holds, parsing raises nothing but KeyFormatError, and its message
    never holds the text: a key with a typo is still someone's secret, and errors are logged."""
    with pytest.raises(KeyFormatError) as caught:
        parse_key(text)
    if len(text) >= 8:
        assert text not in str(caught.value)


def test_a_key_matches_its_own_hash_only() -> None:
    """The stored hash checks the key it was made from, and no other key, nor the same key
    under another server secret."""
    key, other = new_key(), new_key()
    stored = hasher().digest(key)
    assert hasher().matches(key, stored)
    assert not hasher().matches(other, stored)
    assert not hasher("t" * 32).matches(key, stored)
    assert stored != key.text.encode()


def test_the_hash_is_hmac_sha256_of_the_whole_key_under_a_derived_secret() -> None:
    """Keyed: the hash is of the whole key (id included, so rows cannot be swapped), under a
    key derived for this purpose alone from the server secret."""
    key = new_key()
    subkey = derive(b"s" * 32, "api-key-hash/v1")
    assert subkey != b"s" * 32
    assert subkey != derive(b"s" * 32, "stream-token/v1")
    expected = hmac.new(subkey, key.text.encode(), "sha256").digest()
    assert hasher().digest(key) == expected


def test_matching_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte-by-byte compare that stops at the first difference would tell an attacker, by
    its time, how much of a forged hash was right: the check goes through compare_digest."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr("relayflow.auth.keys.hmac.compare_digest", spy)
    key = new_key()
    stored = hasher().digest(key)
    assert hasher().matches(key, stored)
    assert not hasher().matches(new_key(), stored)
    assert len(calls) == 2
    assert all(b == stored for _, b in calls)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [(None, "no server secret"), ("", "no server secret"), ("x" * 31, "too short")],
)
def test_no_usable_server_secret_is_a_configuration_error(secret: str | None, problem: str) -> None:
    """Keys hashed under an empty or short secret would be weak and could never move to a
    strong one: there is no default, and the error says how to make one."""
    with pytest.raises(AuthConfigurationError, match=problem) as caught:
        KeyHasher.from_secret(SecretStr(secret) if secret is not None else None)
    assert "RELAYFLOW_AUTH_SECRET" in str(caught.value)
    assert "secrets.token_urlsafe" in str(caught.value)


def test_presented_key_equality_ignores_nothing() -> None:
    """Two keys with the same id but another secret are different keys."""
    key = new_key()
    forged = PresentedKey(key.key_id, key.text[:-1] + ("a" if key.text[-1] != "a" else "b"))
    assert forged != key
    assert not hasher().matches(forged, hasher().digest(key))
