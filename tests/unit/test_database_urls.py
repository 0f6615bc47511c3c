"""DATABASE_URL and RELAYFLOW_READ_DATABASE_URL are checked at start-up, each fault named."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from relayflow.db.urls import check_database_url, hosts_of, target_session_attrs, with_host
from relayflow.settings import Settings
from services.gateway.settings import GatewaySettings

TWO_HOSTS = "postgresql://app:pw@db-1:5432,db-2:5433/relayflow?target_session_attrs=read-write"


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@127.0.0.1:5432/relayflow",
        "postgres://u@localhost/relayflow",
        TWO_HOSTS,
        "postgresql://u@[::1]:5432,10.0.0.2/relayflow?target_session_attrs=primary",
        "postgresql:///relayflow?host=/var/run/postgresql",
    ],
)
def test_the_urls_libpq_takes_are_taken(url: str) -> None:
    """One host, several with a writable target, IPv6, or none (libpq's defaults)."""
    assert check_database_url(url) == url


@pytest.mark.parametrize(
    ("url", "named"),
    [
        (
            "postgresql://u@db-1:5432,db-2:54x2/relayflow?target_session_attrs=read-write",
            "'db-2:54x2'",
        ),
        ("postgresql://u@db-1:5432,,db-2/relayflow?target_session_attrs=read-write", "''"),
        ("postgresql://u@db-1:5432,db 2:5432/relayflow?target_session_attrs=read-write", "'db 2"),
        ("postgresql://u@db-1,[::1/relayflow?target_session_attrs=read-write", "'[::1'"),
        ("postgresql://u@db-1:70000/relayflow", "'db-1:70000'"),
    ],
)
def test_a_malformed_host_entry_is_refused_by_name(url: str, named: str) -> None:
    """The error quotes the bad entry, so an operator finds it in a long list."""
    with pytest.raises(ValueError, match="host entry " + named.replace("[", r"\[")):
        check_database_url(url)


def test_several_hosts_need_a_writable_target() -> None:
    """Without target_session_attrs=read-write a service could settle on a standby; a read URL
    may ask for a standby."""
    url = "postgresql://u@db-1,db-2/relayflow"
    with pytest.raises(ValueError, match="target_session_attrs=read-write"):
        check_database_url(url)
    standby = url + "?target_session_attrs=prefer-standby"
    assert check_database_url(standby, writes=False) == standby
    with pytest.raises(ValueError, match="'sideways' is not one of"):
        check_database_url(url + "?target_session_attrs=sideways", writes=False)


def test_other_faults_are_named() -> None:
    """A wrong scheme and a missing database name."""
    with pytest.raises(ValueError, match="postgresql://"):
        check_database_url("mysql://u@db/relayflow")
    with pytest.raises(ValueError, match="names no database"):
        check_database_url("postgresql://u@db-1:5432")


def test_hosts_of_leaves_the_credentials_out() -> None:
    assert hosts_of(TWO_HOSTS) == ["db-1:5432", "db-2:5433"]


def test_one_host_of_a_list_keeps_the_rest_of_the_url() -> None:
    """What the connector tries a host at a time with: credentials, database and query kept."""
    assert with_host(TWO_HOSTS, "db-2:5433") == (
        "postgresql://app:pw@db-2:5433/relayflow?target_session_attrs=read-write"
    )
    assert with_host("postgresql://db-1,db-2/x", "db-2") == "postgresql://db-2/x"
    assert target_session_attrs(TWO_HOSTS) == "read-write"
    assert target_session_attrs("postgresql://db-1/x") is None


def test_settings_refuse_a_bad_entry_without_echoing_the_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The services' settings check both URLs; the error names the entry, never the password
    (it reaches the terminal before the log redaction is set up)."""
    monkeypatch.setenv("DATABASE_URL", TWO_HOSTS.replace("db-2:5433", "db-2:x"))
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "'db-2:x'" in str(raised.value)
    assert "pw" not in str(raised.value)
    monkeypatch.setenv("DATABASE_URL", TWO_HOSTS)
    monkeypatch.setenv("RELAYFLOW_READ_DATABASE_URL", "postgresql://u:pw@replica:x/relayflow")
    with pytest.raises(ValidationError, match="'replica:x'"):
        GatewaySettings()
    monkeypatch.setenv("RELAYFLOW_READ_DATABASE_URL", "")
    assert GatewaySettings().read_database_url is None
