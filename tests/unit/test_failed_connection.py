"""A failed connection attempt is closed where it failed: left to the garbage collector, aio-pika
schedules the close of an unclosed connection on whatever loop runs then, and outside one that
close is a coroutine never awaited, which pytest pins on whichever test is running (CI)."""

from __future__ import annotations

import socket
from typing import Any

import aio_pika
import pytest

from relayflow.amqp.connection import connect_once, connect_plain
from relayflow.errors import ServiceUnavailableError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it once the socket is closed


@pytest.fixture
def made(monkeypatch: pytest.MonkeyPatch) -> list[aio_pika.Connection]:
    """Every aio-pika connection made to the unused port."""
    seen: list[aio_pika.Connection] = []
    original = aio_pika.Connection.__init__

    def record(self: aio_pika.Connection, url: Any, *args: Any, **kwargs: Any) -> None:
        original(self, url, *args, **kwargs)
        if self.url.port == PORT:
            seen.append(self)

    monkeypatch.setattr(aio_pika.Connection, "__init__", record)
    return seen


PORT = _closed_port()


async def test_a_failed_attempt_is_closed_before_it_is_dropped(
    made: list[aio_pika.Connection],
) -> None:
    with pytest.raises((OSError, aio_pika.exceptions.AMQPConnectionError)):
        await connect_plain(f"amqp://guest:guest@127.0.0.1:{PORT}/", timeout=2)
    assert [connection.is_closed for connection in made] == [True]


async def test_connect_once_names_each_node_that_did_not_answer(
    made: list[aio_pika.Connection],
) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{PORT}/,amqp://guest:guest@127.0.0.1:{PORT}/"
    with pytest.raises(ServiceUnavailableError) as refused:
        await connect_once(url, timeout=2)
    assert str(refused.value).count(f"127.0.0.1:{PORT}") == 2
    assert [connection.is_closed for connection in made] == [True, True]
