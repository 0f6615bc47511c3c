"""Database URLs, checked when a service starts: libpq's form, one host or several.

    postgresql://user:password@host1:5432,host2:5432/relayflow?target_session_attrs=read-write

With several hosts a client tries them in turn and keeps the first that matches
`target_session_attrs` (asyncpg implements libpq's rules). For `DATABASE_URL`, which the
services write through, several hosts need `read-write` (or `primary`): without it a client could
settle on a standby and fail every write; with it, after a failover, every new connection finds the
promoted standby. A read URL (`RELAYFLOW_READ_DATABASE_URL`) may ask for any attribute,
`prefer-standby` being the usual one.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qs

SCHEMES = ("postgresql", "postgres")
WRITABLE = ("read-write", "primary")
# The values libpq (and asyncpg) accept.
SESSION_ATTRS = ("any", "primary", "standby", "prefer-standby", "read-write", "read-only")
# scheme://[user[:password]@]hosts[/database][?query]: split by hand, since urlsplit refuses
# some malformed host lists before we could name the entry at fault.
_URL = re.compile(
    r"^(?P<scheme>[^:/?#]*)://(?P<netloc>[^/?#]*)(?P<path>[^?#]*)(\?(?P<query>[^#]*))?"
)
# A host name, an IPv4 address, or an IPv6 address in brackets.
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?)$")


class _Parts(NamedTuple):
    scheme: str
    hosts: list[str]
    path: str
    query: str


def _split(url: str) -> _Parts:
    match = _URL.match(url)
    if match is None:
        raise ValueError("is not a URL of the form postgresql://user@host:port/database")
    hosts = match["netloc"].rpartition("@")[2].split(",")
    return _Parts(match["scheme"], hosts, match["path"], match["query"] or "")


def hosts_of(url: str) -> list[str]:
    """The `host[:port]` entries of `url`, as written."""
    return _split(url).hosts


def target_session_attrs(url: str) -> str | None:
    """The URL's `target_session_attrs`, if it gives one."""
    attrs = parse_qs(_split(url).query).get("target_session_attrs", [])
    return attrs[0] if attrs else None


def with_host(url: str, host: str) -> str:
    """`url` naming only `host` (one of its `hosts_of`), credentials and the rest kept."""
    match = _URL.match(url)
    if match is None:
        raise ValueError("is not a URL of the form postgresql://user@host:port/database")
    userinfo, at, _ = match["netloc"].rpartition("@")
    start, end = match.span("netloc")
    return f"{url[:start]}{userinfo}{at}{host}{url[end:]}"


def check_database_url(url: str, *, writes: bool = True) -> str:
    """`url` if it is one libpq would take, else ValueError naming what is wrong (the entry, not
    the password). `writes`: the services write through it (several hosts need a writable
    `target_session_attrs`)."""
    parts = _split(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"must start with postgresql:// (got scheme {parts.scheme!r})")
    hosts = parts.hosts
    if hosts == [""]:
        hosts = []  # no host in the URL: libpq's defaults (a local socket, or ?host=…)
    for entry in hosts:
        problem = _entry_problem(entry)
        if problem:
            raise ValueError(f"host entry {entry!r} (of {len(hosts)}) is malformed: {problem}")
    if not parts.path.strip("/"):
        raise ValueError("names no database (expected …/<database> after the hosts)")
    attrs = parse_qs(parts.query).get("target_session_attrs", [])
    if len(attrs) > 1:
        raise ValueError("gives target_session_attrs more than once")
    attr = attrs[0] if attrs else None
    if attr is not None and attr not in SESSION_ATTRS:
        raise ValueError(f"target_session_attrs={attr!r} is not one of {', '.join(SESSION_ATTRS)}")
    if writes and len(hosts) > 1 and attr not in WRITABLE:
        raise ValueError(
            f"names {len(hosts)} hosts but not target_session_attrs=read-write: a service could "
            "connect to a standby and fail every write; add ?target_session_attrs=read-write"
        )
    return url


def _entry_problem(entry: str) -> str | None:
    if not entry:
        return "empty (two commas in a row, or a trailing comma?)"
    host, port = entry, None
    if entry.startswith("["):
        closing = entry.find("]")
        if closing < 0:
            return "an IPv6 address needs its closing ']'"
        host, rest = entry[: closing + 1], entry[closing + 1 :]
        if rest:
            if not rest.startswith(":"):
                return "expected ':port' after the IPv6 address"
            port = rest[1:]
    elif ":" in entry:
        host, _, port = entry.rpartition(":")
    if not _HOST.match(host):
        return f"{host!r} is not a host name or address"
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return f"port {port!r} is not a number from 1 to 65535"
    return None
